"""Backward compatibility: a trained softmax model continued as FAVOR+.

The Performer paper (its backward-compatibility figure on proteins) takes a
trained Transformer's weights into a Performer and fine-tunes: accuracy
comes back in a fraction of the original steps. Here, at CPU scale:

1. `protein_mlm:cpu` with exact softmax attention for `--steps` steps;
2. its weights evaluated with FAVOR+ attention (positive softmax features
   and ReLU features, fresh random features) before any fine-tuning;
3. each FAVOR+ variant fine-tuned from those weights
   (`trainer.init_from`), against the same variant trained from scratch,
   both for `--finetune-steps` steps with an eval every `--eval-every`.

Writes `backward_compat.csv` (attention, start, step, eval accuracy,
perplexity, bits) and `backward_compat.png` into `--out`, and prints how
many fine-tuning steps each variant needs to come within 1% of the
softmax model's perplexity.

  python -m experiments.backward_compat --out experiments/backward_compat/results
  python -m experiments.backward_compat --quick      # smoke sizes, ~1 min
"""

from __future__ import annotations

import argparse
import os

import performer_jax
from experiments import common
from performer_jax.configs import protein_mlm
from performer_jax.train import trainer as trainer_lib
from performer_jax.train import workdir as workdir_lib

FAVOR_VARIANTS = ("favor", "favor_relu")
# "Within 1% of the softmax model's perplexity".
PERPLEXITY_MARGIN = 1.01
_METRICS = ("accuracy", "perplexity", "bits_per_token")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="results/backward_compat")
  p.add_argument("--steps", type=int, default=1000,
                 help="softmax pre-training steps")
  p.add_argument("--finetune-steps", type=int, default=500)
  p.add_argument("--eval-every", type=int, default=50)
  p.add_argument("--quick", action="store_true",
                 help="the smoke model and a few steps (a test of the "
                 "script, not a result)")
  return p.parse_args(argv)


def make_config(args, attention: str, steps: int, eval_every: int,
                init_from: str = ""):
  variant = "smoke" if args.quick else "cpu"
  config = protein_mlm.get_config(f"{variant},{attention}")
  config.trainer.steps = steps
  config.trainer.eval_every = eval_every
  config.trainer.checkpoint_every = steps
  config.trainer.progress = "log"
  config.trainer.init_from = init_from
  return config


def eval_curve(workdir: str) -> dict[int, dict[str, float]]:
  return {int(r["step"]): {m: float(r[m]) for m in _METRICS}
          for r in workdir_lib.read_metrics(workdir)
          if r.get("split") == "eval"}


def swap_eval(config, source: str) -> dict[str, float]:
  """Eval metrics of `source`'s weights in `config`'s model, untrained."""
  trainer = trainer_lib.Trainer(config)
  metrics = trainer.evaluate(trainer.init_state(init_from=source))
  return {m: float(metrics[m]) for m in _METRICS}


def steps_to_match(curve: dict[int, dict[str, float]], target: float
                   ) -> int | None:
  """The first eval step whose perplexity is within the margin of target."""
  for step in sorted(curve):
    if curve[step]["perplexity"] <= PERPLEXITY_MARGIN * target:
      return step
  return None


def main(argv=None) -> None:
  args = parse_args(argv)
  performer_jax.use_fast_allocator()  # re-executes under tcmalloc if found
  if args.quick:
    args.steps, args.finetune_steps, args.eval_every = 20, 20, 5
  runs = os.path.join(args.out, "runs")
  softmax_dir = os.path.join(runs, "softmax")
  trainer_lib.train_and_evaluate(
      make_config(args, "softmax", args.steps, args.steps), softmax_dir)
  softmax = eval_curve(softmax_dir)[args.steps]
  rows = [dict(attention="softmax", start="scratch", step=args.steps,
               **softmax)]
  for attention in FAVOR_VARIANTS:
    config = make_config(args, attention, args.finetune_steps,
                         args.eval_every, init_from=softmax_dir)
    rows.append(dict(attention=attention, start="finetune", step=0,
                     **swap_eval(config, softmax_dir)))
    for start, init_from in (("finetune", softmax_dir), ("scratch", "")):
      workdir = os.path.join(runs, f"{attention}_{start}")
      trainer_lib.train_and_evaluate(
          make_config(args, attention, args.finetune_steps, args.eval_every,
                      init_from=init_from), workdir)
      rows += [dict(attention=attention, start=start, step=step, **m)
               for step, m in sorted(eval_curve(workdir).items())]
  common.write_csv(os.path.join(args.out, "backward_compat.csv"), rows)
  plot(rows, softmax["perplexity"],
       os.path.join(args.out, "backward_compat.png"))
  print(f"softmax after {args.steps} steps: perplexity "
        f"{softmax['perplexity']:.3f}, accuracy {softmax['accuracy']:.4f}")
  for attention in FAVOR_VARIANTS:
    for start in ("finetune", "scratch"):
      curve = {r["step"]: r for r in rows
               if r["attention"] == attention and r["start"] == start}
      first = curve.get(0) if start == "finetune" else None
      match = steps_to_match(curve, softmax["perplexity"])
      print(f"{attention} {start}: "
            + (f"at the swap perplexity {first['perplexity']:.3f} accuracy "
               f"{first['accuracy']:.4f}; " if first else "")
            + f"final perplexity {curve[max(curve)]['perplexity']:.3f}; "
            f"within 1% of softmax after "
            + (f"{match} steps" if match is not None else
               f"more than {args.finetune_steps} steps"))


def plot(rows, softmax_perplexity: float, path: str) -> None:
  fig, axes = common.plt.subplots(1, len(FAVOR_VARIANTS), figsize=(10, 4),
                                  sharey=True)
  for ax, attention in zip(axes, FAVOR_VARIANTS):
    for start, style in (("finetune", "o-"), ("scratch", "s--")):
      points = sorted((r["step"], r["perplexity"]) for r in rows
                      if r["attention"] == attention and r["start"] == start)
      ax.plot(*zip(*points), style, label=f"FAVOR+ from {start}"
              if start == "scratch" else "FAVOR+ from softmax weights")
    ax.axhline(softmax_perplexity, color="k", lw=1, label="softmax model")
    ax.axhline(PERPLEXITY_MARGIN * softmax_perplexity, color="k", lw=1,
               ls=":", label="softmax + 1%")
    ax.set_title(attention)
    ax.set_xlabel("fine-tuning steps")
    ax.set_yscale("log")
  axes[0].set_ylabel("eval perplexity (masked residues)")
  axes[0].legend()
  common.save_figure(fig, path)


if __name__ == "__main__":
  main()
