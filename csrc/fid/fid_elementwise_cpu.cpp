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
#include "fid/fid_symmetrize.h"
#include "losses/losses.h"

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

namespace {
// Tile side: 128 measured best of 16-192 at d = 2 048 (19 ms against 28 at 64 for one matrix, one thread).
constexpr int64_t kTile = 128;
// Rows of kTile + 8 doubles in the transposing buffers: the loops walk them down a column, and at a power-of-two
// row length every row of a column falls into the same few L1 sets.
constexpr int64_t kRow = kTile + 8;

// One off-diagonal tile pair: rows [i0, i0 + ni) x columns [j0, j0 + nj) and its mirror. The mirror is read into a
// transposed buffer and written back from one, both with contiguous rows, so the element loop runs over contiguous
// arrays only: reading and writing the mirror column by column (stride d) took ~10 ns per pair at d = 2 048.
// mirror and values: kTile * kRow doubles each, the caller's (a thread's) scratch. kWrite false: the statistics
// only (symmetry_stats), nothing stored.
template <bool kWrite>
TileStats symmetrize_tile_pair(const double* in, double* sym, int64_t d, int64_t i0, int64_t ni, int64_t j0,
                               int64_t nj, double* mirror, double* values) {
  // mirror[ii][jj] = in[j0 + jj][i0 + ii]; values[ii][jj] = the symmetrised (i0 + ii, j0 + jj)
  for (int64_t jj = 0; jj < nj; ++jj) {
    const double* row = in + (j0 + jj) * d + i0;
    for (int64_t ii = 0; ii < ni; ++ii) mirror[ii * kRow + jj] = row[ii];
  }
  TileStats stats;
  for (int64_t ii = 0; ii < ni; ++ii) {
    const double* upper = in + (i0 + ii) * d + j0;
    const double* lower = mirror + ii * kRow;
    double* out = kWrite ? sym + (i0 + ii) * d + j0 : nullptr;
    double* kept = values + ii * kRow;
    double row_abs = 0.0, row_asym = 0.0;
    int64_t row_bad = 0;
    for (int64_t jj = 0; jj < nj; ++jj) {
      const double a = upper[jj], b = lower[jj];
      // x - x is 0 for finite x and NaN for inf or NaN. Selects, not a branch: the maxima are over the finite
      // pairs (the values written for a non-finite one do not matter, as the caller refuses the matrix).
      const bool finite = (a - a) + (b - b) == 0.0;
      row_bad += finite ? 0 : 2;  // entries (i, j) and (j, i), as the CUDA kernel counts them
      row_abs = std::max(row_abs, finite ? std::max(std::abs(a), std::abs(b)) : 0.0);
      row_asym = std::max(row_asym, finite ? std::abs(a - b) : 0.0);
      if constexpr (kWrite) {
        const double v = 0.5 * (a + b);
        out[jj] = v;
        kept[jj] = v;
      }
    }
    stats.max_abs = std::max(stats.max_abs, row_abs);
    stats.max_asym = std::max(stats.max_asym, row_asym);
    stats.non_finite += row_bad;
  }
  if constexpr (!kWrite) return stats;
  for (int64_t jj = 0; jj < nj; ++jj) {
    double* row = sym + (j0 + jj) * d + i0;
    for (int64_t ii = 0; ii < ni; ++ii) row[ii] = values[ii * kRow + jj];
  }
  return stats;
}

// A diagonal tile (bi == bj: one pair in d / 2kTile): its upper triangle and the mirror inside the same tile (sym
// null: the statistics only).
TileStats symmetrize_diagonal_tile(const double* in, double* sym, int64_t d, int64_t i0, int64_t n) {
  TileStats stats;
  for (int64_t i = i0; i < i0 + n; ++i) {
    for (int64_t j = i; j < i0 + n; ++j) {
      const double a = in[i * d + j], b = in[j * d + i];
      if (!std::isfinite(a) || !std::isfinite(b)) {
        stats.non_finite += i == j ? 1 : 2;  // entries (i, j) and (j, i), as the CUDA kernel counts them
        continue;
      }
      stats.max_abs = std::max(stats.max_abs, std::max(std::abs(a), std::abs(b)));
      stats.max_asym = std::max(stats.max_asym, std::abs(a - b));
      if (sym == nullptr) continue;
      const double v = 0.5 * (a + b);
      sym[i * d + j] = v;
      sym[j * d + i] = v;
    }
  }
  return stats;
}
}  // namespace

