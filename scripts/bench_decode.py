"""Benchmark inference: prompt prefill against token-by-token, and sampling.

For each attention kind (FAVOR+ with positive softmax features, exact
softmax, L2) a decoder of `--layers` layers, width `--width` and context
`--max-len` with random weights:

  prefill   `pnn.prefill` of a `--prompt`-token prompt: one causal pass
            that fills the cache (FAVOR+: the prefix-sum state; softmax and
            L2: the KV cache);
  stepwise  the same prompt fed one token at a time (`decode_logits`, a
            jitted `lax.scan` of decode steps): what a decoder without
            prefill does. Both return the same logits (checked here).
  generate  `pnn.generate` from a one-token prompt to `--new` tokens at
            each batch size of `--batches`: tokens per second (all
            sequences), compile excluded.

Each time is the median of `--repeats` calls after one warm-up call; prefill
and stepwise calls alternate, so that the machine's drift during a run falls
on both alike. Target: prefill >= 10x faster than stepwise at 1024 prompt
tokens.

  python scripts/bench_decode.py                       # the docs table
  python scripts/bench_decode.py --prompt 256 --new 64 --batches 1   # quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from performer_jax import allocator  # noqa: E402
from performer_jax import linen as pnn  # noqa: E402
from performer_jax.linen import decoding  # noqa: E402

KINDS = {
    "favor": dict(kind="favor", kernel="softmax", num_features=256),
    "softmax": dict(kind="softmax"),
    "l2": dict(kind="l2"),
}
VOCAB = 256


def _model_config(kind: str, args):
  cfg = pnn.ModelConfig.defaults()
  cfg.num_layers, cfg.emb_dim = args.layers, args.width
  cfg.num_heads, cfg.mlp_dim = args.width // 64, 4 * args.width
  cfg.max_len, cfg.dropout_rate = args.max_len, 0.0
  for key, value in KINDS[kind].items():
    cfg.attention[key] = value
  return cfg


def _median_seconds(*calls, repeats: int) -> list[float]:
  """The median time of each call; the calls alternate within each repeat."""
  for call in calls:
    jax.block_until_ready(call())  # compile and warm up
  times = [[] for _ in calls]
  for _ in range(repeats):
    for call, seconds in zip(calls, times):
      start = time.perf_counter()
      jax.block_until_ready(call())
      seconds.append(time.perf_counter() - start)
  return [float(np.median(t)) for t in times]


def bench_kind(kind: str, args) -> dict[str, float]:
  cfg = _model_config(kind, args)
  train = pnn.make_model(cfg, vocab_size=VOCAB, causal=True)
  decoder = pnn.make_model(cfg, vocab_size=VOCAB, causal=True,
                              decode=True)
  rng = jax.random.PRNGKey(0)
  tokens = jax.random.randint(rng, (1, args.prompt), 0, VOCAB)
  variables = train.init({"params": rng, "random_features": rng}, tokens)
  cached = decoding.init_cache(decoder, variables, 1, args.prompt)
  row = {}
  prefilled, _ = decoding.prefill(decoder, cached, tokens)
  stepped, _ = decoding.decode_logits(decoder, cached, tokens)
  row["max_abs_diff"] = float(jnp.max(jnp.abs(prefilled - stepped)))
  row["prefill_s"], row["stepwise_s"] = _median_seconds(
      lambda: decoding.prefill(decoder, cached, tokens)[0],
      lambda: decoding.decode_logits(decoder, cached, tokens)[0],
      repeats=args.repeats)
  for batch in args.batches:
    prompt = jnp.zeros((batch, 1), jnp.int32)
    seconds, = _median_seconds(
        lambda p=prompt: decoding.generate(decoder, variables, p, rng,
                                           max_len=args.new + 1),
        repeats=args.repeats)
    row[f"tokens_per_s_b{batch}"] = batch * args.new / seconds
  return row


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--kinds", default="favor,softmax,l2")
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--width", type=int, default=256)
  p.add_argument("--max-len", type=int, default=2048)
  p.add_argument("--prompt", type=int, default=1024)
  p.add_argument("--new", type=int, default=256)
  p.add_argument("--batches", default="1,32")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no-tcmalloc", action="store_true",
                 help="keep the system malloc (see performer_jax/allocator.py)")
  args = p.parse_args()
  args.batches = [int(b) for b in args.batches.split(",")]
  if args.width % 64:
    raise SystemExit("--width must be a multiple of 64 (head_dim 64)")
  if not 1 <= args.prompt <= args.max_len or args.new > args.max_len:
    raise SystemExit("--prompt and --new must be in [1, --max-len]")
  alloc = "tcmalloc" if allocator.tcmalloc_active() else "system malloc"
  print(f"{jax.default_backend()} ({alloc}); {args.layers} layers, width "
        f"{args.width}, prompt {args.prompt}, {args.new} new tokens")
  header = ["kind", "prefill", "stepwise", "speed-up", "max|diff|"] + [
      f"tok/s b={b}" for b in args.batches]
  print(" | ".join(header))
  for kind in args.kinds.split(","):
    row = bench_kind(kind, args)
    cells = [kind, f"{row['prefill_s'] * 1e3:.1f} ms",
             f"{row['stepwise_s'] * 1e3:.0f} ms",
             f"{row['stepwise_s'] / row['prefill_s']:.1f}x",
             f"{row['max_abs_diff']:.1e}"] + [
                 f"{row[f'tokens_per_s_b{b}']:.0f}" for b in args.batches]
    print(" | ".join(cells), flush=True)


if __name__ == "__main__":
  if "--no-tcmalloc" not in sys.argv:
    # XLA:CPU temporaries page-fault on every call under glibc malloc.
    allocator.reexec_under_tcmalloc([os.path.abspath(__file__),
                                     *sys.argv[1:]])
  main()
