"""`performer-score`: log-likelihoods and embeddings of sequences.

  performer-score --workdir /tmp/protein_lm --input variants.fasta \
      --output scores.tsv [--embeddings emb.npy] [--batch-size 32]

Causal models: the log-likelihood of each sequence, the sum of
`log p(x_t | x_<t)` over every predicted token: for proteins the residues
and the end token, from the start token; for text every byte after the
first (text has no start token). Masked models: the pseudo-log-likelihood
`sum_i log p(x_i | x_without_i)`, one forward pass per position with that
position masked (Salazar et al. 2020), so it costs n passes for n residues.
The TSV has one row per sequence: `name`, `predicted` (the number of
tokens scored), the (pseudo-)log-likelihood in nats and bits per token (per
byte for text). `--embeddings` also writes float32 `[N, emb_dim]`: the mean
of the final layer-normed hidden states over the sequence's positions.

A sequence longer than the training length (data.seq_len, with the start
token) is an error that names it: the model never saw positions past it.
Each forward pass is padded to its longest sequence rounded up to a multiple
of `PAD_MULTIPLE` (at most seq_len / 64 programs compile), not to seq_len:
padded keys are masked out, so only the float32 rounding of the sums
changes. Inputs are streamed; the outputs appear when complete.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from performer_jax.inference import cli
from performer_jax.inference import loading
from performer_jax.tasks import base


def _is_final_norm(module, method_name: str) -> bool:
  return module.name == "ln_final" and method_name == "__call__"


@functools.partial(jax.jit, static_argnames=("model",))
def forward(model, variables, inputs_BL: jax.Array, mask_BL: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
  """(float32 `[B, L, V]` log-probabilities, float32 `[B, D]` mean final
  hidden state over the positions where `mask_BL`)."""
  logits_BLV, state = model.apply(
      variables, inputs_BL, key_mask_BL=mask_BL,
      capture_intermediates=_is_final_norm, mutable=["intermediates"])
  hidden_BLD = state["intermediates"]["ln_final"]["__call__"][0]
  weights_BL1 = mask_BL[..., None].astype(jnp.float32)
  mean_BD = jnp.sum(hidden_BLD.astype(jnp.float32) * weights_BL1, 1) / (
      jnp.maximum(jnp.sum(weights_BL1, 1), 1.0))
  return jax.nn.log_softmax(logits_BLV.astype(jnp.float32), -1), mean_BD


def causal_row(io_: base.TaskIO, tokens: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) of one sequence: the stream `[BOS] + x + [EOS]` (as
  the task has them) shifted by one."""
  stream = np.concatenate([[] if io_.bos is None else [io_.bos], tokens,
                           [] if io_.eos is None else [io_.eos]])
  return stream[:-1].astype(np.int32), stream[1:].astype(np.int32)


def row_length(io_: base.TaskIO, tokens: np.ndarray) -> int:
  """Model positions a sequence needs."""
  return len(causal_row(io_, tokens)[0]) if io_.causal else len(tokens)


PAD_MULTIPLE = 64


