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

namespace gansvc {
namespace losses {

enum class DKind : int { kBce = 0, kHinge = 1, kWasserstein = 2 };
enum class GKind : int { kNonSaturating = 0, kMinimax = 1, kHinge = 2, kWasserstein = 3 };

template <typename Scalar>
struct ScalarMath {
  using T = Scalar;
  using V = Scalar;
  using Mask = bool;
  static C10_HOST_DEVICE V splat(T x) { return x; }
  static C10_HOST_DEVICE V exp(V x) { return std::exp(x); }
  static C10_HOST_DEVICE V log(V x) { return std::log(x); }
  static C10_HOST_DEVICE V abs(V x) { return std::fabs(x); }
  // NaN-propagating maximum, as torch.relu / clamp_min.
  static C10_HOST_DEVICE V max(V a, V b) { return (a != a || a > b) ? a : b; }
  static C10_HOST_DEVICE V select(Mask m, V if_true, V if_false) { return m ? if_true : if_false; }
  static C10_HOST_DEVICE Mask gt(V a, V b) { return a > b; }
  static C10_HOST_DEVICE Mask lt(V a, V b) { return a < b; }
  static C10_HOST_DEVICE Mask ge(V a, V b) { return a >= b; }
  static C10_HOST_DEVICE Mask eq(V a, V b) { return a == b; }
  // 1 where the mask is set, else 0.
  static C10_HOST_DEVICE V ones_where(Mask m) { return m ? T(1) : T(0); }
};

// log(1 + t) for t in [0, 1] without a log primitive: log1p(t) = 2 atanh(z) with z = t / (2 + t)
// in [0, 1/3], summed as the odd series 2 z (1 + z^2/3 + z^4/5 + ...). A few fused multiply-adds:
// SIMD exp is cheap but SIMD log is not (and log1p is not vectorised at all), and the series is
// accurate to an ulp or two near t = 0, where log(1 + t) would lose every digit.
template <class M>
C10_HOST_DEVICE inline typename M::V log1p_small(typename M::V t) {
  using V = typename M::V;
  using T = typename M::T;
  // Truncation error (1/9)^K / (2K + 1): below 2^-27 for float with K = 8, below 2^-56 for double with K = 17.
  constexpr int kTerms = sizeof(T) >= 8 ? 17 : 8;
  V z = t / (M::splat(T(2)) + t);
  V w = z * z;
  V poly = M::splat(T(1) / T(2 * kTerms - 1));
  for (int k = kTerms - 2; k >= 0; --k) poly = poly * w + M::splat(T(1) / T(2 * k + 1));
  return M::splat(T(2)) * z * poly;
}

// softplus(x) = log(1 + e^x), softplus(-x), sigmoid(x) and sigmoid(-x) from a single exp, each to
// full relative precision and stable for |x| up to inf.
template <class M>
struct Logistic {
  typename M::V sp_pos, sp_neg, sig_pos, sig_neg;
};

template <class M>
C10_HOST_DEVICE inline Logistic<M> logistic(typename M::V x) {
  using V = typename M::V;
  using T = typename M::T;
  Logistic<M> r;
  const V zero = M::splat(T(0)), one = M::splat(T(1));
  V e = M::exp(zero - M::abs(x));
  V tail = log1p_small<M>(e);
  r.sp_pos = M::max(x, zero) + tail;
  r.sp_neg = M::max(zero - x, zero) + tail;
  V big = one / (one + e);
  V small = e * big;
  auto nonneg = M::ge(x, zero);
  r.sig_pos = M::select(nonneg, big, small);
  r.sig_neg = M::select(nonneg, small, big);
  return r;
}

// One element of D's loss on a real (is_real) or fake logit s: the loss term, its derivative
// d term / d s, the statistic a user watches (sigmoid(s) for bce, s otherwise) and 1 where D
// classifies the element correctly (s > 0 for real, s < 0 for fake).
// real_label < 1 (one-sided label smoothing) applies to real logits of kind bce only.
template <class M>
struct DTerm {
  typename M::V loss, grad, stat, correct;
};

template <class M, typename T>
C10_HOST_DEVICE inline DTerm<M> d_term(DKind kind, bool is_real, typename M::V s, T real_label) {
  using V = typename M::V;
  DTerm<M> r;
  const V zero = M::splat(0), one = M::splat(1);
  r.correct = M::ones_where(is_real ? M::gt(s, zero) : M::lt(s, zero));
  if (kind == DKind::kBce) {
    const Logistic<M> l = logistic<M>(s);
    const V &sp_pos = l.sp_pos, &sp_neg = l.sp_neg, &sig_pos = l.sig_pos, &sig_neg = l.sig_neg;
    r.stat = sig_pos;
    if (!is_real) {  // BCE(s, 0) = softplus(s)
      r.loss = sp_pos;
      r.grad = sig_pos;
    } else if (real_label == T(1)) {  // BCE(s, 1) = softplus(-s); d/ds = -sigmoid(-s), exact near 0
      r.loss = sp_neg;
      r.grad = -sig_neg;
    } else {  // BCE(s, y): both terms, so that +-inf give inf (not inf - inf)
      r.loss = M::splat(real_label) * sp_neg + M::splat(T(1) - real_label) * sp_pos;
      r.grad = sig_pos - M::splat(real_label);
    }
  } else if (kind == DKind::kHinge) {
    r.stat = s;
    // relu(1 - s) for real, relu(1 + s) for fake; the derivative is 0 where the relu input is 0,
    // as torch's threshold_backward has it.
    V margin = is_real ? one - s : one + s;
    r.loss = M::max(margin, zero);
    V active = M::ones_where(M::gt(margin, zero));
    r.grad = is_real ? -active : active;
  } else {  // Wasserstein critic: E[D(G(z))] - E[D(x)]
    r.stat = s;
    r.loss = is_real ? -s : s;
    r.grad = is_real ? -one : one;
  }
  return r;
}

// One element of G's loss on a fake logit s: loss term, derivative, statistic.
template <class M>
struct GTerm {
  typename M::V loss, grad, stat;
};

template <class M>
C10_HOST_DEVICE inline GTerm<M> g_term(GKind kind, typename M::V s) {
  using V = typename M::V;
  GTerm<M> r;
  if (kind == GKind::kNonSaturating || kind == GKind::kMinimax) {
    const Logistic<M> l = logistic<M>(s);
    const V &sp_pos = l.sp_pos, &sp_neg = l.sp_neg, &sig_pos = l.sig_pos, &sig_neg = l.sig_neg;
    r.stat = sig_pos;
    if (kind == GKind::kNonSaturating) {  // -log D(G(z)) = softplus(-s)
      r.loss = sp_neg;
      r.grad = -sig_neg;
    } else {  // log(1 - D(G(z))) = -softplus(s)
      r.loss = -sp_pos;
      r.grad = -sig_pos;
    }
  } else {  // hinge and Wasserstein generators: -E[D(G(z))]
    r.stat = s;
    r.loss = -s;
    r.grad = M::splat(-1);
  }
  return r;
}

}  // namespace losses
}  // namespace gansvc
