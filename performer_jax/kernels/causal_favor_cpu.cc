// Causal FAVOR+ core for XLA:CPU, forward and backward, as XLA FFI handlers.
//
// Why a kernel: on XLA:CPU the chunked causal algorithm runs as hundreds of
// small batched dots and elementwise passes over [L/C, F, E] chunk states
// that never stay in cache (scripts/causal_breakdown.py). Here one thread
// walks one (batch, head) sequence chunk by chunk and keeps the running
// state S = sum_j phi(k_j) v_j^T ([F, E], 64 KiB at F=256, E=64) in L2, so
// the causal pass costs about what the bidirectional one does.
//
// Inputs (float32, row-major, G = batch * heads flattened, leading):
//   qf  [G, L, F]  query features (any positive per-query factor cancels)
//   kf  [G, L, F]  key features relative to the running max M_j (<= 1 for
//                  the exponential kernels), zero for padded keys
//   m   [G, L]     M_j: running max of key log-amplitudes over keys <= j
//                  (all zeros for kernels without amplitudes)
//   v   [G, L, E]  values
// Math for query i (pair weights w_ij = exp(min(M_j - M_i, 0)) <= 1):
//   num_i = sum_{j<=i} w_ij (qf_i . kf_j) v_j,  den_i = sum_{j<=i} w_ij qf_i . kf_j
//   out_i = num_i / max(den_i, floor)
// No future key enters position i: M_i looks only at keys <= i, and every
// product above runs over j <= i.
// Chunks of C tokens: inside a chunk the masked C x C product; across chunks
// the carried state S_n (relative to E_n = M at the end of chunk n), decayed
// by exp(min(E_{n-1} - E_n, 0)) and read by query i with exp(min(E_{n-1} - M_i, 0)).
//
// Backward (r_i = g_i / den_i, rd_i = -(g_i . out_i) / den_i, 0 when floored):
//   one reverse sweep over chunks; from the stored state S entering the
//   chunk, dqf_i = f_i (S r_i + z rd_i); it carries
//   U = sum_{later i} (weight) qf_i r_i^T ([F, E]) and u ([F]) and adds the
//   intra-chunk terms B = W .* (R V^T + rd 1^T):  dqf += B K,
//   dkf = B^T Q + t (V U^T + 1 u^T), dv = A^T R + t K U,
//   t_j = exp(min(M_j - E_n, 0)), A = W .* (Q K^T) the stored scores.
// The forward pass of a VJP stores the state entering each chunk ([N, F, E],
// [N, F]) and the scores ([L, C]) for it; a prompt's prefill takes the state
// after the last token ([F, E], [F], relative to M at that token).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include <Eigen/Core>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic,
                             Eigen::RowMajor>;
using CMap = Eigen::Map<const RowMat>;
using MMap = Eigen::Map<RowMat>;
using Vec = Eigen::VectorXf;
using CVecMap = Eigen::Map<const Vec>;
using VecMap = Eigen::Map<Vec>;

// Same floor as feature_maps.POSITIVE_FLOOR.
constexpr float kFloor = 1e-30f;

struct Dims {
  int64_t g, l, f, e, c;
};

inline float Weight(float from, float to) {
  return std::exp(std::min(from - to, 0.0f));
}

// W_ij = exp(min(M_j - M_i, 0)) for j <= i, else 0, into the c x c corner.
// M is non-decreasing along a sequence, so once the running max has settled
// a chunk has one M and W is the plain causal mask: no exp needed.
void PairWeights(const float* m, int64_t c, RowMat& w) {
  auto wc = w.topLeftCorner(c, c);
  if (*std::min_element(m, m + c) == *std::max_element(m, m + c)) {
    wc.setZero();
    wc.triangularView<Eigen::Lower>().setOnes();
    return;
  }
  Eigen::Map<const Eigen::RowVectorXf> m_row(m, c);
  for (int64_t i = 0; i < c; ++i) {
    wc.row(i).head(i + 1) =
        (m_row.head(i + 1).array() - m[i]).min(0.0f).exp().matrix();
    wc.row(i).tail(c - i - 1).setZero();
  }
}

// Residuals for the backward pass (null when not needed): states/zstates
// [N, F, E] and [N, F], the state entering each chunk, and scores [L, C],
// the weighted intra-chunk products W .* (Q K^T) row by row.
struct Residuals {
  float* states;
  float* zstates;
  float* scores;
};

