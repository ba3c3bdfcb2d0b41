// The symmetry check's tile pairs for CPUs with AVX-512 (the loss kernels' AVX-512 set), chosen at run time by
// fid_elementwise_cpu.cpp. Each 8 x 8 block and its mirror are loaded as 8 rows each, the mirror transposed in
// registers (24 shuffles), the symmetric part and the running maxima computed 8 pairs per instruction, and the
// result written to the block and, transposed back, to the mirror: every access a whole cache line, no buffer.
// The baseline build transposes through per-thread buffers with scalar loads and stores (~8 ms of compute per
// matrix at d = 2 048 on two threads, 3.8-4.5 here); it still does the tiles this build leaves, and all exact
// counting of non-finite entries.
#include "fid/fid_symmetrize.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#pragma GCC target("avx,avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")
#include <immintrin.h>

#include <algorithm>

namespace gansvc {
namespace fid {
namespace AVX512 {
namespace {

constexpr int64_t kBlock = 8;

// rows[r] <- column r of the 8 x 8 block held as rows.
inline void transpose8(__m512d rows[kBlock]) {
  const __m512d t0 = _mm512_unpacklo_pd(rows[0], rows[1]), t1 = _mm512_unpackhi_pd(rows[0], rows[1]);
  const __m512d t2 = _mm512_unpacklo_pd(rows[2], rows[3]), t3 = _mm512_unpackhi_pd(rows[2], rows[3]);
  const __m512d t4 = _mm512_unpacklo_pd(rows[4], rows[5]), t5 = _mm512_unpackhi_pd(rows[4], rows[5]);
  const __m512d t6 = _mm512_unpacklo_pd(rows[6], rows[7]), t7 = _mm512_unpackhi_pd(rows[6], rows[7]);
  // 128-bit lanes: 0x88 takes lanes 0 and 2 of each operand, 0xdd lanes 1 and 3.
  const __m512d u0 = _mm512_shuffle_f64x2(t0, t2, 0x88), u2 = _mm512_shuffle_f64x2(t0, t2, 0xdd);
  const __m512d u1 = _mm512_shuffle_f64x2(t1, t3, 0x88), u3 = _mm512_shuffle_f64x2(t1, t3, 0xdd);
  const __m512d u4 = _mm512_shuffle_f64x2(t4, t6, 0x88), u6 = _mm512_shuffle_f64x2(t4, t6, 0xdd);
  const __m512d u5 = _mm512_shuffle_f64x2(t5, t7, 0x88), u7 = _mm512_shuffle_f64x2(t5, t7, 0xdd);
  rows[0] = _mm512_shuffle_f64x2(u0, u4, 0x88);
  rows[4] = _mm512_shuffle_f64x2(u0, u4, 0xdd);
  rows[1] = _mm512_shuffle_f64x2(u1, u5, 0x88);
  rows[5] = _mm512_shuffle_f64x2(u1, u5, 0xdd);
  rows[2] = _mm512_shuffle_f64x2(u2, u6, 0x88);
  rows[6] = _mm512_shuffle_f64x2(u2, u6, 0xdd);
  rows[3] = _mm512_shuffle_f64x2(u3, u7, 0x88);
  rows[7] = _mm512_shuffle_f64x2(u3, u7, 0xdd);
}

// The running maxima of a tile's blocks, and the finiteness check: x - x is 0 for finite x and NaN for inf or
// NaN, so a tile whose sum of those is not 0 holds a non-finite entry (its maxima are then meaningless).
struct VectorStats {
  __m512d max_abs, max_asym, check;

  // Spelled out: GCC compiles an implicit constructor without this file's target pragma.
  VectorStats() : max_abs(_mm512_setzero_pd()), max_asym(_mm512_setzero_pd()), check(_mm512_setzero_pd()) {}

