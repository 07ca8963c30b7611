"""The config sections: attention, model, optimizer, trainer, mesh,
distributed, and the base of every task's data section.

Each section is a frozen dataclass (schema.Section) that names its fields
once, with defaults, and checks its own values. Rules that span sections
(e.g. `model.max_len >= data.seq_len`) live in `experiment.validate`.
Defaults follow the Performer paper: Adam(0.9, 0.98, 1e-9), peak learning
rate 1e-3 with warmup and cosine decay, clipping at 0.5, weight decay 0.1,
dropout 0.1, 256 random features redrawn every 1000 steps (configs shrink
what a laptop cannot afford).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp

from performer_jax.attention import api
from performer_jax.attention import feature_maps
from performer_jax.attention import random_features
from performer_jax.schemas.base import ConfigError
from performer_jax.schemas.base import Section

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
POSEMB_KINDS = ("learned", "sinusoidal")
NORMS = ("pre", "post")
ACTIVATIONS = ("gelu", "gelu_exact")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("cosine", "rsqrt", "constant")
PROGRESS = ("auto", "tqdm", "log")
INITIALIZE = {"auto": "auto", "true": True, "false": False}


@dataclasses.dataclass(frozen=True)
class AttentionConfig(Section):
  """`model.attention`, and the `config` of both `MultiHeadAttention`s.

  kind: "softmax" (exact), "favor" (FAVOR+) or "l2" (tied, Lipschitz).
  kernel, chunk_size, implementation: as `attention.favor_attention`.
  num_features: random features m; 0 or None with kernel "relu" gives the
    deterministic `relu(x) + eps` features.
  orthogonal, scaling: how projections are drawn
    (`gaussian_orthogonal_random_matrix`).
  redraw_every: the trainer redraws the features every N steps (0: never).
  """
  PATH = "model.attention"
  kind: str = "favor"
  kernel: str | Callable = "softmax"
  num_features: int | None = 256
  orthogonal: bool = True
  scaling: str = "chi"
  chunk_size: int = api.DEFAULT_CHUNK_SIZE
  implementation: str = "auto"
  redraw_every: int = 1000

  def check(self) -> None:
    self._choice("kind", api.ATTENTION_KINDS)
    if not callable(self.kernel):
      self._choice("kernel", tuple(feature_maps.KERNELS))
    self._int("num_features", 0, optional=True)
    if (self.kind == "favor" and not self.num_features
        and self.kernel != "relu" and not callable(self.kernel)):
      raise ConfigError(
          f"{self.key('num_features')} is {self.num_features!r} "
          "(deterministic features), which only kernel='relu' supports; got "
          f"kernel={self.kernel!r}. Set num_features > 0 or kernel='relu'.")
    self._bool("orthogonal")
    self._choice("scaling", random_features.SCALINGS)
    self._int("chunk_size", 1)
    self._choice("implementation", api.IMPLEMENTATIONS)
    self._int("redraw_every", 0)

  @property
  def uses_projection(self) -> bool:
    """True if FAVOR+ draws a `[num_features, head_dim]` projection."""
    if self.kind != "favor":
      return False
    if self.kernel == "relu" or callable(self.kernel):
      return bool(self.num_features)
    return True


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
  """`model`: the Transformer (a small 2-layer, width-128 default).

  dtype is the compute dtype (attention math is float32 whatever it is);
  param_dtype the storage dtype; remat rematerializes each block in the
  backward pass; scan_layers stacks the blocks under `nn.scan`.

  BERT-style options (core/transformer.py; the defaults keep the pre-LN
  model): norm "pre" or "post" (LayerNorm after each residual sum, no final
  LayerNorm); activation "gelu" (tanh approximation) or "gelu_exact" (erf);
  ln_epsilon of every LayerNorm; token_types > 0 adds row 0 of a
  `[token_types, emb_dim]` token-type table to every position;
  embedding_norm LayerNorms the summed embeddings.
  """
  PATH = "model"
  num_layers: int = 2
  num_heads: int = 4
  emb_dim: int = 128
  mlp_dim: int = 256
  dropout_rate: float = 0.1
  max_len: int = 512
  posemb: str = "learned"
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  scan_layers: bool = False
  norm: str = "pre"
  activation: str = "gelu"
  ln_epsilon: float = 1e-6
  token_types: int = 0
  embedding_norm: bool = False
  attention: AttentionConfig = dataclasses.field(
      default_factory=AttentionConfig)

  def check(self) -> None:
    for name in ("num_layers", "num_heads", "emb_dim", "mlp_dim", "max_len"):
      self._int(name, 1)
    if self.emb_dim % self.num_heads:
      raise ConfigError(f"{self.key('emb_dim')} ({self.emb_dim}) must be "
                        f"divisible by {self.key('num_heads')} "
                        f"({self.num_heads})")
    self._number("dropout_rate", 0.0, 1.0)
    self._choice("posemb", POSEMB_KINDS)
    self._choice("dtype", tuple(DTYPES))
    self._choice("param_dtype", tuple(DTYPES))
    self._bool("remat")
    self._bool("scan_layers")
    self._choice("norm", NORMS)
    self._choice("activation", ACTIVATIONS)
    self._number("ln_epsilon", 0.0, low_open=True)
    self._int("token_types", 0)
    self._bool("embedding_norm")
    if not isinstance(self.attention, AttentionConfig):
      self._fail("attention", "an AttentionConfig section")

  @property
  def compute_dtype(self) -> Any:
    return DTYPES[self.dtype]

  @property
  def storage_dtype(self) -> Any:
    return DTYPES[self.param_dtype]


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Section):
  """`optimizer`: Adam or AdamW with warmup and a decay schedule.

  adam adds weight decay to the gradient (L2); adamw decouples it. schedule:
  "cosine" (to final_lr_fraction * peak), "rsqrt" or "constant" after a
  linear warmup. grad_clip_norm 0 disables clipping.
  """
  PATH = "optimizer"
  name: str = "adamw"
  learning_rate: float = 1e-3
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-9
  weight_decay: float = 0.1
  grad_clip_norm: float = 0.5
  schedule: str = "cosine"
  warmup_steps: int = 1000
  final_lr_fraction: float = 0.0

  def check(self) -> None:
    self._choice("name", OPTIMIZERS)
    self._choice("schedule", SCHEDULES)
    self._number("learning_rate", 0.0, low_open=True)
    self._number("b1", 0.0, 1.0)
    self._number("b2", 0.0, 1.0)
    self._number("eps", 0.0)
    self._number("weight_decay", 0.0)
    self._number("grad_clip_norm", 0.0)
    self._int("warmup_steps", 0)
    self._number("final_lr_fraction", 0.0, 1.0, high_open=False)


@dataclasses.dataclass(frozen=True)
class TrainerConfig(Section):
  """`trainer`: the loop. eval_every / checkpoint_every 0: only at the end;
  eval_batches 0: the whole eval source (50 batches if it is endless);
  microbatches M: each step runs M slices with accumulated gradients (the
  same update, 1/M of the activation memory); progress "auto" shows a bar
  on a terminal and log lines otherwise; allow_config_change lets a run
  continue the checkpoints of a workdir whose config.json differs in task,
  model or data shape (train/workdir.py); prefetch: batches prepared ahead
  in a background thread; init_from: a workdir or exported model whose
  parameters start a fresh run (train/warm_start.py)."""
  PATH = "trainer"
  steps: int = 100_000
  log_every: int = 100
  eval_every: int = 1000
  eval_batches: int = 0
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  microbatches: int = 1
  seed: int = 0
  progress: str = "auto"
  allow_config_change: bool = False
  prefetch: int = 2
  init_from: str = ""

  def check(self) -> None:
    self._int("steps", 1)
    self._int("log_every", 1)
    for name in ("eval_every", "eval_batches", "checkpoint_every", "seed"):
      self._int(name, 0)
    self._int("keep_checkpoints", 1)
    self._int("microbatches", 1)
    self._choice("progress", PROGRESS)
    self._bool("allow_config_change")
    self._int("prefetch", 0)
    self._str("init_from")


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
  """`mesh`: the ("data", "seq", "model") device mesh; -1 takes all
  remaining devices (at most one axis). "seq" shards each sequence (the
  attention layers then run sequence-parallel); sequence and model
  parallelism stay inside a process."""
  PATH = "mesh"
  data: int = -1
  seq: int = 1
  model: int = 1

  AXES = ("data", "seq", "model")

  def check(self) -> None:
    for name in self.AXES:
      if getattr(self, name) != -1:
        self._int(name, 1)
    if [getattr(self, a) for a in self.AXES].count(-1) > 1:
      raise ConfigError("at most one of config.mesh.data, config.mesh.seq "
                        "and config.mesh.model may be -1 (all remaining "
                        "devices)")


@dataclasses.dataclass(frozen=True)
class DistributedConfig(Section):
  """`distributed`: `jax.distributed.initialize` for multi-process jobs.

  initialize: "auto" starts it when the environment describes a
  multi-process job (JAX_COORDINATOR_ADDRESS, SLURM, Open MPI, multi-host
  TPU) or a coordinator_address is set; "true"/"false" force it (strings, so
  that `--config.distributed.initialize=true` works on the command line).
  """
  PATH = "distributed"
  initialize: str | bool = "auto"
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None

  def check(self) -> None:
    self.mode  # pylint: disable=pointless-statement
    if self.coordinator_address is not None and not isinstance(
        self.coordinator_address, str):
      self._fail("coordinator_address", "'host:port'")
    self._int("num_processes", 1, optional=True)
    self._int("process_id", 0, optional=True)
    if (self.process_id is not None and self.num_processes is not None
        and self.process_id >= self.num_processes):
      raise ConfigError(f"{self.key('process_id')} ({self.process_id}) must "
                        f"be < {self.key('num_processes')} "
                        f"({self.num_processes})")

  @property
  def mode(self) -> bool | str:
    """True, False or "auto"."""
    value = self.initialize
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in INITIALIZE:
      return INITIALIZE[value.lower()]
    raise ConfigError(f"{self.key('initialize')} must be 'auto', True or "
                      f"False, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
  """`data`: what every task reads; tasks subclass it with their own keys.

  batch_size is global (split over processes and the "data" mesh axis);
  seed drives shuffling, crops and masking. verify: recompute the SHA-256
  of every shard of the prepared datasets the task opens, before training
  (`performer-data verify`, data/verify.py); off by default, since opening
  a dataset and reading each record already check sizes and offsets.
  """
  PATH = "data"
  batch_size: int = 32
  seq_len: int = 128
  seed: int = 0
  verify: bool = False

  def check(self) -> None:
    self._int("batch_size", 1)
    self._int("seq_len", 1)
    self._int("seed", 0)
    self._bool("verify")
