// The symmetry check's tile pairs (fid_elementwise_cpu.cpp), shared with their AVX-512 build
// (fid_symmetrize_avx512.cpp, chosen at run time with the loss kernels' build: losses::cpu_capability()).
#pragma once

#include <cstdint>

namespace gansvc {
namespace fid {

// What one tile pair adds to symmetrize_checked's statistics: maxima over the finite pairs, and the count of
// entries (i, j) with s_ij or s_ji non-finite.
struct TileStats {
  double max_abs = 0.0, max_asym = 0.0;
  int64_t non_finite = 0;
};

namespace AVX512 {
// The off-diagonal tile pair rows [i0, i0 + ni) x columns [j0, j0 + nj) of the d x d matrix `in` and its mirror:
// their symmetric part written to `sym` at both places (nothing where sym is null: the statistics only), and their
// statistics into `stats`. False where the tile's sides are not multiples of 8 or it holds a non-finite entry: the
// caller runs the baseline build's instead.
bool symmetrize_tile_pair(const double* in, double* sym, int64_t d, int64_t i0, int64_t ni, int64_t j0, int64_t nj,
                          TileStats& stats);
// The diagonal tile rows and columns [i0, i0 + n): the pairs on and above its diagonal; false as above.
bool symmetrize_diagonal_tile(const double* in, double* sym, int64_t d, int64_t i0, int64_t n, TileStats& stats);
}  // namespace AVX512

}  // namespace fid
}  // namespace gansvc
