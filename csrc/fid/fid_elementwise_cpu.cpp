// CPU versions of the FID core's fused element kernels. Sums are taken over fixed-size blocks
// whose partials are added in block order, so results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "fid/fid.h"

namespace gansvc {
namespace fid {

namespace {
constexpr int64_t kBlock = 16384;

template <typename BlockSum>
double blocked_sum(int64_t n, const BlockSum& block_sum) {
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partials(static_cast<size_t>(num_blocks), 0.0);
  at::parallel_for(0, num_blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      const int64_t begin = block * kBlock, end = std::min(n, begin + kBlock);
      partials[static_cast<size_t>(block)] = block_sum(begin, end);
    }
  });
  double total = 0.0;
  for (double p : partials) total += p;
  return total;
}
}  // namespace

void check_elementwise_operands(const at::Tensor& a, const at::Tensor& b, const char* name_a, const char* name_b) {
  TORCH_CHECK_VALUE(a.scalar_type() == at::kDouble && b.scalar_type() == at::kDouble, name_a, " and ", name_b,
                    " must be float64, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK_VALUE(a.sizes() == b.sizes(), name_a, " and ", name_b, " must have the same shape, got ", a.sizes(),
                    " and ", b.sizes());
  TORCH_CHECK_VALUE(a.device() == b.device(), name_a, " and ", name_b, " must be on the same device, got ",
                    a.device(), " and ", b.device());
  TORCH_CHECK_VALUE(a.is_contiguous() && b.is_contiguous(), name_a, " and ", name_b, " must be contiguous");
}

at::Tensor ns_polar_step_cpu(at::Tensor& x, const at::Tensor& q, const at::Tensor& b) {
  check_elementwise_operands(x, q, "x", "q");
  check_elementwise_operands(x, b, "x", "b");
  double* xp = x.data_ptr<double>();
  const double* qp = q.const_data_ptr<double>();
  const double* bp = b.const_data_ptr<double>();
  const double trace = blocked_sum(x.numel(), [&](int64_t begin, int64_t end) {
    double acc = 0.0;
    for (int64_t i = begin; i < end; ++i) {
      const double v = 1.5 * xp[i] - 0.5 * qp[i];
      xp[i] = v;
      acc += v * bp[i];
    }
    return acc;
  });
  return at::scalar_tensor(trace, x.options());
}

at::Tensor sum_squared_difference_cpu(const at::Tensor& a, const at::Tensor& b) {
  check_elementwise_operands(a, b, "a", "b");
  const double* ap = a.const_data_ptr<double>();
  const double* bp = b.const_data_ptr<double>();
  const double total = blocked_sum(a.numel(), [&](int64_t begin, int64_t end) {
    double acc = 0.0;
    for (int64_t i = begin; i < end; ++i) {
      const double diff = ap[i] - bp[i];
      acc += diff * diff;
    }
    return acc;
  });
  return at::scalar_tensor(total, a.options());
}

void check_square_float64(const at::Tensor& s, const char* name) {
  TORCH_CHECK_VALUE(s.dim() == 2 && s.size(0) == s.size(1), name, " must be a square matrix, got shape ", s.sizes());
  TORCH_CHECK_VALUE(s.scalar_type() == at::kDouble, name, " must be float64, got ", s.scalar_type());
  TORCH_CHECK_VALUE(s.is_contiguous(), name, " must be contiguous");
}

std::tuple<at::Tensor, at::Tensor> symmetrize_checked_cpu(const at::Tensor& s) {
  check_square_float64(s, "s");
  constexpr int64_t kTile = 64;  // a tile and its mirror stay in L1/L2 while the transpose is read
  const int64_t d = s.size(0);
  const int64_t tiles = (d + kTile - 1) / kTile;
  std::vector<std::pair<int64_t, int64_t>> pairs;  // upper-triangle tile pairs (bi <= bj)
  pairs.reserve(static_cast<size_t>(tiles * (tiles + 1) / 2));
  for (int64_t bi = 0; bi < tiles; ++bi) {
    for (int64_t bj = bi; bj < tiles; ++bj) pairs.emplace_back(bi, bj);
  }
  at::Tensor out = at::empty_like(s);
  const double* in = s.const_data_ptr<double>();
  double* sym = out.data_ptr<double>();
  const int64_t num_pairs = static_cast<int64_t>(pairs.size());
  std::vector<double> max_abs(pairs.size(), 0.0), max_asym(pairs.size(), 0.0);
  std::vector<int64_t> non_finite(pairs.size(), 0);
  at::parallel_for(0, num_pairs, 1, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      const auto [bi, bj] = pairs[static_cast<size_t>(k)];
      double tile_abs = 0.0, tile_asym = 0.0;
      int64_t tile_bad = 0;
      for (int64_t i = bi * kTile; i < std::min(d, (bi + 1) * kTile); ++i) {
        for (int64_t j = (bi == bj ? i : bj * kTile); j < std::min(d, (bj + 1) * kTile); ++j) {
          const double a = in[i * d + j], b = in[j * d + i];
          if (!std::isfinite(a) || !std::isfinite(b)) {
            tile_bad += i == j ? 1 : 2;  // entries (i, j) and (j, i), as the CUDA kernel counts them
            continue;
          }
          tile_abs = std::max(tile_abs, std::max(std::abs(a), std::abs(b)));
          tile_asym = std::max(tile_asym, std::abs(a - b));
          const double v = 0.5 * (a + b);
          sym[i * d + j] = v;
          sym[j * d + i] = v;
        }
      }
      max_abs[static_cast<size_t>(k)] = tile_abs;
      max_asym[static_cast<size_t>(k)] = tile_asym;
      non_finite[static_cast<size_t>(k)] = tile_bad;
    }
  });
  double total_abs = 0.0, total_asym = 0.0;
  int64_t total_bad = 0;
  for (size_t k = 0; k < pairs.size(); ++k) {
    total_abs = std::max(total_abs, max_abs[k]);
    total_asym = std::max(total_asym, max_asym[k]);
    total_bad += non_finite[k];
  }
  at::Tensor stats = at::tensor({total_abs, total_asym, static_cast<double>(total_bad)}, s.options());
  return {out, stats};
}

}  // namespace fid
}  // namespace gansvc

TORCH_LIBRARY_IMPL(gansvc, CPU, m) {
  m.impl("ns_polar_step_", &gansvc::fid::ns_polar_step_cpu);
  m.impl("sum_squared_difference", &gansvc::fid::sum_squared_difference_cpu);
  m.impl("symmetrize_checked", &gansvc::fid::symmetrize_checked_cpu);
}
