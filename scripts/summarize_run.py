"""Prints the final metrics of a performer-train workdir and where things are.

  python scripts/summarize_run.py WORKDIR [WORKDIR ...]
"""

from __future__ import annotations

import json
import os
import sys


def summarize(workdir: str) -> str:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} a "
                            "performer-train workdir?")
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  evals = [r for r in records if r.get("split") == "eval"]
  train = [r for r in records if r.get("split") == "train"]
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  att = config["model"]["attention"]
  lines = [f"run: {config['task']}, attention {att['kind']}"
           f"{' (' + att['kernel'] + ')' if att['kind'] == 'favor' else ''}"]
  if train:
    t = train[-1]
    lines.append(f"  train step {t['step']}: loss {t['loss']:.4f}, "
                 f"accuracy {t['accuracy']:.4f}")
  if evals:
    e = evals[-1]
    bits = {k: v for k, v in e.items() if k.startswith("bits_per_")}
    lines.append(f"  eval  step {e['step']}: loss {e['loss']:.4f}, accuracy "
                 f"{e['accuracy']:.4f}, perplexity {e['perplexity']:.3f}, " +
                 ", ".join(f"{k} {v:.4f}" for k, v in bits.items()))
  lines += [f"  metrics:     {path}",
            f"  tensorboard: tensorboard --logdir {os.path.join(workdir, 'tb')}",
            f"  checkpoints: {os.path.join(workdir, 'checkpoints')}"]
  return "\n".join(lines)


if __name__ == "__main__":
  if len(sys.argv) < 2 or {"-h", "--help"} & set(sys.argv[1:]):
    sys.exit(__doc__)
  try:
    for wd in sys.argv[1:]:
      print(summarize(wd))
  except (OSError, ValueError, KeyError) as e:
    sys.exit(f"summarize_run: {e}")
