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

template <typename T>
struct ScalarMath {
  using V = T;
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

// log(1 + t) for t in [0, 1], accurate to a few ulps without a log1p primitive (Goldberg's trick:
// the rounding error of 1 + t cancels in t / (u - 1)); SIMD libraries vectorise exp and log but
// not always log1p.
template <class M>
C10_HOST_DEVICE inline typename M::V log1p_small(typename M::V t) {
  using V = typename M::V;
  V u = t + M::splat(1);
  V ratio = M::log(u) * t / (u - M::splat(1));
  return M::select(M::eq(u, M::splat(1)), t, ratio);
}

// softplus(x) = log(1 + e^x) and softplus(-x), from one exp: stable for |x| up to inf.
template <class M>
C10_HOST_DEVICE inline void softplus_pair(typename M::V x, typename M::V& sp_pos, typename M::V& sp_neg) {
  using V = typename M::V;
  V tail = log1p_small<M>(M::exp(-M::abs(x)));
  sp_pos = M::max(x, M::splat(0)) + tail;
  sp_neg = M::max(-x, M::splat(0)) + tail;
}

// sigmoid(x) and sigmoid(-x) = 1 - sigmoid(x), each to full relative precision.
template <class M>
C10_HOST_DEVICE inline void sigmoid_pair(typename M::V x, typename M::V& sig_pos, typename M::V& sig_neg) {
  using V = typename M::V;
  V e = M::exp(-M::abs(x));
  V big = M::splat(1) / (M::splat(1) + e);
  V small = e / (M::splat(1) + e);
  auto nonneg = M::ge(x, M::splat(0));
  sig_pos = M::select(nonneg, big, small);
  sig_neg = M::select(nonneg, small, big);
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
    V sp_pos, sp_neg, sig_pos, sig_neg;
    softplus_pair<M>(s, sp_pos, sp_neg);
    sigmoid_pair<M>(s, sig_pos, sig_neg);
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
    V sp_pos, sp_neg, sig_pos, sig_neg;
    softplus_pair<M>(s, sp_pos, sp_neg);
    sigmoid_pair<M>(s, sig_pos, sig_neg);
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