// The state after the last token (null when not needed): final_s [F, E] and
// final_z [F], relative to M at the last token. A prompt's prefill continues
// decoding from it.
struct FinalState {
  float* s;
  float* z;
};

void ForwardOne(const float* q, const float* k, const float* m, const float* v,
                float* out, float* den, Residuals res, FinalState fin,
                const Dims& d) {
  RowMat s = RowMat::Zero(d.f, d.e);
  Vec z = Vec::Zero(d.f);
  RowMat a(d.c, d.c), w(d.c, d.c), num(d.c, d.e), vt(d.c, d.e);
  Vec from_prev(d.c), t(d.c), dn(d.c);
  float e_prev = 0.0f;
  for (int64_t start = 0; start < d.l; start += d.c) {
    const int64_t c = std::min(d.c, d.l - start);
    CMap qc(q + start * d.f, c, d.f), kc(k + start * d.f, c, d.f);
    CMap vc(v + start * d.e, c, d.e);
    const float* mc = m + start;
    const float e_end = mc[c - 1];
    if (res.states != nullptr) {
      const int64_t n = start / d.c;
      MMap(res.states + n * d.f * d.e, d.f, d.e) = s;
      VecMap(res.zstates + n * d.f, d.f) = z;
    }
    auto ac = a.topLeftCorner(c, c);
    auto wc = w.topLeftCorner(c, c);
    PairWeights(mc, c, w);
    ac.noalias() = qc * kc.transpose();
    ac.array() *= wc.array();
    if (res.scores != nullptr) {
      MMap(res.scores + start * d.c, c, d.c).leftCols(c) = ac;
    }
    for (int64_t i = 0; i < c; ++i) from_prev(i) = Weight(e_prev, mc[i]);
    auto nc = num.topRows(c);
    nc.noalias() = ac * vc;
    nc.noalias() += from_prev.head(c).asDiagonal() * (qc * s);
    dn.head(c) = ac.rowwise().sum();
    dn.head(c).array() += from_prev.head(c).array() * (qc * z).array();
    MMap oc(out + start * d.e, c, d.e);
    for (int64_t i = 0; i < c; ++i) {
      den[start + i] = dn(i);
      oc.row(i) = nc.row(i) / std::max(dn(i), kFloor);
    }
    for (int64_t j = 0; j < c; ++j) t(j) = Weight(mc[j], e_end);
    const float decay = Weight(e_prev, e_end);
    vt.topRows(c) = t.head(c).asDiagonal() * vc;
    s *= decay;
    s.noalias() += kc.transpose() * vt.topRows(c);
    z = decay * z + kc.transpose() * t.head(c);
    e_prev = e_end;
  }
  if (fin.s != nullptr) {
    MMap(fin.s, d.f, d.e) = s;
    VecMap(fin.z, d.f) = z;
  }
}

// r = g / den and rd = -(g . out) / den (0 where den was floored).
void Cotangents(const float* g, const float* out, const float* den,
                int64_t c, int64_t e, RowMat& r, Vec& rd) {
  CMap gc(g, c, e), oc(out, c, e);
  for (int64_t i = 0; i < c; ++i) {
    const float dv = std::max(den[i], kFloor);
    r.row(i) = gc.row(i) / dv;
    rd(i) = den[i] > kFloor ? -gc.row(i).dot(oc.row(i)) / dv : 0.0f;
  }
}

