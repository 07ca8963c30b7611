"""A workdir is bound to its run: which config changes a resume accepts,
the config history, and metrics records past the newest checkpoint."""

import json

import pytest

from performer_jax import experiment
from performer_jax.configs import copy as copy_config
from performer_jax.train import workdir as workdir_lib


def parsed(**changes):
  config = copy_config.get_config("smoke")
  for path, value in changes.items():
    section, key = path.split(".")
    config[section][key] = value
  return experiment.parse(config)


def test_differences_are_flat_keys():
  diff = workdir_lib.differences({"a": {"b": 1, "c": 2}, "d": 3},
                                 {"a": {"b": 1, "c": 5}, "e": 4})
  assert diff == {"a.c": (2, 5), "d": (3, "<missing>"),
                  "e": ("<missing>", 4)}


def test_loop_settings_may_change_but_not_the_model_or_task(tmp_path):
  workdir_lib.record_config(parsed(), str(tmp_path), 0)
  # More steps, another schedule, another mesh, eval settings: accepted and
  # returned for the log.
  allowed = parsed(**{"trainer.steps": 40, "optimizer.learning_rate": 1e-4,
                      "mesh.data": 1, "data.num_eval_batches": 1})
  changes = workdir_lib.check_resume(allowed, str(tmp_path), True)
  assert set(changes) == {"trainer.steps", "optimizer.learning_rate",
                          "mesh.data", "data.num_eval_batches"}
  # Without checkpoints a workdir binds nothing.
  assert not workdir_lib.check_resume(parsed(**{"model.emb_dim": 64}),
                                      str(tmp_path), False)
  for path, value in [("model.emb_dim", 64), ("data.seq_len", 12),
                      ("data.variant", "mlm"), ("data.vocab_size", 20)]:
    with pytest.raises(workdir_lib.IncompatibleWorkdirError,
                       match=rf"{path}: .* -> {value!r}.*"
                       r"allow_config_change=true"):
      workdir_lib.check_resume(parsed(**{path: value}), str(tmp_path), True)
  override = parsed(**{"model.emb_dim": 64,
                       "trainer.allow_config_change": True})
  assert "model.emb_dim" in workdir_lib.check_resume(override, str(tmp_path),
                                                     True)


def test_unreadable_config_json_is_named(tmp_path):
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(workdir_lib.IncompatibleWorkdirError,
                     match="config.json cannot be read"):
    workdir_lib.check_resume(parsed(), str(tmp_path), True)


def test_config_history_appends(tmp_path):
  workdir_lib.record_config(parsed(), str(tmp_path), 0)
  workdir_lib.record_config(parsed(**{"trainer.steps": 40}), str(tmp_path),
                            20)
  history = [json.loads(line) for line in
             (tmp_path / "config_history.jsonl").read_text().splitlines()]
  assert [h["start_step"] for h in history] == [0, 20]
  assert history[1]["config"]["trainer"]["steps"] == 40
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved == parsed(**{"trainer.steps": 40}).to_dict()


def test_truncate_metrics_drops_records_past_the_checkpoint(tmp_path):
  records = [{"step": s, "split": "train", "loss": 1.0} for s in (3, 6, 9)]
  records.append({"step": 6, "split": "eval", "loss": 2.0})
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in records))
  assert workdir_lib.truncate_metrics(str(tmp_path), 6) == 1
  kept = workdir_lib.read_metrics(str(tmp_path))
  assert [(r["step"], r["split"]) for r in kept] == [
      (3, "train"), (6, "train"), (6, "eval")]
  assert workdir_lib.truncate_metrics(str(tmp_path), 6) == 0
  assert workdir_lib.logged_steps(kept, "eval") == {6}
