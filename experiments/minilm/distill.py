"""all-MiniLM-L6-v2 with FAVOR+ attention: zero-shot, then distilled.

For each m in --features: the softmax model (the checkpoint as it is) is the
teacher; the student is the same weights with FAVOR+ attention of m fixed
random features (`performer-convert --attention favor --num-features m`).
On --eval held-out Wikipedia sentences (experiments/minilm/sentences.py)
it reports the mean cosine between student and teacher sentence embeddings
(mean pooling) and the top-1 nearest-neighbour retrieval agreement (the
fraction of sentences whose nearest other sentence is the same under both).
Then it fine-tunes the student for --minutes (or --steps) on training
sentences from other articles, matching the teacher's last hidden states
(mean squared error over real tokens) and sentence embeddings (1 - cosine),
and reports the same numbers again.

  python -m experiments.minilm.distill --features 64,128,256 --minutes 6
  python -m experiments.minilm.distill --quick      # a smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import common
from experiments.minilm import sentences
from performer_jax.convert import bert
from performer_jax.convert import embeddings
from performer_jax.inference import loading


def retrieval_metrics(student: np.ndarray, teacher: np.ndarray
                      ) -> tuple[float, float]:
  """(mean cosine of matching rows, top-1 nearest-neighbour agreement)."""
  unit = lambda e: e / np.linalg.norm(e, axis=1, keepdims=True)
  s, t = unit(student.astype(np.float64)), unit(teacher.astype(np.float64))
  cosine = float(np.mean(np.sum(s * t, 1)))
  nearest = []
  for e in (s, t):
    sims = e @ e.T
    np.fill_diagonal(sims, -np.inf)
    nearest.append(np.argmax(sims, 1))
  return cosine, float(np.mean(nearest[0] == nearest[1]))


def make_step(student, teacher, teacher_vars, optimizer, random_features):
  """The jitted distillation step `(params, opt_state, tokens, mask) ->
  (params, opt_state, loss)`."""
  def loss_fn(params, tokens_BL, mask_BL):
    variables = {"params": params, "random_features": random_features}
    h_s = embeddings.hidden_states(student, variables, tokens_BL, mask_BL)
    h_t = jax.lax.stop_gradient(embeddings.hidden_states(
        teacher, teacher_vars, tokens_BL, mask_BL))
    weights_BL = mask_BL.astype(jnp.float32)
    mse = jnp.sum(jnp.mean((h_s - h_t) ** 2, -1) * weights_BL) / jnp.sum(
        weights_BL)
    e_s, e_t = (embeddings.mean_pool(h, mask_BL) for h in (h_s, h_t))
    cos = jnp.sum(e_s * e_t, -1) / (jnp.linalg.norm(e_s, axis=-1)
                                    * jnp.linalg.norm(e_t, axis=-1))
    return mse + jnp.mean(1.0 - cos)

  @jax.jit
  def step(params, opt_state, tokens_BL, mask_BL):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens_BL, mask_BL)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def distill(ckpt, teacher, teacher_vars, features, train_rows, args, log):
  """(config, model, variables) of the student of m=`features` after
  fine-tuning, and the steps it ran."""
  attention = {"kind": "favor", "num_features": features, "redraw_every": 0}
  config, student, variables = bert.convert(ckpt, attention, seed=args.seed)
  schedule = optax.warmup_constant_schedule(0.0, args.lr, args.warmup)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adamw(schedule, weight_decay=0.0))
  params = variables["params"]
  opt_state = optimizer.init(params)
  step_fn = make_step(student, teacher, teacher_vars, optimizer,
                      variables["random_features"])
  rng = np.random.default_rng(args.seed)
  start, steps = time.time(), 0
  while steps < args.steps and time.time() - start < args.minutes * 60:
    batch = [train_rows[i] for i in rng.integers(0, len(train_rows),
                                                 args.batch_size)]
    tokens, mask = embeddings.pad_batch(batch, args.batch_size)
    pad = args.max_len - tokens.shape[1]  # one shape: one compilation
    tokens, mask = (np.pad(a, ((0, 0), (0, pad))) for a in (tokens, mask))
    params, opt_state, loss = step_fn(params, opt_state, tokens, mask)
    steps += 1
    if steps % 20 == 0 or steps == 1:
      log(f"  m={features} step {steps} loss {float(loss):.5f} "
          f"({time.time() - start:.0f} s)")
  return config, student, {**variables, "params": params}, steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--input", default=bert.PACKAGE,
                      help="the checkpoint (performer-convert --input)")
  parser.add_argument("--features", type=common.int_list,
                      default=[64, 128, 256])
  parser.add_argument("--eval", type=int, default=1000,
                      help="held-out sentences")
  parser.add_argument("--train", type=int, default=20000,
                      help="at most this many training sentences")
  parser.add_argument("--max-len", type=int, default=64,
                      help="tokens per sentence (longer ones are cut)")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--lr", type=float, default=5e-5)
  parser.add_argument("--warmup", type=int, default=20)
  parser.add_argument("--steps", type=int, default=100_000)
  parser.add_argument("--minutes", type=float, default=6.0,
                      help="fine-tuning time per m")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--export-dir", default="",
                      help="also write each distilled model here")
  parser.add_argument("--out", default="experiments/minilm/results")
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: 200 sentences, m=16, 3 steps")
  args = parser.parse_args()
  if args.quick:
    args.features, args.eval, args.train = [16], 200, 200
    args.steps, args.batch_size, args.max_len = 3, 8, 32
  log = lambda text: print(text, flush=True)

  ckpt = bert.read_checkpoint(args.input)
  config, teacher, teacher_vars = bert.convert(ckpt, {"kind": "softmax"})
  io_ = config.task_spec.io(config.data)
  train_text, eval_text = sentences.split(args.eval, args.train)
  train_rows = embeddings.encode(io_, train_text, args.max_len)
  embed = lambda model, variables: embeddings.sentence_embeddings(
      model, variables, io_, eval_text, max_len=args.max_len)
  target = embed(teacher, teacher_vars)
  log(f"{len(train_rows)} training and {len(eval_text)} held-out sentences")
  rows = []
  for m in args.features:
    attention = {"kind": "favor", "num_features": m, "redraw_every": 0}
    _, student, variables = bert.convert(ckpt, attention, seed=args.seed)
    cosine, agree = retrieval_metrics(embed(student, variables), target)
    rows.append(dict(features=m, stage="zero-shot", steps=0, minutes=0.0,
                     mean_cosine=round(cosine, 4),
                     retrieval_agreement=round(agree, 4)))
    log(f"m={m} zero-shot: cosine {cosine:.4f}, retrieval {agree:.3f}")
    start = time.time()
    s_config, student, variables, steps = distill(
        ckpt, teacher, teacher_vars, m, train_rows, args, log)
    minutes = (time.time() - start) / 60
    cosine, agree = retrieval_metrics(embed(student, variables), target)
    rows.append(dict(features=m, stage="distilled", steps=steps,
                     minutes=round(minutes, 1), mean_cosine=round(cosine, 4),
                     retrieval_agreement=round(agree, 4)))
    log(f"m={m} distilled ({steps} steps, {minutes:.1f} min): cosine "
        f"{cosine:.4f}, retrieval {agree:.3f}")
    if args.export_dir:
      os.makedirs(args.export_dir, exist_ok=True)
      path = os.path.join(args.export_dir, f"minilm_favor{m}.msgpack")
      loading.write_export(path, s_config, variables, steps)
      log(f"wrote {path}")
  common.write_csv(os.path.join(args.out, "distill.csv"), rows)
  print("| m | stage | steps | minutes | mean cosine | top-1 agreement |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['features']} | {r['stage']} | {r['steps']} | "
          f"{r['minutes']} | {r['mean_cosine']:.4f} | "
          f"{100 * r['retrieval_agreement']:.1f}% |")


if __name__ == "__main__":
  main()