void BackwardOne(const float* q, const float* k, const float* m,
                 const float* v, const float* out, const float* den,
                 const float* g, const float* states, const float* zstates,
                 const float* scores, float* dq, float* dk, float* dv,
                 const Dims& d) {
  RowMat r(d.c, d.e), vt(d.c, d.e), tmp(d.c, d.f);
  RowMat w(d.c, d.c), b(d.c, d.c);
  Vec rd(d.c), fp(d.c), t(d.c);
  const int64_t n_chunks = (d.l + d.c - 1) / d.c;
  // One reverse sweep; U, u hold the later chunks' queries.
  RowMat u_mat = RowMat::Zero(d.f, d.e);
  Vec u_vec = Vec::Zero(d.f);
  for (int64_t n = n_chunks - 1; n >= 0; --n) {
    const int64_t start = n * d.c;
    const int64_t c = std::min(d.c, d.l - start);
    CMap qc(q + start * d.f, c, d.f), kc(k + start * d.f, c, d.f);
    CMap vc(v + start * d.e, c, d.e);
    const float* mc = m + start;
    const float e_end = mc[c - 1];
    const float e_prev = n > 0 ? m[start - 1] : 0.0f;
    Cotangents(g + start * d.e, out + start * d.e, den + start, c, d.e, r,
               rd);
    auto rc = r.topRows(c);
    auto wc = w.topLeftCorner(c, c);
    auto bc = b.topLeftCorner(c, c);
    PairWeights(mc, c, w);
    auto ac = CMap(scores + start * d.c, c, d.c).leftCols(c);
    bc.noalias() = rc * vc.transpose();
    bc.colwise() += rd.head(c);
    bc.array() *= wc.array();
    MMap dqc(dq + start * d.f, c, d.f), dkc(dk + start * d.f, c, d.f);
    MMap dvc(dv + start * d.e, c, d.e);
    for (int64_t i = 0; i < c; ++i) fp(i) = Weight(e_prev, mc[i]);
    CMap s_in(states + n * d.f * d.e, d.f, d.e);
    CVecMap z_in(zstates + n * d.f, d.f);
    dqc.noalias() = rc * s_in.transpose();
    dqc += rd.head(c) * z_in.transpose();
    dqc = fp.head(c).asDiagonal() * dqc;
    dqc.noalias() += bc * kc;
    for (int64_t j = 0; j < c; ++j) t(j) = Weight(mc[j], e_end);
    // Inter terms first, scaled by t_j, then the intra terms added.
    tmp.topRows(c).noalias() = vc * u_mat.transpose();
    tmp.topRows(c).rowwise() += u_vec.transpose();
    dkc = t.head(c).asDiagonal() * tmp.topRows(c);
    dkc.noalias() += bc.transpose() * qc;
    dvc.noalias() = kc * u_mat;
    dvc = t.head(c).asDiagonal() * dvc;
    dvc.noalias() += ac.transpose() * rc;
    const float decay = Weight(e_prev, e_end);
    vt.topRows(c) = fp.head(c).asDiagonal() * rc;
    u_mat *= decay;
    u_mat.noalias() += qc.transpose() * vt.topRows(c);
    u_vec = decay * u_vec +
            qc.transpose() * (fp.head(c).array() * rd.head(c).array()).matrix();
  }
}

// Runs fn(0..n-1) on the caller and XLA's intra-op pool. Items are claimed
// from a shared counter, so the caller finishes everything itself if the pool
// is busy; the state is shared_ptr-owned because a late pool task may start
// after the caller has returned.
template <typename Fn>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, Fn fn) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n, fn]() {
    int64_t i;
    while ((i = state->next.fetch_add(1)) < n) {
      fn(i);
      if (state->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == n; });
}

// Leading dimensions (batch, heads, vmapped axes) are flattened into G.
ffi::Error CheckShapes(const ffi::Buffer<ffi::F32>& q,
                       const ffi::Buffer<ffi::F32>& k,
                       const ffi::Buffer<ffi::F32>& m,
                       const ffi::Buffer<ffi::F32>& v, int64_t chunk,
                       Dims* d) {
  auto qd = q.dimensions();
  auto kd = k.dimensions();
  auto md = m.dimensions();
  auto vd = v.dimensions();
  const size_t rank = qd.size();
  bool ok = rank >= 3 && kd.size() == rank && vd.size() == rank &&
            md.size() == rank - 1;
  int64_t g = 1;
  for (size_t i = 0; ok && i + 1 < rank; ++i) {
    ok = kd[i] == qd[i] && vd[i] == qd[i] && md[i] == qd[i];
    if (i + 2 < rank) g *= qd[i];
  }
  if (!ok || kd[rank - 1] != qd[rank - 1]) {
    return ffi::Error::InvalidArgument(
        "causal_favor_cpu: expected qf, kf [..., L, F], m [..., L] and "
        "v [..., L, E] with the same leading dimensions");
  }
  if (chunk <= 0) {
    return ffi::Error::InvalidArgument("causal_favor_cpu: chunk must be > 0");
  }
  const int64_t l = qd[rank - 2];
  *d = Dims{g, l, qd[rank - 1], vd[rank - 1], std::min<int64_t>(chunk, l)};
  return ffi::Error::Success();
}

