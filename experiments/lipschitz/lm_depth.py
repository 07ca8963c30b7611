"""Experiment 4: byte-level language modelling vs depth, three attentions.

Kim et al. (2021), Section 6.2: with Adam at a fixed learning rate,
dot-product Transformers stop training beyond ~10 layers while L2 (tied) and
contractive-L2 ones train to 18 layers; L2 costs little likelihood. Here, on
the project's byte-level text task (`configs/text_lm.py`, the Wikipedia XML
sample), for each depth we train

  dot:          the project Transformer, attention "softmax" (pre-LN);
  l2:           the same Transformer with tied L2 attention;
  contractive_inf, contractive_2:
                `make_invertible_model` (contractive L2 attention and
                contractive MLP in invertible residual form, no LayerNorm in
                the blocks, c = --c), contractive in the inf- or 2-norm,

with `performer_jax.train.train_and_evaluate`, Adam (no weight decay) at a
constant learning rate, no warmup and no gradient clipping (as in the paper's
stability study), and record the final training loss (nats/byte), the final
eval bits/byte and whether training diverged (non-finite loss). The task's
unigram baseline is 5.19 bits/byte.

The contractive runs train the invertible L2 model, which this script hands
to the trainer through `train_and_evaluate(..., make_model=...)`.
A run that hits a non-finite loss (the trainer raises NonFiniteLossError) is
recorded as diverged.

The default (12 runs, small widths, 400 steps) took 5.6 minutes on 2 busy
CPU cores. These runs are far too short and small to reproduce the paper's
depth effect, which appears with 18 layers and long training at a fixed
learning rate: use --depths 2,6,10,14,18 --steps 5000 on a GPU for that.

  python -m experiments.lipschitz.lm_depth --out results/lipschitz
  python -m experiments.lipschitz.lm_depth --quick
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time

from experiments import common
from performer_jax import linen as pnn
from performer_jax.lipschitz import model as model_lib
from performer_jax.train import NonFiniteLossError
from performer_jax.train import trainer as trainer_lib

KINDS = ("dot", "l2", "contractive_inf", "contractive_2")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="results/lipschitz")
  p.add_argument("--depths", default="2,4,8")
  p.add_argument("--kinds", default=",".join(KINDS))
  p.add_argument("--steps", type=int, default=400)
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--seq-len", type=int, default=64)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--c", type=float, default=0.9,
                 help="Lipschitz constant of the contractive branches")
  p.add_argument("--eval-batches", type=int, default=4)
  p.add_argument("--workdir", default="",
                 help="where runs write checkpoints (default: a temp dir, "
                 "deleted at the end)")
  p.add_argument("--quick", action="store_true",
                 help="depths 1, 2 and 10 steps (a smoke test)")
  return p.parse_args(argv)


def make_config(args, kind: str, depth: int):
  """The text_lm training config of one run."""
  # pylint: disable-next=g-import-not-at-top
  from performer_jax.configs import text_lm
  config = text_lm.get_config("smoke," + ("softmax" if kind == "dot"
                                          else "l2"))
  config.data.seq_len = args.seq_len
  config.data.batch_size = args.batch
  config.data.num_eval_batches = args.eval_batches
  m = config.model
  m.num_layers = depth
  m.num_heads = args.heads
  m.emb_dim = args.width
  m.mlp_dim = 4 * args.width
  m.max_len = args.seq_len
  m.dropout_rate = 0.0
  m.scan_layers = not kind.startswith("contractive") and depth > 2
  o = config.optimizer
  o.name = "adam"
  o.learning_rate = args.lr
  o.schedule = "constant"
  o.warmup_steps = 0
  o.weight_decay = 0.0
  o.grad_clip_norm = 0.0
  t = config.trainer
  t.steps = args.steps
  t.log_every = max(1, args.steps // 10)
  t.eval_every = 0
  t.checkpoint_every = 0
  t.keep_checkpoints = 1
  t.progress = "log"
  return config


def _model_builder(kind: str, args):
  """The trainer's model builder: the invertible model for contractive kinds."""
  if not kind.startswith("contractive"):
    return pnn.make_model

  def make(model_config, *, vocab_size, causal):
    return model_lib.make_invertible_model(
        model_config, vocab_size=vocab_size, causal=causal, c=args.c,
        norm=kind.split("_")[1])
  return make


def run(args) -> list[dict]:
  depths = [1, 2] if args.quick else common.int_list(args.depths)
  if args.quick:
    args.steps = 10
  kinds = [k for k in args.kinds.split(",") if k]
  unknown = sorted(set(kinds) - set(KINDS))
  if unknown:
    raise ValueError(f"unknown --kinds {unknown}; choose from {KINDS}")
  root = args.workdir or tempfile.mkdtemp(prefix="lipschitz_lm_")
  rows = []
  try:
    for depth in depths:
      for kind in kinds:
        config = make_config(args, kind, depth)
        workdir = os.path.join(root, f"{kind}_{depth}")
        start = time.time()
        try:
          result = trainer_lib.train_and_evaluate(
              config, workdir, make_model=_model_builder(kind, args))
          losses = result.train_losses
          last = losses[max(losses)] if losses else float("nan")
          bits = result.eval_metrics.get("bits_per_byte", float("nan"))
        except NonFiniteLossError as e:
          # The trainer stops at the first non-finite loss: that is a
          # divergence, the outcome this experiment looks for.
          print(f"{kind} depth {depth}: {e}", flush=True)
          last = bits = float("nan")
        rows.append({
            "kind": kind, "depth": depth, "steps": args.steps,
            "final_train_loss": round(float(last), 4),
            "eval_bits_per_byte": round(float(bits), 4),
            "diverged": not math.isfinite(bits) or not math.isfinite(last),
            "seconds": round(time.time() - start, 1)})
        print(rows[-1], flush=True)
  finally:
    if not args.workdir:
      shutil.rmtree(root, ignore_errors=True)
  return rows


def plot(rows, path):
  fig, ax = common.plt.subplots(figsize=(5, 3.5))
  for kind in KINDS:
    sub = [r for r in rows if r["kind"] == kind]
    if sub:
      ax.plot([r["depth"] for r in sub],
              [r["eval_bits_per_byte"] for r in sub], "o-", label=kind)
  ax.set_xlabel("layers")
  ax.set_ylabel("eval bits/byte")
  ax.set_title(f"byte LM, {rows[0]['steps']} steps, Adam constant lr")
  ax.legend()
  common.save_figure(fig, path)


def main(argv=None):
  args = parse_args(argv)
  rows = run(args)
  common.write_csv(os.path.join(args.out, "lm_depth.csv"), rows)
  plot(rows, os.path.join(args.out, "lm_depth.png"))


if __name__ == "__main__":
  main()
