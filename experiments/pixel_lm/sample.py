"""Samples images from a trained pixel_lm run and writes them as a PNG grid.

  python -m experiments.pixel_lm.sample --workdir=/tmp/pixels [--num=16]
      [--temperature=1.0] [--top_k=0] [--seed=0] [--out=samples.png]

Reads `config.json` and the newest checkpoint from the workdir, decodes
every image pixel by pixel from BOS in raster order (FAVOR+ decodes with its
constant-size state, exact attention with a KV cache), and writes a grid of
the samples next to a row of real eval images to `<workdir>/samples.png`.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from performer_jax import models  # noqa: E402
from performer_jax.models import decoding  # noqa: E402
from performer_jax.tasks import pixels  # noqa: E402
from performer_jax.train import checkpoint as checkpoint_lib  # noqa: E402
from performer_jax.train import trainer as trainer_lib  # noqa: E402


def load_run(workdir: str):
  """(trainer, restored state) of the newest checkpoint in `workdir`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: --workdir must be a "
                            "performer-train workdir of a pixel_lm run")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.task != "pixel_lm":
    raise ValueError(f"{workdir} holds a {config.task!r} run, not pixel_lm")
  trainer = trainer_lib.Trainer(config)
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=1, every=0)
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {ckpt.directory}")
  state, _ = ckpt.restore(step, trainer.abstract_state, trainer.shardings)
  ckpt.close()
  return trainer, state, step


def sample_images(trainer, state, *, num: int, temperature: float,
                  top_k: int, seed: int) -> np.ndarray:
  """uint8 [num, seq_len] pixel streams sampled from BOS."""
  config = trainer.config
  seq_len = config.data.seq_len
  decoder = models.make_model(config.model, vocab_size=trainer.task.vocab_size,
                              causal=True, decode=True)
  variables = {"params": state.params,
               "random_features": state.random_features}
  prompt = jnp.full((num, 1), pixels.BOS, jnp.int32)
  rng = jax.random.PRNGKey(seed)
  with trainer.context():
    # [BOS, p_0 .. p_{L-2}]; the last pixel comes from one full forward pass.
    tokens = decoding.generate(decoder, variables, prompt, rng,
                               max_len=seq_len, temperature=temperature,
                               top_k=top_k)
    logits = trainer.model.apply(variables, tokens)[:, -1]
  last = decoding.sample_logits(jax.random.fold_in(rng, seq_len), logits,
                                temperature=temperature, top_k=top_k)
  stream = np.concatenate([np.asarray(tokens[:, 1:]),
                           np.asarray(last)[:, None]], axis=1)
  # The model may put mass on BOS (256); clip it into the pixel range.
  return np.clip(stream, 0, 255).astype(np.uint8)


def write_grid(samples_NHWC: np.ndarray, real_NHWC: np.ndarray,
               path: str, title: str) -> None:
  cols = min(8, len(samples_NHWC))
  rows = -(-len(samples_NHWC) // cols) + 1
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.3),
                           squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  gray = samples_NHWC.shape[-1] == 1
  show = lambda ax, img: ax.imshow(img[..., 0] if gray else img,
                                   cmap="gray" if gray else None, vmin=0,
                                   vmax=255)
  for i in range(cols):
    show(axes[0, i], real_NHWC[i])
  axes[0, 0].set_title("real", fontsize=8, loc="left")
  for i, img in enumerate(samples_NHWC):
    show(axes[1 + i // cols, i % cols], img)
  axes[1, 0].set_title("samples", fontsize=8, loc="left")
  fig.suptitle(title, fontsize=9)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num", type=int, default=16)
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--top_k", type=int, default=0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  trainer, state, step = load_run(args.workdir)
  data = trainer.config.data
  eval_images = pixels.open_images(data.dataset, data.eval_path, "eval_path")
  real = np.stack([eval_images[i] for i in range(min(8, len(eval_images)))])
  if data.seq_len != int(np.prod(real.shape[1:])):
    raise ValueError(f"data.seq_len={data.seq_len} is a window, not a whole "
                     f"{real.shape[1:]} image: train with the cpu or paper "
                     "variant to sample images")
  stream = sample_images(trainer, state, num=args.num,
                         temperature=args.temperature, top_k=args.top_k,
                         seed=args.seed)
  images = stream.reshape((args.num,) + real.shape[1:])
  out = args.out or os.path.join(args.workdir, "samples.png")
  att = trainer.config.model.attention
  write_grid(images, real, out, f"pixel_lm samples, {att.kind} "
             f"({att.kernel}) attention, step {step}")
  print(f"wrote {args.num} samples to {out}")


if __name__ == "__main__":
  main()
