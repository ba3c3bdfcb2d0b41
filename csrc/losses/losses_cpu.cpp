// CPU kernels of the fused GAN losses: one pass over the logits writes the gradient and
// accumulates loss, statistic and correct-count sums. SIMD over at::vec::Vectorized (exp and log
// are vectorised there; log1p is not, hence log1p_small in loss_math.h), threads over fixed-size
// blocks whose partial sums are added in block order, so results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <array>
#include <vector>

#include "losses/losses.h"

namespace gansvc {
namespace losses {
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

constexpr int64_t kBlock = 16384;  // elements per thread task: large enough to amortise, small for balance
constexpr int kFlushEvery = 32;    // vectors summed in T before moving into double

// Sums over one side (real or fake): loss terms, statistics, correct classifications.
struct Sums {
  double loss = 0, stat = 0, correct = 0;
  void add(const Sums& o) {
    loss += o.loss;
    stat += o.stat;
    correct += o.correct;
  }
};

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
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  std::vector<Sums> partial(num_blocks);
  at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t b = block_begin; b < block_end; ++b) {
      const int64_t begin = b * kBlock, end = std::min(n, begin + kBlock);
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
          sums.correct += horizontal_sum(acc_correct);
          acc_loss = acc_stat = acc_correct = Vec(T(0));
          pending = 0;
        }
      }
      sums.loss += horizontal_sum(acc_loss);
      sums.stat += horizontal_sum(acc_stat);
      sums.correct += horizontal_sum(acc_correct);
      for (; i < end; ++i) {
        auto t = term_s(logits[i]);
        grad[i] = t.grad * scale;
        sums.loss += t.loss;
        sums.stat += t.stat;
        if constexpr (kHasCorrect) sums.correct += t.correct;
      }
      partial[b] = sums;
    }
  });
  Sums total;
  for (const auto& p : partial) total.add(p);
  return total;
}

// Logits as a contiguous tensor in the compute type (float32 for half/bfloat16).
at::Tensor compute_input(const at::Tensor& logits) {
  return logits.to(opmath_type(logits.scalar_type())).contiguous().view(-1);
}

template <typename T, DKind K, bool kIsReal>
Sums d_side(const at::Tensor& logits, const at::Tensor& grad, T real_label) {
  const int64_t n = logits.numel();
  auto term_v = [real_label](at::vec::Vectorized<T> s) { return d_term<VecMath<T>>(K, kIsReal, s, real_label); };
  auto term_s = [real_label](T s) { return d_term<ScalarMath<T>>(K, kIsReal, s, real_label); };
  return run_side<T, true>(logits.data_ptr<T>(), grad.data_ptr<T>(), n, T(1) / T(n), term_v, term_s);
}

template <typename T, DKind K>
std::array<Sums, 2> d_both(const at::Tensor& real, const at::Tensor& fake, const at::Tensor& grad_real,
                           const at::Tensor& grad_fake, T real_label) {
  return {d_side<T, K, true>(real, grad_real, real_label), d_side<T, K, false>(fake, grad_fake, real_label)};
}

template <typename T, GKind K>
Sums g_side(const at::Tensor& logits, const at::Tensor& grad) {
  const int64_t n = logits.numel();
  auto term_v = [](at::vec::Vectorized<T> s) { return g_term<VecMath<T>>(K, s); };
  auto term_s = [](T s) { return g_term<ScalarMath<T>>(K, s); };
  return run_side<T, false>(logits.data_ptr<T>(), grad.data_ptr<T>(), n, T(1) / T(n), term_v, term_s);
}

}  // namespace

DLossOut d_loss_fused_cpu(const at::Tensor& real, const at::Tensor& fake, c10::string_view kind, double real_label) {
  const DKind k = parse_d_kind(kind);
  const at::Tensor r = compute_input(real), f = compute_input(fake);
  at::Tensor grad_r = at::empty_like(r), grad_f = at::empty_like(f);
  std::array<Sums, 2> sums;
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "gansvc::d_loss", [&] {
    const auto label = static_cast<scalar_t>(real_label);
    switch (k) {
      case DKind::kBce: sums = d_both<scalar_t, DKind::kBce>(r, f, grad_r, grad_f, label); break;
      case DKind::kHinge: sums = d_both<scalar_t, DKind::kHinge>(r, f, grad_r, grad_f, label); break;
      case DKind::kWasserstein: sums = d_both<scalar_t, DKind::kWasserstein>(r, f, grad_r, grad_f, label); break;
    }
  });
  const double n_r = static_cast<double>(r.numel()), n_f = static_cast<double>(f.numel());
  const auto out_opts = r.options();
  at::Tensor loss = at::scalar_tensor(sums[0].loss / n_r + sums[1].loss / n_f, out_opts);
  at::Tensor stats = at::empty({3}, out_opts.dtype(at::kDouble));
  auto* st = stats.data_ptr<double>();
  st[0] = sums[0].stat / n_r;
  st[1] = sums[1].stat / n_f;
  st[2] = (sums[0].correct + sums[1].correct) / (n_r + n_f);
  return {loss, grad_r.view(real.sizes()).to(real.scalar_type()), grad_f.view(fake.sizes()).to(fake.scalar_type()),
          stats.to(r.scalar_type())};
}

GLossOut g_loss_fused_cpu(const at::Tensor& fake, c10::string_view kind) {
  const GKind k = parse_g_kind(kind);
  const at::Tensor f = compute_input(fake);
  at::Tensor grad_f = at::empty_like(f);
  Sums sums;
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "gansvc::g_loss", [&] {
    switch (k) {
      case GKind::kNonSaturating: sums = g_side<scalar_t, GKind::kNonSaturating>(f, grad_f); break;
      case GKind::kMinimax: sums = g_side<scalar_t, GKind::kMinimax>(f, grad_f); break;
      case GKind::kHinge: sums = g_side<scalar_t, GKind::kHinge>(f, grad_f); break;
      case GKind::kWasserstein: sums = g_side<scalar_t, GKind::kWasserstein>(f, grad_f); break;
    }
  });
  const double n = static_cast<double>(f.numel());
  at::Tensor loss = at::scalar_tensor(sums.loss / n, f.options());
  at::Tensor stats = at::scalar_tensor(sums.stat / n, f.options()).view({1});
  return {loss, grad_f.view(fake.sizes()).to(fake.scalar_type()), stats};
}

}  // namespace losses
}  // namespace gansvc
