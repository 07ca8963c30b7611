"""Every real-data task's smoke config trains end to end on the
embedded data, and learns."""

import json
import math
import os

import pytest

from performer_jax.configs import options
from performer_jax.configs import pixel_lm
from performer_jax.configs import protein_lm
from performer_jax.configs import protein_mlm
from performer_jax.configs import text_lm
from performer_jax.train import train_and_evaluate

CONFIGS = {"protein_mlm": protein_mlm, "protein_lm": protein_lm,
           "text_lm": text_lm, "pixel_lm": pixel_lm}
UNITS = {"protein_mlm": "token", "protein_lm": "token", "text_lm": "byte",
         "pixel_lm": "dim"}


@pytest.mark.parametrize("task,attention", [
    ("protein_mlm", "favor_relu"), ("protein_lm", "favor"),
    ("text_lm", "l2"), ("text_lm", "l2_invertible"),
    ("pixel_lm", "softmax")])
def test_smoke_config_trains(task, attention, tmp_path):
  config = CONFIGS[task].get_config(f"smoke,{attention}")
  config.trainer.progress = "log"
  config.trainer.eval_every = 2  # evals at steps 2, 4, 6: learning shows
  train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  train = [r for r in records if r["split"] == "train"]
  evals = [r for r in records if r["split"] == "eval"]
  assert train and evals, records
  assert all(math.isfinite(r["loss"]) for r in train)
  assert train[-1]["step"] == config.trainer.steps
  bits = [r[f"bits_per_{UNITS[task]}"] for r in evals]
  assert [r["step"] for r in evals] == [2, 4, 6]
  assert all(math.isfinite(b) and 0 < b < 12 for b in bits)
  # The run learned: on the same eval batches the last eval beats the first
  # (step 2). float32 round-off is ~1e-5 bits; steps 3-6 gain 0.05 to 0.4.
  assert bits[-1] < bits[0] - 1e-3, bits
  assert os.listdir(tmp_path / "checkpoints")
  saved = json.load(open(tmp_path / "config.json"))
  assert saved["model"]["attention"]["kind"] == (
      "favor" if attention.startswith("favor") else
      "l2" if attention.startswith("l2") else attention)
  assert saved["model_builder"] == (
      "invertible_l2" if attention == "l2_invertible" else "transformer")


def test_attention_overrides_set_the_model(tmp_path):
  for name, kind, kernel in [("softmax", "softmax", "softmax"),
                             ("favor", "favor", "softmax"),
                             ("favor_relu", "favor", "relu"),
                             ("l2", "l2", "softmax")]:
    att = protein_mlm.get_config(f"cpu,{name}").model.attention
    assert (att.kind, att.kernel) == (kind, kernel)
  paper = protein_mlm.get_config("paper").model
  assert (paper.num_layers, paper.num_heads, paper.emb_dim, paper.mlp_dim,
          paper.attention.num_features) == (36, 8, 512, 1024, 256)
  with pytest.raises(ValueError, match="unknown protein_mlm config option"):
    protein_mlm.get_config("cpu,relu")
  with pytest.raises(ValueError, match="at most one variant"):
    options.parse("cpu,smoke", "text_lm")
  bad = text_lm.get_config("smoke,favor")
  bad.model_builder = "invertible_l2"
  with pytest.raises(ValueError, match="needs config.model.attention.kind"):
    train_and_evaluate(bad, str(tmp_path / "never"))
  bad.model_builder = "resnet"
  with pytest.raises(ValueError, match="model_builder"):
    train_and_evaluate(bad, str(tmp_path / "never"))
  assert not (tmp_path / "never").exists()
