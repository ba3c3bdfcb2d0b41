// The GAN-loss element math, shared by the CPU kernel (scalar and SIMD) and the CUDA kernel.
//
// Every function is a template over a "math policy" M that supplies the value type M::V and the
// few primitives the formulas need (exp, log, max, select, comparisons). ScalarMath below serves
// the CUDA kernel and the CPU tail loop; the CPU kernel's SIMD policy (losses_cpu.cpp) serves its
// main loop with at::vec::Vectorized. One formula, so the CPU tests cover the math the GPU runs.
#pragma once

#include <c10/macros/Macros.h>
#include <cmath>
#include <cstdint>

// Forced inlining of the element math: a policy's vector type is a 32-byte object, and any call left
// out of line in the loop (GCC kept even at::vec's default constructor out of line) passes it through
// memory and spills every live vector register around the call.
#if defined(__CUDACC__)
#define GANSVC_INLINE __forceinline__
#else
#define GANSVC_INLINE C10_ALWAYS_INLINE
#endif

namespace gansvc {
namespace losses {

enum class DKind : int { kBce = 0, kHinge = 1, kWasserstein = 2 };
enum class GKind : int { kNonSaturating = 0, kMinimax = 1, kHinge = 2, kWasserstein = 3 };

template <typename Scalar>
struct ScalarMath {
  using T = Scalar;
  using V = Scalar;
  using Mask = bool;
  static C10_HOST_DEVICE GANSVC_INLINE V splat(T x) { return x; }
  // e^x for x <= 0 or NaN (the only arguments the formulas pass).
  static C10_HOST_DEVICE GANSVC_INLINE V exp_nonpositive(V x) { return std::exp(x); }
  static C10_HOST_DEVICE GANSVC_INLINE V log(V x) { return std::log(x); }
  static C10_HOST_DEVICE GANSVC_INLINE V abs(V x) { return std::fabs(x); }
  static C10_HOST_DEVICE GANSVC_INLINE V neg_abs(V x) { return -std::fabs(x); }
  // NaN-propagating maximum, as torch.relu / clamp_min.
  static C10_HOST_DEVICE GANSVC_INLINE V max(V a, V b) { return (a != a || a > b) ? a : b; }
  static C10_HOST_DEVICE GANSVC_INLINE V select(Mask m, V if_true, V if_false) { return m ? if_true : if_false; }
  // a + b where the mask is set, else a; a - b likewise (one masked instruction in the AVX-512 policy, where a
  // select of a + b costs two).
  static C10_HOST_DEVICE GANSVC_INLINE V add_where(Mask m, V a, V b) { return m ? a + b : a; }
  static C10_HOST_DEVICE GANSVC_INLINE V sub_where(Mask m, V a, V b) { return m ? a - b : a; }
  static C10_HOST_DEVICE GANSVC_INLINE V mul_where(Mask m, V a, V b) { return m ? a * b : a; }
  static C10_HOST_DEVICE GANSVC_INLINE Mask gt(V a, V b) { return a > b; }
  static C10_HOST_DEVICE GANSVC_INLINE Mask lt(V a, V b) { return a < b; }
  static C10_HOST_DEVICE GANSVC_INLINE Mask ge(V a, V b) { return a >= b; }
  static C10_HOST_DEVICE GANSVC_INLINE Mask eq(V a, V b) { return a == b; }
  // 1 where the mask is set, else 0.
  static C10_HOST_DEVICE GANSVC_INLINE V ones_where(Mask m) { return m ? T(1) : T(0); }
};

// c_0 + c_1 w + ... + c_{K-1} w^{K-1} with c_k = kScale / (2k + 1), by Estrin's scheme: pairs c_2i + c_2i+1 w,
// then pairs of those with w², w⁴, ...: a dependency chain of about log2(K) multiply-adds instead of
// Horner's K. The element loop is latency-bound (one exp, then this polynomial, per element), so the
// shorter chain lets more elements overlap.
template <class M, int K, int kScale>
C10_HOST_DEVICE GANSVC_INLINE typename M::V odd_series_estrin(typename M::V w) {
  using V = typename M::V;
  using T = typename M::T;
  V p[(K + 1) / 2];
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int i = 0; i < (K + 1) / 2; ++i) {
    p[i] = 2 * i + 1 < K ? M::splat(T(kScale) / T(4 * i + 1)) + M::splat(T(kScale) / T(4 * i + 3)) * w
                         : M::splat(T(kScale) / T(4 * i + 1));
  }
  V x = w;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int n = (K + 1) / 2; n > 1; n = (n + 1) / 2) {
    x = x * x;
#if defined(__CUDACC__)
#pragma unroll
#endif
    for (int i = 0; i < n / 2; ++i) p[i] = p[2 * i] + p[2 * i + 1] * x;
    if (n % 2 == 1) p[n / 2] = p[n - 1];
  }
  return p[0];
}

