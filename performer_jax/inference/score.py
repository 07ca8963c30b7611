"""`performer-score`: log-likelihoods and embeddings of sequences (README).

One TSV row per sequence: `name`, `predicted` (tokens scored) and the
log-likelihood in nats and bits per token (per byte for text): causal models
sum `log p(x_t | x_<t)`, masked ones give the pseudo-log-likelihood (Salazar
et al. 2020). `--embeddings`: float32 `[N, emb_dim]`, the mean final
layer-normed hidden state. Sequences longer than the training length L are
scored in windows of L (`--long`, `--overlap`); windows past the first lack
the start token, as training crops did. Padding to a multiple of
`PAD_MULTIPLE` changes only the float32 rounding.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
from typing import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from performer_jax.inference import cli
from performer_jax.inference import loading
from performer_jax.tasks import base

LONG_CHOICES = ("window", "error", "skip")
PAD_MULTIPLE = 64


def _is_final_norm(module, method_name: str) -> bool:
  return module.name == "ln_final" and method_name == "__call__"


@functools.partial(jax.jit, static_argnames=("model",))
def forward(model, variables, inputs_BL: jax.Array, mask_BL: jax.Array,
            targets_BL: jax.Array, pick_BL: jax.Array, own_BL: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
  """(float32 `[B]` sum of `log p(targets)` where `pick_BL`, float32
  `[B, D]` sum of the final hidden states where `own_BL`); attention sees
  the positions where `mask_BL`."""
  logits_BLV, state = model.apply(
      variables, inputs_BL, key_mask_BL=mask_BL,
      capture_intermediates=_is_final_norm, mutable=["intermediates"])
  hidden_BLD = state["intermediates"]["ln_final"]["__call__"][0]
  logp_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), -1)
  picked_BL = jnp.take_along_axis(logp_BLV, targets_BL[..., None], -1)[..., 0]
  ll_B = jnp.sum(jnp.where(pick_BL, picked_BL, 0.0), 1)
  own_BL1 = own_BL[..., None].astype(jnp.float32)
  return ll_B, jnp.sum(hidden_BLD.astype(jnp.float32) * own_BL1, 1)


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


def window_starts(n: int, length: int, overlap: int) -> list[int]:
  """Starts of the windows of `length` that cover `[0, n)`: every
  `length - overlap` positions, the last one ending at n."""
  if n <= length:
    return [0]
  stride = length - overlap
  starts = list(range(0, n - length, stride))
  return starts + [n - length]


def causal_owned(n: int, length: int, overlap: int
                 ) -> list[tuple[int, int, int]]:
  """`(start, lo, hi)` per window: positions `[lo, hi)` are scored in the
  window `[start, start + length)`, the first window that reaches them."""
  out, done = [], 0
  for start in window_starts(n, length, overlap):
    end = min(start + length, n)
    out.append((start, done, end))
    done = end
  return out


def central_owned(n: int, length: int, overlap: int
                  ) -> list[tuple[int, int, int]]:
  """`(start, lo, hi)` per window: each position in the window where it lies
  farthest from both edges (ties to the earlier window)."""
  starts = window_starts(n, length, overlap)
  bounds = [0] + [(a + length + b) // 2 for a, b in zip(starts, starts[1:])
                  ] + [n]
  return [(s, lo, hi) for s, lo, hi in zip(starts, bounds, bounds[1:])
          if hi > lo]


def centred_start(i: int, n: int, length: int) -> int:
  """The start of the window of `length` centred on position i of n."""
  return min(max(i - length // 2, 0), max(n - length, 0))


@dataclasses.dataclass(frozen=True)
class Piece:
  """One row of a forward pass: a window of a record's tokens, the
  positions whose log p(target) it adds, those it pools."""
  record: int
  inputs: np.ndarray   # int32 [l], l <= seq_len
  targets: np.ndarray  # int32 [l]
  pick: np.ndarray     # bool [l]
  own: np.ndarray      # bool [l]


def pieces(io_: base.TaskIO, index: int, tokens: np.ndarray, length: int,
           overlap: int) -> Iterator[Piece]:
  """The forward-pass rows that score and embed one sequence."""
  if io_.causal:
    inputs, targets = causal_row(io_, tokens)
    for start, lo, hi in causal_owned(len(inputs), length, overlap):
      end = min(start + length, len(inputs))
      own = np.zeros(end - start, bool)
      own[lo - start:hi - start] = True
      yield Piece(index, inputs[start:end], targets[start:end], own, own)
    return
  n = len(tokens)
  none = np.zeros(min(n, length), bool)
  for i in range(n):
    start = centred_start(i, n, length)
    window = tokens[start:start + length].copy()
    window[i - start] = io_.mask
    pick = none.copy()
    pick[i - start] = True
    yield Piece(index, window, tokens[start:start + length], pick, none)
  for start, lo, hi in central_owned(n, length, overlap):
    own = none.copy()
    own[lo - start:hi - start] = True
    yield Piece(index, tokens[start:start + length],
                tokens[start:start + length], none, own)


def count_pieces(io_: base.TaskIO, tokens: np.ndarray, length: int,
                 overlap: int) -> int:
  n = row_length(io_, tokens)
  windows = len(window_starts(n, length, overlap))
  return windows if io_.causal else n + windows


def padded_length(rows: list[np.ndarray], length: int) -> int:
  """The positions a forward pass over `rows` needs: the longest row rounded
  up to a multiple of PAD_MULTIPLE, at most `length`."""
  need = max(len(row) for row in rows)
  return min(length, -(-need // PAD_MULTIPLE) * PAD_MULTIPLE)


def _pad(rows: list[np.ndarray], batch: int, length: int) -> np.ndarray:
  out = np.zeros((batch, padded_length(rows, length)),
                 rows[0].dtype if rows else np.int32)
  for b, row in enumerate(rows):
    out[b, :len(row)] = row
  return out


def run_pieces(loaded: loading.LoadedModel, chunk: list[Piece], batch: int,
               length: int) -> tuple[np.ndarray, np.ndarray]:
  """(log-likelihood sums [len(chunk)], hidden-state sums [len(chunk), D])
  of one forward pass; the batch is padded to `batch` rows (one program)."""
  field = lambda name: _pad([getattr(p, name) for p in chunk], batch, length)
  mask = _pad([np.ones(len(p.inputs), bool) for p in chunk], batch, length)
  mask[len(chunk):, 0] = True  # unused rows: no row without a key
  ll_B, emb_BD = forward(loaded.model, loaded.variables, field("inputs"),
                         mask, field("targets"), field("pick"), field("own"))
  return (np.asarray(ll_B, np.float64)[:len(chunk)],
          np.asarray(emb_BD, np.float64)[:len(chunk)])


def score_records(loaded: loading.LoadedModel, records: Iterable[cli.Record],
                  *, length: int, overlap: int, batch: int
                  ) -> Iterator[tuple[cli.Record, float, int, np.ndarray]]:
  """`(record, (pseudo-)log-likelihood, tokens predicted, mean embedding)`
  per record, in order, computed `batch` pieces per forward pass."""
  io_ = loaded.io
  pending: dict[int, list] = {}  # record -> [record, ll, emb sum, count, left]
  order: list[int] = []
  chunk: list[Piece] = []

  def flush():
    ll, emb = run_pieces(loaded, chunk, batch, length)
    for piece, value, vector in zip(chunk, ll, emb):
      entry = pending[piece.record]
      entry[1] += value
      entry[2] += vector
      entry[4] -= 1
    chunk.clear()

  def finished():
    while order and pending[order[0]][4] == 0:
      record, ll, emb, count, _ = pending.pop(order.pop(0))
      predicted = int(count)
      yield record, ll, predicted, (emb / max(row_length(
          io_, record.tokens), 1)).astype(np.float32)

  for index, record in enumerate(records):
    n_pieces = count_pieces(io_, record.tokens, length, overlap)
    predicted = (row_length(io_, record.tokens) if io_.causal
                 else len(record.tokens))
    pending[index] = [record, 0.0, 0.0, predicted, n_pieces]
    order.append(index)
    for piece in pieces(io_, index, record.tokens, length, overlap):
      chunk.append(piece)
      if len(chunk) == batch:
        flush()
        yield from finished()
  if chunk:
    flush()
  yield from finished()


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
  parser.add_argument("--batch-size", type=int, default=32,
                      help="rows per forward pass")
  parser.add_argument("--long", choices=LONG_CHOICES, default="window",
                      help="sequences longer than the training length: "
                      "score them in overlapping windows (default), fail, "
                      "or skip them")
  parser.add_argument("--overlap", type=int, default=None,
                      help="positions shared by consecutive windows "
                      "(default: half the training length)")
  parser.add_argument("--progress", choices=("auto", "on", "off"),
                      default="auto")
  return parser


def _main(argv: Sequence[str] | None) -> None:
  args = _parser().parse_args(argv)
  if args.batch_size < 1:
    raise ValueError("--batch-size must be >= 1")
  cli.check_output(args.output, "--output")
  if args.embeddings:
    cli.check_output(args.embeddings, "--embeddings")
  loaded = cli.load(args)
  io_ = loaded.io
  length = loaded.config.data.seq_len
  overlap = length // 2 if args.overlap is None else args.overlap
  if not 0 <= overlap < length:
    raise ValueError(f"--overlap must be in [0, {length - 1}] (the training "
                     f"length is {length}), got {overlap}")
  # A first pass checks every record before any compute, and counts them.
  count = windowed = skipped = total = 0
  for record in cli.iter_records(args.input, io_):
    need = row_length(io_, record.tokens)
    if io_.causal and need < 1:
      raise ValueError(f"{args.input}: {record.name} is too short to score: "
                       "a model without a start token predicts from the "
                       "second token on")
    if need > length:
      if args.long == "error":
        raise ValueError(f"{args.input}: {record.name} needs {need} positions "
                         f"but the model was trained on {length} "
                         "(data.seq_len); score shorter sequences, or drop "
                         "--long=error to score it in windows")
      if args.long == "skip":
        skipped += 1
        continue
      windowed += 1
    count += 1
    total += count_pieces(io_, record.tokens, length, overlap)
  keep = lambda r: args.long != "skip" or row_length(io_, r.tokens) <= length
  unit = {"byte": "byte"}.get(io_.loss_unit, "token")
  column = "log_likelihood" if io_.causal else "pseudo_log_likelihood"
  emb = None
  if args.embeddings:
    emb = np.lib.format.open_memmap(
        args.embeddings + ".tmp", mode="w+", dtype=np.float32,
        shape=(count, loaded.config.model.emb_dim))
  tmp = args.output + ".tmp"
  show = {"auto": None, "on": False, "off": True}[args.progress]
  try:
    with open(tmp, "w", encoding="utf-8") as out, tqdm.tqdm(
        total=count, unit="seq", disable=show, desc="scoring") as bar:
      out.write(f"name\tpredicted\t{column}\tbits_per_{unit}\n")
      records = filter(keep, cli.iter_records(args.input, io_))
      for done, (record, value, n, vector) in enumerate(score_records(
          loaded, records, length=length, overlap=overlap,
          batch=max(1, min(args.batch_size, total)))):
        out.write(f"{record.name}\t{n}\t{value:.6f}\t"
                  f"{-value / max(n, 1) / math.log(2):.6f}\n")
        if emb is not None:
          emb[done] = vector
        bar.update(1)
    os.replace(tmp, args.output)
    if emb is not None:
      emb.flush()
      del emb
      os.replace(args.embeddings + ".tmp", args.embeddings)
  finally:
    for path in (tmp, args.embeddings and args.embeddings + ".tmp"):
      if path and os.path.exists(path):
        os.remove(path)
  notes = []
  if windowed:
    notes.append(f"{windowed} longer than the training length {length}, "
                 f"scored in windows overlapping by {overlap}")
  if skipped:
    notes.append(f"{skipped} longer than the training length {length} "
                 "skipped (--long=skip)")
  print(f"scored {count} sequences into {args.output}"
        + (f" ({'; '.join(notes)})" if notes else ""))


def main(argv: Sequence[str] | None = None) -> None:
  """Entry point of `performer-score`."""
  cli.run(_main, argv)


if __name__ == "__main__":
  main()
