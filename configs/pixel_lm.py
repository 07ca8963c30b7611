"""Autoregressive pixel prediction in raster order, reporting bits/dim.

Launch (from the repository root):
  performer-train --config=configs/pixel_lm.py:cpu --workdir=/tmp/pixels
  performer-train --config=configs/pixel_lm.py:paper --workdir=/tmp/imagenet64
  python -m experiments.pixel_samples --workdir=/tmp/pixels   # PNG grid

Argument: `<variant>[,<attention>]` as configs/protein_mlm.py. Default data:
Fashion-MNIST (Debian dataset-fashion-mnist), 784 tokens per image; `paper`
reads downsampled ImageNet64 npz batches (12,288 tokens per image) from
$PERFORMER_DATA_DIR/imagenet64.

Expected results: see README "Results" (cpu: 2 layers, width 128, whole
28x28 images, 1000 steps). The unigram baseline is 4.90 bits/dim. ImageNet64
(paper, 100k steps, TPU): 3.67 (ReLU), 3.69 (softmax) bits/dim.
"""

from configs import options


def get_config(arg: str = ""):
  return options.build(
      "pixel_lm", arg,
      paper_model=dict(num_layers=12, num_heads=8, emb_dim=512, mlp_dim=2048,
                       num_features=256),
      paper_steps=100_000, paper_warmup=5000)
