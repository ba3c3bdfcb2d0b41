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
#include <utility>
#include <vector>

#include "losses/losses_cpu_sums.h"

namespace gansvc {
namespace losses {
namespace CPU_CAPABILITY {
namespace {

// e^x for x <= 0 or NaN, 8 floats, inline (Sleef's exp is a call, and a call in the loop spills every
// live vector register): Cody–Waite reduction x = n ln2 + r, |r| <= ln2/2, and Cephes' degree-6
// polynomial for e^r (about 1 ulp); 2^n is built in the exponent bits. Results below FLT_MIN
// (x < -87.3) flush to 0: the loss terms and gradients they feed are below every tolerance there.
template <typename Vec>
GANSVC_INLINE Vec exp_nonpositive_inline(const Vec& x) {
  return x.exp();
}

#if defined(CPU_CAPABILITY_AVX2)
template <>
GANSVC_INLINE at::vec::Vectorized<float> exp_nonpositive_inline(const at::vec::Vectorized<float>& x_in) {
  // max(lo, x) keeps a NaN x (the second operand is returned when unordered).
  const __m256 x = _mm256_max_ps(_mm256_set1_ps(-88.0f), x_in);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  // 1 + r + r² (c5 + c4 r + c3 r² + c2 r³ + c1 r⁴ + c0 r⁵) by Estrin's scheme (a shorter dependency chain than Horner's).
  const __m256 r2 = _mm256_mul_ps(r, r), r4 = _mm256_mul_ps(r2, r2);
  const __m256 a = _mm256_fmadd_ps(_mm256_set1_ps(1.6666665459e-1f), r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 b = _mm256_fmadd_ps(_mm256_set1_ps(8.3334519073e-3f), r, _mm256_set1_ps(4.1665795894e-2f));
  const __m256 c = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500e-4f), r, _mm256_set1_ps(1.3981999507e-3f));
  const __m256 q = _mm256_fmadd_ps(c, r4, _mm256_fmadd_ps(b, r2, a));
  const __m256 p = _mm256_fmadd_ps(q, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // n in [-127, 0]: biased exponent n + 127 in [0, 127]; 0 gives the factor 0 (the flush above).
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif

template <typename Scalar>
struct VecMath {
  using T = Scalar;
  using V = at::vec::Vectorized<Scalar>;
  using Mask = V;  // comparisons give all-ones lanes
  static GANSVC_INLINE V splat(T x) { return V(x); }
  static GANSVC_INLINE V exp_nonpositive(V x) { return exp_nonpositive_inline(x); }
  static GANSVC_INLINE V log(V x) { return x.log(); }
  static GANSVC_INLINE V abs(V x) { return x.abs(); }
  static GANSVC_INLINE V neg_abs(V x) { return x | V(T(-0.0)); }  // the sign bit set
  static GANSVC_INLINE V max(V a, V b) { return at::vec::maximum(a, b); }  // propagates NaN
  static GANSVC_INLINE V select(Mask m, V if_true, V if_false) { return V::blendv(if_false, if_true, m); }
  static GANSVC_INLINE Mask gt(V a, V b) { return a > b; }
  static GANSVC_INLINE Mask lt(V a, V b) { return a < b; }
  static GANSVC_INLINE Mask ge(V a, V b) { return a >= b; }
  static GANSVC_INLINE Mask eq(V a, V b) { return a == b; }
  static GANSVC_INLINE V ones_where(Mask m) { return m & V(T(1)); }
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

// Runs `term(x) -> {loss, grad, stat[, correct]}` over logits [begin, end): writes grad * scale, returns sums.
// Term is a functor called on a vector (the SIMD math policy) and on a scalar (the scalar policy, for
// the tail): the same formula. A functor with forced-inline calls, not a lambda: GCC left the lambda
// out of line, and its 128-byte result then went through memory on every vector.
template <typename T, bool kHasCorrect, typename Term>
Sums run_block(const T* logits, T* grad, int64_t begin, int64_t end, T scale, const Term& term) {
  using Vec = at::vec::Vectorized<T>;
  Sums sums;
  Vec acc_loss(T(0)), acc_stat(T(0)), acc_correct(T(0));
  const Vec vscale(scale);
  int64_t i = begin;
  int pending = 0;
  for (; i + Vec::size() <= end; i += Vec::size()) {
    auto t = term(Vec::loadu(logits + i));
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
    auto t = term(logits[i]);
    grad[i] = t.grad * scale;
    sums.loss += t.loss;
    sums.stat += t.stat;
    if constexpr (kHasCorrect) sums.correct += t.correct;
  }
  return sums;
}

// One side of a loss: n logits, their gradient buffer and the term that maps one to the other.
template <typename T, bool kHasCorrect, typename Term>
struct Side {
  const T* logits;
  T* grad;
  int64_t n;
  Term term;
  int64_t blocks() const { return (n + kSumBlock - 1) / kSumBlock; }
  Sums run(int64_t b) const {
    const int64_t begin = b * kSumBlock;
    return run_block<T, kHasCorrect>(logits, grad, begin, std::min(n, begin + kSumBlock), T(1) / T(n), term);
  }
};

// Both sides (b may be empty) in fixed blocks of kSumBlock logits, in one parallel region when there
// is enough work for more than one thread (D's real and fake sides share it: one fork and join, not
// two). Each side's block sums are added in block order whatever ran them, so the results do not
// depend on the thread count.
template <typename SideA, typename SideB>
std::pair<Sums, Sums> run_sides(const SideA& a, const SideB& b) {
  const int64_t blocks_a = a.blocks(), blocks_b = b.blocks(), blocks = blocks_a + blocks_b;
  auto run = [&](int64_t k) { return k < blocks_a ? a.run(k) : b.run(k - blocks_a); };
  std::pair<Sums, Sums> total;
  auto add = [&](int64_t k, const Sums& sums) { (k < blocks_a ? total.first : total.second).add(sums); };
  if (a.n + b.n < kParallelMinimum || at::get_num_threads() == 1 || at::in_parallel_region()) {
    for (int64_t k = 0; k < blocks; ++k) add(k, run(k));  // the same blocks, added in the same order
    return total;
  }
  std::vector<Sums> partial(blocks);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) partial[k] = run(k);
  });
  for (int64_t k = 0; k < blocks; ++k) add(k, partial[k]);
  return total;
}

template <typename T, DKind K, bool kIsReal>
struct DSideTerm {
  T real_label;
  GANSVC_INLINE DTerm<VecMath<T>> operator()(at::vec::Vectorized<T> s) const {
    return d_term<VecMath<T>>(K, kIsReal, s, real_label);
  }
  GANSVC_INLINE DTerm<ScalarMath<T>> operator()(T s) const { return d_term<ScalarMath<T>>(K, kIsReal, s, real_label); }
};

template <typename T, DKind K>
DSums d_both(const DArgs<T>& a) {
  const auto label = static_cast<T>(a.real_label);
  using Real = Side<T, true, DSideTerm<T, K, true>>;
  using Fake = Side<T, true, DSideTerm<T, K, false>>;
  const auto [real, fake] = run_sides(Real{a.real, a.grad_real, a.n_real, {label}},
                                      Fake{a.fake, a.grad_fake, a.n_fake, {label}});
  return {real, fake};
}

template <typename T, GKind K>
struct GSideTerm {
  GANSVC_INLINE GTerm<VecMath<T>> operator()(at::vec::Vectorized<T> s) const { return g_term<VecMath<T>>(K, s); }
  GANSVC_INLINE GTerm<ScalarMath<T>> operator()(T s) const { return g_term<ScalarMath<T>>(K, s); }
};

template <typename T, GKind K>
Sums g_side(const T* logits, T* grad, int64_t n) {
  using Fake = Side<T, false, GSideTerm<T, K>>;
  return run_sides(Fake{logits, grad, n, {}}, Fake{nullptr, nullptr, 0, {}}).first;
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