// The residuals' sizes: states [..., N, F, E], zstates [..., N, F] and
// scores [..., L, C] (the leading sizes were checked on the inputs).
ffi::Error CheckResiduals(const Dims& d, size_t s_size, size_t z_size,
                          size_t a_size) {
  const int64_t n = (d.l + d.c - 1) / d.c;
  if (s_size != static_cast<size_t>(d.g * n * d.f * d.e) ||
      z_size != static_cast<size_t>(d.g * n * d.f) ||
      a_size != static_cast<size_t>(d.g * d.l * d.c)) {
    return ffi::Error::InvalidArgument(
        "causal_favor_cpu: residuals must be [..., L/C, F, E], [..., L/C, F] "
        "and [..., L, C]");
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool& pool, const ffi::Buffer<ffi::F32>& q,
                   const ffi::Buffer<ffi::F32>& k,
                   const ffi::Buffer<ffi::F32>& m,
                   const ffi::Buffer<ffi::F32>& v, int64_t chunk, float* op,
                   float* dp, Residuals res, FinalState fin) {
  Dims d;
  if (auto err = CheckShapes(q, k, m, v, chunk, &d); err.failure()) return err;
  if (d.l == 0 || d.g == 0) return ffi::Error::Success();
  const int64_t n = (d.l + d.c - 1) / d.c;
  const float *qp = q.typed_data(), *kp = k.typed_data();
  const float *mp = m.typed_data(), *vp = v.typed_data();
  ParallelFor(pool, d.g, [=](int64_t g) {
    ForwardOne(qp + g * d.l * d.f, kp + g * d.l * d.f, mp + g * d.l,
               vp + g * d.l * d.e, op + g * d.l * d.e, dp + g * d.l,
               res.states == nullptr
                   ? res
                   : Residuals{res.states + g * n * d.f * d.e,
                               res.zstates + g * n * d.f,
                               res.scores + g * d.l * d.c},
               fin.s == nullptr
                   ? fin
                   : FinalState{fin.s + g * d.f * d.e, fin.z + g * d.f},
               d);
  });
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                       ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> m,
                       ffi::Buffer<ffi::F32> v, int64_t chunk,
                       ffi::ResultBuffer<ffi::F32> out,
                       ffi::ResultBuffer<ffi::F32> den) {
  return Forward(pool, q, k, m, v, chunk, out->typed_data(),
                 den->typed_data(), Residuals{nullptr, nullptr, nullptr},
                 FinalState{nullptr, nullptr});
}

// A prefill's forward pass: also returns the state after the last token.
ffi::Error ForwardStateImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                            ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> m,
                            ffi::Buffer<ffi::F32> v, int64_t chunk,
                            ffi::ResultBuffer<ffi::F32> out,
                            ffi::ResultBuffer<ffi::F32> den,
                            ffi::ResultBuffer<ffi::F32> final_s,
                            ffi::ResultBuffer<ffi::F32> final_z) {
  Dims d;
  if (auto err = CheckShapes(q, k, m, v, chunk, &d); err.failure()) return err;
  if (final_s->element_count() != static_cast<size_t>(d.g * d.f * d.e) ||
      final_z->element_count() != static_cast<size_t>(d.g * d.f)) {
    return ffi::Error::InvalidArgument(
        "causal_favor_cpu: the final state must be [..., F, E] and [..., F]");
  }
  if (d.l == 0) {
    // No token: the empty state.
    std::fill_n(final_s->typed_data(), final_s->element_count(), 0.0f);
    std::fill_n(final_z->typed_data(), final_z->element_count(), 0.0f);
  }
  return Forward(pool, q, k, m, v, chunk, out->typed_data(),
                 den->typed_data(), Residuals{nullptr, nullptr, nullptr},
                 FinalState{final_s->typed_data(), final_z->typed_data()});
}