// log(1 + t) for t in [0, 1] without a log primitive, given z = t / (2 + t) in [0, 1/3]: log1p(t) = 2 atanh(z),
// z times a polynomial in w = z^2 in [0, 1/9]. A few fused multiply-adds: SIMD exp is cheap but SIMD log is
// not (and log1p is not vectorised at all), and the form is accurate to an ulp or two near t = 0, where
// log(1 + t) would lose every digit. The caller forms z (logistic() shares one division between z and the
// sigmoid). The factor 2 rides in the coefficients: one multiplication fewer per element.
template <class M>
C10_HOST_DEVICE GANSVC_INLINE typename M::V log1p_from_atanh_arg(typename M::V z) {
  using V = typename M::V;
  using T = typename M::T;
  const V w = z * z;
  if constexpr (sizeof(T) >= 8) {
    // The odd series 2 z (1 + z^2/3 + z^4/5 + ...), 17 terms: truncation error (1/9)^17 / 35 < 2^-56.
    return z * odd_series_estrin<M, 17, 2>(w);
  } else {
    // 2 atanh(z) / z as 2 (1 + w (c1 + c2 w + c3 w^2 + c4 w^3)), the cubic fitted for the least maximum relative
    // error on [0, 1/9] (1e-8, a sixth of float's half ulp, against 2^-26 for the series' first 7 terms; the
    // leading 2 exact, so that small t keep full precision). In Horner's form: four multiply-adds where the
    // 7-term series took eight (the loop is bound by the instructions it issues, not by this chain's latency).
    V p = M::splat(T(0.27755412459373474)) * w + M::splat(T(0.2805304527282715));
    p = p * w + M::splat(T(0.40018418431282043));
    p = p * w + M::splat(T(0.666664719581604));
    p = p * w + M::splat(T(2));
    return z * p;
  }
}

// softplus(x) = log(1 + e^x), softplus(-x), sigmoid(x) and sigmoid(-x) from a single exp, each to
// full relative precision and stable for |x| up to inf.
template <class M>
struct Logistic {
  typename M::V sp_pos, sp_neg, sig_pos, sig_neg;
};

template <class M>
C10_HOST_DEVICE GANSVC_INLINE Logistic<M> logistic(typename M::V x) {
  using V = typename M::V;
  using T = typename M::T;
  // Every value is built in place and the result aggregate-initialised: a default-constructed
  // Logistic would default-construct four vectors first (see GANSVC_INLINE).
  // softplus(x) = max(x, 0) + tail with tail = log1p(e^-|x|); selects rather than a NaN-propagating
  // max, since a NaN x reaches every output through e anyway.
  const V zero = M::splat(T(0)), one = M::splat(T(1));
  const V e = M::exp_nonpositive(M::neg_abs(x));
  // 1 / (1 + e) and e / (2 + e) from one division (a vector division costs as much as a dozen
  // multiply-adds): r = 1 / ((1 + e)(2 + e)), then 1 / (1 + e) = r (2 + e) and 1 / (2 + e) = r (1 + e).
  // Both factors lie in [1, 3], so nothing overflows, and each result is within two roundings of exact.
  const V one_e = one + e, two_e = one_e + one;
  const V r = one / (one_e * two_e);
  const V tail = log1p_from_atanh_arg<M>(e * (r * one_e));
  const V big = r * two_e;  // 1 / (1 + e); times e where the sigmoid is the small one
  const auto nonneg = M::ge(x, zero), negative = M::lt(x, zero);
  return {M::add_where(nonneg, tail, x), M::sub_where(negative, tail, x), M::mul_where(negative, big, e),
          M::mul_where(nonneg, big, e)};
}

// One element of D's loss on a real (is_real) or fake logit s: the loss term, its derivative
// d term / d s, the statistic a user watches (sigmoid(s) for bce, s otherwise) and a mask set where D
// classifies the element correctly (s > 0 for real, s < 0 for fake): a bool in the scalar policy, counted by
// the vector loop with one masked add.
// real_label < 1 (one-sided label smoothing) applies to real logits of kind bce only.
template <class M>
struct DTerm {
  typename M::V loss, grad, stat;
  typename M::Mask correct;
};

template <class M, typename T>
C10_HOST_DEVICE GANSVC_INLINE DTerm<M> d_term(DKind kind, bool is_real, typename M::V s, T real_label) {
  using V = typename M::V;
  const V zero = M::splat(0), one = M::splat(1);
  const auto correct = is_real ? M::gt(s, zero) : M::lt(s, zero);
  if (kind == DKind::kBce) {
    const Logistic<M> l = logistic<M>(s);
    if (!is_real) return {l.sp_pos, l.sig_pos, l.sig_pos, correct};  // BCE(s, 0) = softplus(s)
    // BCE(s, 1) = softplus(-s); d/ds = -sigmoid(-s), exact near 0
    if (real_label == T(1)) return {l.sp_neg, -l.sig_neg, l.sig_pos, correct};
    // BCE(s, y): both terms, so that +-inf give inf (not inf - inf)
    return {M::splat(real_label) * l.sp_neg + M::splat(T(1) - real_label) * l.sp_pos, l.sig_pos - M::splat(real_label),
            l.sig_pos, correct};
  }
  if (kind == DKind::kHinge) {
    // relu(1 - s) for real, relu(1 + s) for fake; the derivative is 0 where the relu input is 0,
    // as torch's threshold_backward has it.
    const V margin = is_real ? one - s : one + s;
    const V active = M::ones_where(M::gt(margin, zero));
    return {M::max(margin, zero), is_real ? -active : active, s, correct};
  }
  // Wasserstein critic: E[D(G(z))] - E[D(x)]
  return {is_real ? -s : s, is_real ? -one : one, s, correct};
}

// One element of G's loss on a fake logit s: loss term, derivative, statistic.
template <class M>
struct GTerm {
  typename M::V loss, grad, stat;
};

template <class M>
C10_HOST_DEVICE GANSVC_INLINE GTerm<M> g_term(GKind kind, typename M::V s) {
  if (kind == GKind::kNonSaturating || kind == GKind::kMinimax) {
    const Logistic<M> l = logistic<M>(s);
    if (kind == GKind::kNonSaturating) return {l.sp_neg, -l.sig_neg, l.sig_pos};  // -log D(G(z)) = softplus(-s)
    return {-l.sp_pos, -l.sig_pos, l.sig_pos};  // log(1 - D(G(z))) = -softplus(s)
  }
  // hinge and Wasserstein generators: -E[D(G(z))]
  return {-s, M::splat(-1), s};
}

}  // namespace losses
}  // namespace gansvc