  void add(__m512d a, __m512d b) {
    max_abs = _mm512_max_pd(max_abs, _mm512_max_pd(_mm512_abs_pd(a), _mm512_abs_pd(b)));
    max_asym = _mm512_max_pd(max_asym, _mm512_abs_pd(_mm512_sub_pd(a, b)));
    check = _mm512_add_pd(check, _mm512_add_pd(_mm512_sub_pd(a, a), _mm512_sub_pd(b, b)));
  }
  bool all_finite() const { return _mm512_reduce_add_pd(check) == 0.0; }
  void into(TileStats& stats) const {
    stats.max_abs = std::max(stats.max_abs, _mm512_reduce_max_pd(max_abs));
    stats.max_asym = std::max(stats.max_asym, _mm512_reduce_max_pd(max_asym));
  }
};

// The full 8 x 8 block at (i, j) and its mirror at (j, i); i == j: a block on the diagonal, its own mirror.
// kWrite false: the statistics only (symmetry_stats), nothing stored.
template <bool kWrite>
inline void block_pair(const double* in, double* sym, int64_t d, int64_t i, int64_t j, VectorStats& stats) {
  const __m512d half = _mm512_set1_pd(0.5);
  __m512d mirror[kBlock], values[kBlock];
  for (int64_t r = 0; r < kBlock; ++r) mirror[r] = _mm512_loadu_pd(in + (j + r) * d + i);
  transpose8(mirror);  // mirror[r][c] = in[j + c][i + r]
  for (int64_t r = 0; r < kBlock; ++r) {
    const __m512d a = _mm512_loadu_pd(in + (i + r) * d + j), b = mirror[r];
    stats.add(a, b);
    if constexpr (kWrite) {
      values[r] = _mm512_mul_pd(half, _mm512_add_pd(a, b));
      _mm512_storeu_pd(sym + (i + r) * d + j, values[r]);
    }
  }
  if (!kWrite || i == j) return;  // the symmetric part of a diagonal block is its own transpose
  transpose8(values);
  for (int64_t c = 0; c < kBlock; ++c) _mm512_storeu_pd(sym + (j + c) * d + i, values[c]);
}

// The pairs of rows [i0, i0 + ni) x columns [j0, j0 + nj) with (on a diagonal tile, `diagonal`) row <= column, in
// 8 x 8 blocks. False, the statistics untouched, where a side is not a multiple of 8 (nothing written) or an entry
// is not finite: the baseline build then does the tile, and the exact counting, alone.
bool symmetrize_tile(const double* in, double* sym, int64_t d, int64_t i0, int64_t ni, int64_t j0, int64_t nj,
                     bool diagonal, TileStats& stats) {
  if (ni % kBlock != 0 || nj % kBlock != 0) return false;
  VectorStats vector;
  for (int64_t i = i0; i < i0 + ni; i += kBlock) {
    for (int64_t j = diagonal ? i : j0; j < j0 + nj; j += kBlock) {
      if (sym != nullptr) {
        block_pair<true>(in, sym, d, i, j, vector);
      } else {
        block_pair<false>(in, sym, d, i, j, vector);
      }
    }
  }
  if (!vector.all_finite()) return false;
  vector.into(stats);
  return true;
}

}  // namespace

bool symmetrize_tile_pair(const double* in, double* sym, int64_t d, int64_t i0, int64_t ni, int64_t j0, int64_t nj,
                          TileStats& stats) {
  return symmetrize_tile(in, sym, d, i0, ni, j0, nj, /*diagonal=*/false, stats);
}

bool symmetrize_diagonal_tile(const double* in, double* sym, int64_t d, int64_t i0, int64_t n, TileStats& stats) {
  return symmetrize_tile(in, sym, d, i0, n, i0, n, /*diagonal=*/true, stats);
}

}  // namespace AVX512
}  // namespace fid
}  // namespace gansvc

#else
#include <c10/util/Exception.h>

namespace gansvc {
namespace fid {
namespace AVX512 {
// Never called: the dispatcher checks the CPU.
bool symmetrize_tile_pair(const double*, double*, int64_t, int64_t, int64_t, int64_t, int64_t, TileStats&) {
  TORCH_CHECK(false, "gansvc: AVX-512 FID kernels not built");
}
bool symmetrize_diagonal_tile(const double*, double*, int64_t, int64_t, int64_t, TileStats&) {
  TORCH_CHECK(false, "gansvc: AVX-512 FID kernels not built");
}
}  // namespace AVX512
}  // namespace fid
}  // namespace gansvc
#endif