// The forward pass of a VJP: also returns the state entering every chunk.
ffi::Error ForwardResImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                          ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> m,
                          ffi::Buffer<ffi::F32> v, int64_t chunk,
                          ffi::ResultBuffer<ffi::F32> out,
                          ffi::ResultBuffer<ffi::F32> den,
                          ffi::ResultBuffer<ffi::F32> states,
                          ffi::ResultBuffer<ffi::F32> zstates,
                          ffi::ResultBuffer<ffi::F32> scores) {
  Dims d;
  if (auto err = CheckShapes(q, k, m, v, chunk, &d); err.failure()) return err;
  if (auto err = CheckResiduals(d, states->element_count(),
                                zstates->element_count(),
                                scores->element_count());
      err.failure()) {
    return err;
  }
  return Forward(pool, q, k, m, v, chunk, out->typed_data(),
                 den->typed_data(),
                 Residuals{states->typed_data(), zstates->typed_data(),
                           scores->typed_data()},
                 FinalState{nullptr, nullptr});
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                        ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> m,
                        ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> out,
                        ffi::Buffer<ffi::F32> den,
                        ffi::Buffer<ffi::F32> states,
                        ffi::Buffer<ffi::F32> zstates,
                        ffi::Buffer<ffi::F32> scores,
                        ffi::Buffer<ffi::F32> g, int64_t chunk,
                        ffi::ResultBuffer<ffi::F32> dq,
                        ffi::ResultBuffer<ffi::F32> dk,
                        ffi::ResultBuffer<ffi::F32> dv) {
  Dims d;
  if (auto err = CheckShapes(q, k, m, v, chunk, &d); err.failure()) return err;
  if (auto err = CheckResiduals(d, states.element_count(),
                                zstates.element_count(),
                                scores.element_count());
      err.failure()) {
    return err;
  }
  if (d.l == 0 || d.g == 0) return ffi::Error::Success();
  const int64_t n = (d.l + d.c - 1) / d.c;
  const float *qp = q.typed_data(), *kp = k.typed_data();
  const float *mp = m.typed_data(), *vp = v.typed_data();
  const float *op = out.typed_data(), *np = den.typed_data();
  const float *sp = states.typed_data(), *zp = zstates.typed_data();
  const float* ap = scores.typed_data();
  const float* gp = g.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data();
  float* dvp = dv->typed_data();
  ParallelFor(pool, d.g, [=](int64_t i) {
    const int64_t lf = i * d.l * d.f, le = i * d.l * d.e, l1 = i * d.l;
    BackwardOne(qp + lf, kp + lf, mp + l1, vp + le, op + le, np + l1, gp + le,
                sp + i * n * d.f * d.e, zp + i * n * d.f, ap + l1 * d.c,
                dqp + lf, dkp + lf, dvp + le, d);
  });
  return ffi::Error::Success();
}

}  // namespace

using F32Buffer = ffi::Buffer<ffi::F32>;

// The forward handlers' arguments: pool, qf, kf, m, v and the chunk size.
// (A macro: a binding under construction cannot be copied or moved.)
#define PERFORMER_FORWARD_ARGS                                              \
  ffi::Ffi::Bind()                                                          \
      .Ctx<ffi::ThreadPool>()                                               \
      .Arg<F32Buffer>()                                                     \
      .Arg<F32Buffer>()                                                     \
      .Arg<F32Buffer>()                                                     \
      .Arg<F32Buffer>()                                                     \
      .Attr<int64_t>("chunk")

// out, den.
XLA_FFI_DEFINE_HANDLER_SYMBOL(PerformerCausalFavorFwd, ForwardImpl,
                              PERFORMER_FORWARD_ARGS.Ret<F32Buffer>()
                                  .Ret<F32Buffer>());

// out, den, final_s, final_z.
XLA_FFI_DEFINE_HANDLER_SYMBOL(PerformerCausalFavorFwdState, ForwardStateImpl,
                              PERFORMER_FORWARD_ARGS.Ret<F32Buffer>()
                                  .Ret<F32Buffer>()
                                  .Ret<F32Buffer>()
                                  .Ret<F32Buffer>());

// out, den, states, zstates, scores.
XLA_FFI_DEFINE_HANDLER_SYMBOL(PerformerCausalFavorFwdRes, ForwardResImpl,
                              PERFORMER_FORWARD_ARGS.Ret<F32Buffer>()
                                  .Ret<F32Buffer>()
                                  .Ret<F32Buffer>()
                                  .Ret<F32Buffer>()
                                  .Ret<F32Buffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(PerformerCausalFavorBwd, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32Buffer>()
                                  .Arg<F32Buffer>()
                                  .Arg<F32Buffer>()
                                  .Arg<F32Buffer>()
                                  .Arg<F32Buffer>()
                                  .Arg<F32Buffer>()
                                  .Arg<F32Buffer>()
                                  .Arg<F32Buffer>()
                                  .Arg<F32Buffer>()
                                  .Arg<F32Buffer>()
                                  .Attr<int64_t>("chunk")
                                  .Ret<F32Buffer>()
                                  .Ret<F32Buffer>()
                                  .Ret<F32Buffer>());