namespace {
// The tile pairs of s (checked by the caller: square, float64, contiguous) in parallel, their symmetric part written
// to sym (null: not written), the statistics summed.
TileStats symmetry_pass(const at::Tensor& s, double* sym) {
  const int64_t d = s.size(0);
  const int64_t tiles = (d + kTile - 1) / kTile;
  std::vector<std::pair<int64_t, int64_t>> pairs;  // upper-triangle tile pairs (bi <= bj)
  pairs.reserve(static_cast<size_t>(tiles * (tiles + 1) / 2));
  for (int64_t bi = 0; bi < tiles; ++bi) {
    for (int64_t bj = bi; bj < tiles; ++bj) pairs.emplace_back(bi, bj);
  }
  const double* in = s.const_data_ptr<double>();
  const int64_t num_pairs = static_cast<int64_t>(pairs.size());
  std::vector<TileStats> tile_stats(pairs.size());
  // The AVX-512 tiles (fid_symmetrize_avx512.cpp) with the loss kernels' AVX-512 build, which
  // GANSVC_CPU_CAPABILITY or gansvc._C._set_cpu_capability choose as well; the tiles they leave (sides not
  // multiples of 8, a non-finite entry) run here.
  const bool avx512 = losses::cpu_capability() == losses::CpuCapability::kAvx512;
  at::parallel_for(0, num_pairs, 1, [&](int64_t first, int64_t last) {
    std::vector<double> scratch(static_cast<size_t>(2 * kTile * kRow));
    for (int64_t k = first; k < last; ++k) {
      const auto [bi, bj] = pairs[static_cast<size_t>(k)];
      const int64_t i0 = bi * kTile, j0 = bj * kTile;
      const int64_t ni = std::min(kTile, d - i0), nj = std::min(kTile, d - j0);
      TileStats& stats = tile_stats[static_cast<size_t>(k)];
      const bool done = avx512 && (bi == bj ? AVX512::symmetrize_diagonal_tile(in, sym, d, i0, ni, stats)
                                            : AVX512::symmetrize_tile_pair(in, sym, d, i0, ni, j0, nj, stats));
      if (done) continue;
      double* mirror = scratch.data();
      double* values = scratch.data() + kTile * kRow;
      if (bi == bj) {
        stats = symmetrize_diagonal_tile(in, sym, d, i0, ni);
      } else {
        stats = sym != nullptr ? symmetrize_tile_pair<true>(in, sym, d, i0, ni, j0, nj, mirror, values)
                               : symmetrize_tile_pair<false>(in, sym, d, i0, ni, j0, nj, mirror, values);
      }
    }
  });
  TileStats total;
  for (const TileStats& t : tile_stats) {
    total.max_abs = std::max(total.max_abs, t.max_abs);
    total.max_asym = std::max(total.max_asym, t.max_asym);
    total.non_finite += t.non_finite;
  }
  return total;
}

at::Tensor stats_tensor(const TileStats& total, const at::Tensor& like) {
  return at::tensor({total.max_abs, total.max_asym, static_cast<double>(total.non_finite)}, like.options());
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> symmetrize_checked_cpu(const at::Tensor& s) {
  check_square_float64(s, "s");
  at::Tensor out = at::empty_like(s);
  return {out, stats_tensor(symmetry_pass(s, out.data_ptr<double>()), s)};
}

at::Tensor symmetry_stats_cpu(const at::Tensor& s) {
  check_square_float64(s, "s");
  return stats_tensor(symmetry_pass(s, nullptr), s);
}

}  // namespace fid
}  // namespace gansvc

TORCH_LIBRARY_IMPL(gansvc, CPU, m) {
  m.impl("ns_polar_step_", &gansvc::fid::ns_polar_step_cpu);
  m.impl("sum_squared_difference", &gansvc::fid::sum_squared_difference_cpu);
  m.impl("symmetrize_checked", &gansvc::fid::symmetrize_checked_cpu);
}
