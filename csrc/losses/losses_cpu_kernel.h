// The CPU loop of the fused GAN losses, compiled once per CPU capability (as ATen's kernels are):
// losses_cpu_default.cpp builds it for any x86-64 (or other) CPU, losses_cpu_avx2.cpp for AVX2 + FMA,
// and losses_cpu.cpp picks one at run time. Each includer defines CPU_CAPABILITY first, so that this
// code and at::vec::Vectorized live in a namespace of their own per capability (no ODR clash).
//
// One pass over the logits writes the gradient and accumulates loss, statistic and correct-count
// sums. SIMD over at::vec::Vectorized (exp is vectorised there; log1p is not, hence log1p_small in
// loss_math.h); threads over fixed-size blocks whose partial sums are added in block order, so the
// results do not depend on the thread count.
//
// Only raw pointers cross this boundary: no at::Tensor inline code is emitted with AVX2 instructions.
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY (DEFAULT or AVX2) before including losses_cpu_kernel.h"
#endif

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

#include "losses/losses_cpu_sums.h"

namespace gansvc {
namespace losses {
namespace CPU_CAPABILITY {
namespace {

template <typename Scalar>
struct VecMath {
  using T = Scalar;
  using V = at::vec::Vectorized<Scalar>;
  using Mask = V;  // comparisons give all-ones lanes
  static V splat(T x) { return V(x); }
  static V exp(V x) { return x.exp(); }
  static V log(V x) { return x.log(); }
  static V abs(V x) { return x.abs(); }
  static V max(V a, V b) { return at::vec::maximum(a, b); }  // propagates NaN
  static V select(Mask m, V if_true, V if_false) { return V::blendv(if_false, if_true, m); }
  static Mask gt(V a, V b) { return a > b; }
  static Mask lt(V a, V b) { return a < b; }
  static Mask ge(V a, V b) { return a >= b; }
  static Mask eq(V a, V b) { return a == b; }
  static V ones_where(Mask m) { return m & V(T(1)); }
};

constexpr int kFlushEvery = 32;  // vectors summed in T before moving into double

template <typename T>
double horizontal_sum(const at::vec::Vectorized<T>& v) {
  alignas(64) T lanes[at::vec::Vectorized<T>::size()];
  v.store(lanes);
  double s = 0;
  for (int i = 0; i < at::vec::Vectorized<T>::size(); ++i) s += lanes[i];
  return s;
}

// Runs `term(x) -> {loss, grad, stat[, correct]}` over n logits: writes grad * scale, returns sums.
// TermV / TermS are the same formula instantiated with the SIMD and the scalar math policy.
template <typename T, bool kHasCorrect, typename TermV, typename TermS>
Sums run_side(const T* logits, T* grad, int64_t n, T scale, const TermV& term_v, const TermS& term_s) {
  using Vec = at::vec::Vectorized<T>;
  const int64_t num_blocks = (n + kSumBlock - 1) / kSumBlock;
  auto run_block = [&](int64_t b) {
    const int64_t begin = b * kSumBlock, end = std::min(n, begin + kSumBlock);
    Sums sums;
    Vec acc_loss(T(0)), acc_stat(T(0)), acc_correct(T(0));
    const Vec vscale(scale);
    int64_t i = begin;
    int pending = 0;
    for (; i + Vec::size() <= end; i += Vec::size()) {
      auto t = term_v(Vec::loadu(logits + i));
      (t.grad * vscale).store(grad + i);
      acc_loss += t.loss;
      acc_stat += t.stat;
      if constexpr (kHasCorrect) acc_correct += t.correct;
      if (++pending == kFlushEvery) {
        sums.loss += horizontal_sum(acc_loss);
        sums.stat += horizontal_sum(acc_stat);
        if constexpr (kHasCorrect) sums.correct += horizontal_sum(acc_correct);
        acc_loss = acc_stat = acc_correct = Vec(T(0));
        pending = 0;
      }
    }
    sums.loss += horizontal_sum(acc_loss);
    sums.stat += horizontal_sum(acc_stat);
    if constexpr (kHasCorrect) sums.correct += horizontal_sum(acc_correct);
    for (; i < end; ++i) {
      auto t = term_s(logits[i]);
      grad[i] = t.grad * scale;
      sums.loss += t.loss;
      sums.stat += t.stat;
      if constexpr (kHasCorrect) sums.correct += t.correct;
    }
    return sums;
  };
  // One block (every call up to kSumBlock logits): no partial-sum vector, no thread pool round trip.
  if (num_blocks == 1) return run_block(0);
  std::vector<Sums> partial(num_blocks);
  if (at::get_num_threads() == 1 || at::in_parallel_region()) {
    // The blocks and the order of their sums are the same as in parallel, so the result is too.
    Sums total;
    for (int64_t b = 0; b < num_blocks; ++b) total.add(run_block(b));
    return total;
  } else {
    at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
      for (int64_t b = block_begin; b < block_end; ++b) partial[b] = run_block(b);
    });
  }
  Sums total;
  for (const auto& p : partial) total.add(p);
  return total;
}

template <typename T, DKind K, bool kIsReal>
Sums d_side(const T* logits, T* grad, int64_t n, T real_label) {
  auto term_v = [real_label](at::vec::Vectorized<T> s) { return d_term<VecMath<T>>(K, kIsReal, s, real_label); };
  auto term_s = [real_label](T s) { return d_term<ScalarMath<T>>(K, kIsReal, s, real_label); };
  return run_side<T, true>(logits, grad, n, T(1) / T(n), term_v, term_s);
}

template <typename T, DKind K>
DSums d_both(const DArgs<T>& a) {
  const auto label = static_cast<T>(a.real_label);
  return {d_side<T, K, true>(a.real, a.grad_real, a.n_real, label),
          d_side<T, K, false>(a.fake, a.grad_fake, a.n_fake, label)};
}

template <typename T, GKind K>
Sums g_side(const T* logits, T* grad, int64_t n) {
  auto term_v = [](at::vec::Vectorized<T> s) { return g_term<VecMath<T>>(K, s); };
  auto term_s = [](T s) { return g_term<ScalarMath<T>>(K, s); };
  return run_side<T, false>(logits, grad, n, T(1) / T(n), term_v, term_s);
}

template <typename T>
DSums d_sums_impl(const DArgs<T>& a) {
  switch (a.kind) {
    case DKind::kBce: return d_both<T, DKind::kBce>(a);
    case DKind::kHinge: return d_both<T, DKind::kHinge>(a);
    default: return d_both<T, DKind::kWasserstein>(a);
  }
}

template <typename T>
Sums g_sums_impl(const T* fake, T* grad, int64_t n, GKind kind) {
  switch (kind) {
    case GKind::kNonSaturating: return g_side<T, GKind::kNonSaturating>(fake, grad, n);
    case GKind::kMinimax: return g_side<T, GKind::kMinimax>(fake, grad, n);
    case GKind::kHinge: return g_side<T, GKind::kHinge>(fake, grad, n);
    default: return g_side<T, GKind::kWasserstein>(fake, grad, n);
  }
}

}  // namespace

DSums d_sums(const DArgs<float>& a) { return d_sums_impl(a); }
DSums d_sums(const DArgs<double>& a) { return d_sums_impl(a); }
Sums g_sums(const float* fake, float* grad, int64_t n, GKind kind) { return g_sums_impl(fake, grad, n, kind); }
Sums g_sums(const double* fake, double* grad, int64_t n, GKind kind) { return g_sums_impl(fake, grad, n, kind); }

}  // namespace CPU_CAPABILITY
}  // namespace losses
}  // namespace gansvc
