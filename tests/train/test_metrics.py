"""Metric files and progress output."""

import logging
import os

import pytest

from performer_jax.train import metrics as metrics_lib


def test_writer_writes_jsonl_and_tensorboard(tmp_path):
  writer = metrics_lib.MetricsWriter(str(tmp_path))
  writer.write(10, "train", {"loss": 1.25, "accuracy": 0.5})
  writer.write(20, "eval", {"loss": float("nan")})
  writer.close()
  records = metrics_lib.read_metrics(str(tmp_path))
  assert records == [{"step": 10, "split": "train", "loss": 1.25,
                      "accuracy": 0.5},
                     {"step": 20, "split": "eval", "loss": "nan"}]
  events = os.listdir(tmp_path / "tb")
  assert len(events) == 1 and events[0].startswith("events.out.tfevents")
  assert os.path.getsize(tmp_path / "tb" / events[0]) > 0
  # Appends on resume instead of truncating.
  writer = metrics_lib.MetricsWriter(str(tmp_path))
  writer.write(30, "train", {"loss": 1.0})
  writer.close()
  assert len(metrics_lib.read_metrics(str(tmp_path))) == 3


def test_disabled_writer_writes_nothing(tmp_path):
  writer = metrics_lib.MetricsWriter(str(tmp_path / "w"), enabled=False)
  writer.write(1, "train", {"loss": 1.0})
  writer.close()
  assert not os.path.exists(tmp_path / "w")


def test_progress_logs_plain_lines_when_not_a_terminal(caplog):
  progress = metrics_lib.Progress(100, 0, mode="log")
  with caplog.at_level(logging.INFO, logger="performer_jax.train"):
    progress.update(10, {"loss": 2.5, "tokens_per_sec": 1000.0})
  progress.close()
  assert "step 10: loss=2.5 tokens_per_sec=1000" in caplog.text


def test_progress_bar_in_tqdm_mode(capsys):
  progress = metrics_lib.Progress(20, 5, mode="tqdm")
  progress.update(10, {"loss": 2.5, "tokens_per_sec": 1000.0})
  progress.message("hello")
  progress.close()
  captured = capsys.readouterr()
  assert "10/20" in captured.err and "loss=2.5000" in captured.err
  assert "tok_s=1000" in captured.err
  assert "hello" in captured.out + captured.err
