"""Copy task: the second half of each sequence repeats the first.

A synthetic task that needs no data files, for smoke tests and debugging.
The decoder (causal) variant predicts the copied half token by token; the
encoder (masked LM, flag `mlm`) variant fills in masked tokens from their
twin in the other half. Exact attention learns it to ~99% eval accuracy; a
model that cannot attend stays near chance (1 / (vocab_size - 3)).

Launch (from any directory):
  performer-train --config=copy:smoke --workdir=/tmp/copy_smoke
  performer-train --config=copy --workdir=/tmp/copy
  performer-train --config=copy:cpu,mlm,l2 --config.model.num_layers=4 \
      --workdir=/tmp/copy_mlm

Argument: `<variant>[,<attention>][,mlm]` (see configs/options.py):
  smoke: tiny model, 20 steps on 16 tokens (accuracy stays low).
  cpu (default): 2 layers of width 128, 2000 steps on 64 tokens.
  paper: the SLiM paper's setting, 512 tokens, 3 layers of width 512.

Expected results (2-core CPU, `cpu`, causal; accuracy on the copied half):
  softmax: eval accuracy 0.976 at step 1500, 0.986 at step 2000 (~4 min).
  favor (64 features, redrawn every 100 steps): 0.61 at step 1500, 0.48 at
      step 2000 (copying needs sharp attention, which 64 positive features
      approximate poorly).
Chance is 1 / 13 = 0.077.
"""

from performer_jax.configs import options


def get_config(arg: str = ""):
  return options.build(
      "copy", arg,
      paper={"model.num_layers": 3, "model.num_heads": 8,
             "model.emb_dim": 512, "model.mlp_dim": 2048,
             "model.attention.num_features": 256,
             "optimizer.warmup_steps": 1000, "trainer.steps": 20_000},
      overrides={
          "smoke": {"model.attention.chunk_size": 8,
                    "model.attention.redraw_every": 5,
                    "optimizer.warmup_steps": 5, "trainer.steps": 20,
                    "trainer.log_every": 5, "trainer.eval_every": 10,
                    "trainer.checkpoint_every": 10},
          "cpu": {"model.mlp_dim": 256, "model.attention.chunk_size": 32,
                  "model.attention.redraw_every": 100,
                  "trainer.steps": 2000, "trainer.log_every": 100,
                  "trainer.eval_every": 500,
                  "trainer.checkpoint_every": 1000},
      },
      flags={"mlm": {"data.variant": "mlm"}})
