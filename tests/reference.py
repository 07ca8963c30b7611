"""Brute-force float64 numpy references for the attention tests."""

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
