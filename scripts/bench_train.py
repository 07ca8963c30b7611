"""Training throughput (tokens/s) of softmax, FAVOR+ and L2 attention.

Times the trainer's compiled train step (forward, backward, optimizer) for a
4-layer model (width 256, 4 heads, MLP 1024, vocabulary 256, batch 8) on the
copy task at each sequence length, and prints a table.

  python scripts/bench_train.py                       # L = 1024 and 4096
  python scripts/bench_train.py --lengths=128,256 --steps=2   # quick check
  python scripts/bench_train.py --lengths=1024 --kinds=favor \
      --model_api=linen,nnx          # the Linen and the NNX model side by side

Each (kind, length) runs in its own subprocess: a setting that runs out of
memory is reported as such and the table goes on.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from performer_jax import attention
from performer_jax.configs import copy as copy_config
from performer_jax.train import trainer as trainer_lib
# pylint: enable=g-import-not-at-top,wrong-import-position


def bench_config(kind, seq_len, args):
  config = copy_config.get_config("cpu")
  config.data.batch_size = args.batch
  config.data.seq_len = seq_len
  config.data.vocab_size = 256
  config.data.variant = "causal" if args.causal else "mlm"
  config.data.mask_rate = 0.15
  config.data.num_eval_batches = 1
  config.model.num_layers = args.layers
  config.model.num_heads = 4
  config.model.emb_dim = 256
  config.model.mlp_dim = 1024
  config.model.max_len = seq_len
  config.model.dropout_rate = 0.1
  config.model.attention.kind = kind
  config.model.attention.num_features = args.num_features
  config.model.attention.chunk_size = args.chunk_size
  config.model.attention.redraw_every = 0
  config.model.remat = args.remat
  config.model.dtype = args.dtype
  config.model_api = args.model_api
  if args.microbatch_tokens:
    # Same batch and update; sequential slices of a fixed token count, so
    # the working set (and cache behaviour) does not grow with L.
    config.trainer.microbatches = max(
        1, args.batch * seq_len // args.microbatch_tokens)
  config.optimizer.warmup_steps = 1
  config.optimizer.weight_decay = 0.1
  config.trainer.steps = args.steps + 1
  config.trainer.progress = "log"
  return config


def bench_one(kind, seq_len, args):
  """Returns (compile seconds, seconds per step)."""
  trainer = trainer_lib.Trainer(bench_config(kind, seq_len, args))
  state = trainer.init_state()
  batches = [trainer.get_batch(trainer.task.train, i) for i in range(2)]
  with trainer.context():
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(args.steps):
      state, metrics = trainer.train_step(state, batches[i % 2])
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / args.steps
  return compile_s, step_s


def run_isolated(kind, seq_len, argv):
  """Runs one setting in a subprocess, so running out of memory (which may
  kill the process outright) costs only that row."""
  cmd = [sys.executable, os.path.abspath(__file__), *argv, "--one",
         f"{kind}:{seq_len}"]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
  oom = "RESOURCE_EXHAUSTED" in proc.stderr or proc.returncode in (-9, 137)
  return {"error": "out of memory" if oom else
          f"failed (exit {proc.returncode}): {tail[0][:60]}"}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", default="1024,4096",
                      help="comma-separated sequence lengths")
  parser.add_argument("--kinds", default="softmax,favor,l2")
  parser.add_argument("--steps", type=int, default=5,
                      help="timed steps per setting (after one compile step)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--num_features", type=int, default=256)
  parser.add_argument("--chunk_size", type=int,
                      default=attention.DEFAULT_CHUNK_SIZE)
  parser.add_argument("--causal", action=argparse.BooleanOptionalAction,
                      default=True, help="decoder (default) or encoder")
  parser.add_argument("--remat", action=argparse.BooleanOptionalAction,
                      default=False,
                      help="rematerialize each block (exact attention needs "
                      "it to fit L=4096 in 24 GiB)")
  parser.add_argument("--microbatch_tokens", type=int, default=0,
                      help="split each batch into sequential microbatches of "
                      "this many tokens (gradient accumulation; 0: off)")
  parser.add_argument("--dtype", default="float32",
                      help="the model's compute dtype (bfloat16: a GPU's "
                      "FAVOR+ runs the Pallas kernels)")
  parser.add_argument("--model_api", default="linen",
                      help="linen, nnx, or both (linen,nnx): one row each")
  parser.add_argument("--no-tcmalloc", action="store_true",
                      help="keep the system malloc (see allocator.py)")
  parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:  # worker mode: one setting, result as a JSON line
    kind, seq_len = args.one.split(":")
    compile_s, step_s = bench_one(kind, int(seq_len), args)
    print("RESULT " + json.dumps({"compile_s": compile_s, "step_s": step_s}))
    return
  argv = [a for a in sys.argv[1:]
          if not a.startswith(("--one", "--model_api"))]
  apis = args.model_api.split(",")
  lengths = [int(x) for x in args.lengths.split(",")]
  kinds = args.kinds.split(",")
  print(f"batch {args.batch}, {args.layers} layers, d=256, 4 heads, "
        f"mlp 1024, vocab 256, "
        f"{'causal' if args.causal else 'bidirectional'}, favor features "
        f"{args.num_features}, chunk {args.chunk_size}, "
        f"{'remat, ' if args.remat else ''}{args.dtype}, "
        f"{f'microbatches of {args.microbatch_tokens} tokens, ' if args.microbatch_tokens else ''}"
        f"{os.cpu_count()} CPU cores")
  header = (f"{'kind':8} {'L':>6} {'tokens/s':>10} {'ms/step':>9} "
            f"{'compile s':>10}")
  print(header)
  print("-" * len(header), flush=True)
  step_s = {}
  for seq_len in lengths:
    for kind, api in [(k, a) for k in kinds for a in apis]:
      r = run_isolated(kind, seq_len, argv + [f"--model_api={api}"])
      label = kind if len(apis) == 1 else f"{kind}/{api}"
      if "error" in r:
        print(f"{label:8} {seq_len:>6} {r['error']}", flush=True)
        continue
      step_s[label, seq_len] = r["step_s"]
      tokens = args.batch * seq_len / r["step_s"]
      print(f"{label:8} {seq_len:>6} {tokens:>10.0f} "
            f"{r['step_s'] * 1e3:>9.1f} {r['compile_s']:>10.1f}", flush=True)
  # Linear attention: step time grows like L (ratio = length ratio).
  lo, hi = min(lengths), max(lengths)
  for kind in kinds:
    if (kind, lo) in step_s and (kind, hi) in step_s and hi > lo:
      print(f"{kind}: step time x{step_s[kind, hi] / step_s[kind, lo]:.2f} "
            f"from L={lo} to L={hi} (linear would be x{hi / lo:.0f})")
  if ("favor", hi) in step_s and ("softmax", hi) in step_s:
    speedup = step_s["softmax", hi] / step_s["favor", hi]
    print(f"at L={hi} FAVOR+ is {speedup:.2f}x the speed of softmax "
          f"({'faster' if speedup > 1 else 'slower'})")


if __name__ == "__main__":
  if "--no-tcmalloc" not in sys.argv:
    from performer_jax import allocator  # pylint: disable=g-import-not-at-top
    allocator.reexec_under_tcmalloc([os.path.abspath(__file__),
                                     *sys.argv[1:]])
  main()