def padded_length(rows: list[np.ndarray], length: int) -> int:
  """The positions a forward pass over `rows` needs: the longest row rounded
  up to a multiple of PAD_MULTIPLE, at most `length`."""
  need = max(len(row) for row in rows)
  return min(length, -(-need // PAD_MULTIPLE) * PAD_MULTIPLE)


def _pad(rows: list[np.ndarray], batch: int, length: int) -> np.ndarray:
  out = np.zeros((batch, padded_length(rows, length)), np.int32)
  for b, row in enumerate(rows):
    out[b, :len(row)] = row
  return out


def score_causal(loaded: loading.LoadedModel, records: list[cli.Record],
                 length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(log-likelihood [N], tokens predicted [N], embeddings [N, D]) of a
  batch of sequences (at most `length` positions)."""
  pairs = [causal_row(loaded.io, r.tokens) for r in records]
  inputs = _pad([p[0] for p in pairs], len(records), length)
  targets = _pad([p[1] for p in pairs], len(records), length)
  mask = _pad([np.ones(len(p[0]), np.int32) for p in pairs], len(records),
              length).astype(bool)
  logp_BLV, emb_BD = forward(loaded.model, loaded.variables, inputs, mask)
  picked_BL = np.take_along_axis(np.asarray(logp_BLV), targets[..., None],
                                 -1)[..., 0]
  return (np.where(mask, picked_BL, 0.0).sum(1), mask.sum(1),
          np.asarray(emb_BD))


def score_masked(loaded: loading.LoadedModel, records: list[cli.Record],
                 length: int, batch_size: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(pseudo-log-likelihood [N], tokens [N], embeddings [N, D]): every
  position masked in turn, `batch_size` masked copies per forward pass."""
  io_ = loaded.io
  masked = [(n, i) for n, r in enumerate(records) for i in range(len(r.tokens))]
  pll = np.zeros(len(records))
  for chunk in cli.batches(len(masked), batch_size):
    rows, positions, targets = [], [], []
    for n, i in (masked[j] for j in chunk):
      row = records[n].tokens.copy()
      targets.append(row[i])
      row[i] = io_.mask
      rows.append(row)
      positions.append(i)
    lengths = [len(r) for r in rows] + [1] * (batch_size - len(rows))
    inputs = _pad(rows, batch_size, length)
    mask = np.arange(inputs.shape[1])[None] < np.asarray(lengths)[:, None]
    logp_BLV, _ = forward(loaded.model, loaded.variables, inputs, mask)
    logp = np.asarray(logp_BLV)[np.arange(len(rows)), positions, targets]
    np.add.at(pll, [masked[j][0] for j in chunk], logp)
  plain = _pad([r.tokens for r in records], len(records), length)
  lengths = np.asarray([len(r.tokens) for r in records])
  _, emb_BD = forward(loaded.model, loaded.variables, plain,
                      np.arange(plain.shape[1])[None] < lengths[:, None])
  return pll, lengths, np.asarray(emb_BD)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="performer-score", description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  cli.add_model_arguments(parser)
  parser.add_argument("--input", required=True,
                      help="sequences: FASTA, or one per line")
  parser.add_argument("--output", required=True, help="the TSV to write")
  parser.add_argument("--embeddings", default=None,
                      help="also write mean-pooled embeddings to this .npy")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--progress", choices=("auto", "on", "off"),
                      default="auto")
  return parser


def _main(argv: Sequence[str] | None) -> None:
  args = _parser().parse_args(argv)
  if args.batch_size < 1:
    raise ValueError("--batch-size must be >= 1")
  loaded = cli.load(args)
  io_ = loaded.io
  length = loaded.config.data.seq_len
  # A first pass checks every record before any compute, and counts them.
  count = 0
  for record in cli.iter_records(args.input, io_):
    need = row_length(io_, record.tokens)
    if need > length:
      raise ValueError(f"{args.input}: {record.name} needs {need} positions "
                       f"but the model was trained on {length} "
                       "(data.seq_len); score shorter sequences")
    if io_.causal and need < 1:
      raise ValueError(f"{args.input}: {record.name} is too short to score: "
                       "a model without a start token predicts from the "
                       "second token on")
    count += 1
  unit = {"byte": "byte"}.get(io_.loss_unit, "token")
  column = "log_likelihood" if io_.causal else "pseudo_log_likelihood"
  emb = None
  if args.embeddings:
    emb = np.lib.format.open_memmap(
        args.embeddings + ".tmp", mode="w+", dtype=np.float32,
        shape=(count, loaded.config.model.emb_dim))
  tmp = args.output + ".tmp"
  show = {"auto": None, "on": False, "off": True}[args.progress]
  with open(tmp, "w", encoding="utf-8") as out, tqdm.tqdm(
      total=count, unit="seq", disable=show, desc="scoring") as bar:
    out.write(f"name\tpredicted\t{column}\tbits_per_{unit}\n")
    done = 0
    for batch in cli.in_batches(cli.iter_records(args.input, io_),
                                args.batch_size):
      if io_.causal:
        ll, predicted, emb_BD = score_causal(loaded, batch, length)
      else:
        ll, predicted, emb_BD = score_masked(loaded, batch, length,
                                             args.batch_size)
      for record, value, n in zip(batch, ll, predicted):
        out.write(f"{record.name}\t{n}\t{value:.6f}\t"
                  f"{-value / max(n, 1) / math.log(2):.6f}\n")
      if emb is not None:
        emb[done:done + len(batch)] = emb_BD
      done += len(batch)
      bar.update(len(batch))
  os.replace(tmp, args.output)
  if emb is not None:
    emb.flush()
    del emb
    os.replace(args.embeddings + ".tmp", args.embeddings)
  print(f"scored {count} sequences into {args.output}")


def main(argv: Sequence[str] | None = None) -> None:
  """Entry point of `performer-score`."""
  cli.run(_main, argv)


if __name__ == "__main__":
  main()
