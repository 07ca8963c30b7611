"""Brute-force float64 numpy references: attention, and the trainer's loss
and metrics."""

import numpy as np


def visibility(q_len, kv_len, key_mask, causal, keep_self=False):
  """bool [B, 1, Lq, Lk] of which keys each query sees."""
  b = 1 if key_mask is None else key_mask.shape[0]
  vis = np.ones((b, 1, q_len, kv_len), bool)
  offset = kv_len - q_len
  pos_q = np.arange(q_len)[:, None] + offset
  pos_k = np.arange(kv_len)[None, :]
  if causal:
    vis &= pos_k <= pos_q
  if key_mask is not None:
    vis &= np.asarray(key_mask)[:, None, None, :]
  if keep_self:
    vis |= pos_k == pos_q
  return vis


def softmax_attention(q, k, v, causal=False, key_mask=None, l2=False,
                      keep_self=None):
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  d = q.shape[-1]
  if l2:
    diff = q[:, :, None, :, :] - k[:, None, :, :, :]       # [B,Lq,Lk,H,D]
    logits = -np.einsum("bqkhd,bqkhd->bhqk", diff, diff) / np.sqrt(d)
  else:
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d)
  vis = visibility(q.shape[1], k.shape[1], key_mask, causal,
                   keep_self=l2 if keep_self is None else keep_self)
  logits = np.where(vis, logits, -np.inf)
  mx = np.max(logits, axis=-1, keepdims=True)
  w = np.where(vis, np.exp(logits - np.where(np.isfinite(mx), mx, 0)), 0)
  den = w.sum(-1, keepdims=True)
  w = w / np.where(den > 0, den, 1)
  return np.einsum("bhqk,bkhd->bqhd", w, v)


def positive_features(x, proj):
  x = np.asarray(x, np.float64)
  proj = np.asarray(proj, np.float64)
  return np.exp(x @ proj.T - 0.5 * np.sum(x * x, -1, keepdims=True))


def favor_from_features(qf, kf, v, causal=False, key_mask=None):
  """D^-1 A V with A = qf kf^T, masked: the definition FAVOR+ must match."""
  a = np.einsum("blhf,bshf->bhls", qf, kf)
  vis = visibility(qf.shape[1], kf.shape[1], key_mask, causal)
  a = np.where(vis, a, 0.0)
  num = np.einsum("bhls,bshd->blhd", a, np.asarray(v, np.float64))
  den = a.sum(-1).transpose(0, 2, 1)[..., None]
  return num / den


def weighted_metrics(logits, batches, loss_unit="token"):
  """The trainer's metrics over several batches, from the model's logits.

  `logits`: one `[B, L, V]` array per batch; `batches`: dicts with int
  "targets" and float "weights" `[B, L]`. Every position counts with its
  weight, whichever batch it is in (not a mean of per-batch means).
  Returns loss (nats), accuracy, bits_per_<unit> and the sums.
  """
  loss_sum = weight_sum = correct_sum = 0.0
  for z, batch in zip(logits, batches):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    targets = np.asarray(batch["targets"])
    weights = np.asarray(batch["weights"], np.float64)
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    loss_sum += float((nll * weights).sum())
    weight_sum += float(weights.sum())
    correct_sum += float(((z.argmax(-1) == targets) * weights).sum())
  loss = loss_sum / weight_sum
  return {"loss": loss, "accuracy": correct_sum / weight_sum,
          f"bits_per_{loss_unit}": loss / np.log(2.0),
          "loss_sum": loss_sum, "weight_sum": weight_sum,
          "correct_sum": correct_sum}
