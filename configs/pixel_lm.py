"""Autoregressive pixel prediction in raster order, reporting bits/dim.

Launch (from any directory):
  performer-train --config=pixel_lm:cpu --workdir=/tmp/pixels
  performer-train --config=pixel_lm:paper --workdir=/tmp/imagenet64
  performer-generate --workdir=/tmp/pixels --num-samples=16  # PNG grid

Argument: `<variant>[,<attention>]` as protein_mlm. Default data:
Fashion-MNIST (Debian dataset-fashion-mnist), 784 tokens per image; `paper`
reads downsampled ImageNet64 npz batches (12,288 tokens per image) from
$PERFORMER_DATA_DIR/imagenet64.

Expected results: see README "Results" (cpu: 2 layers, width 128, whole
28x28 images, 1000 steps). The unigram baseline is 4.90 bits/dim. ImageNet64
(paper, 100k steps, TPU): 3.67 (ReLU), 3.69 (softmax) bits/dim.
"""

from performer_jax.configs import options


def get_config(arg: str = ""):
  return options.build(
      "pixel_lm", arg,
      paper={"model.num_layers": 12, "model.num_heads": 8,
             "model.emb_dim": 512, "model.mlp_dim": 2048,
             "model.attention.num_features": 256,
             "optimizer.warmup_steps": 5_000, "trainer.steps": 100_000})
