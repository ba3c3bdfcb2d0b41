// The CPU loop of the fused GAN losses, compiled once per CPU capability (as ATen's kernels are):
// losses_cpu_default.cpp builds it for any x86-64 (or other) CPU, losses_cpu_avx2.cpp for AVX2 + FMA,
// losses_cpu_avx512.cpp for AVX-512, and losses_cpu.cpp picks one at run time. Each includer defines
// CPU_CAPABILITY first, so that this code and at::vec::Vectorized live in a namespace of their own per
// capability (no ODR clash).
//
// One pass over the logits writes the gradient and accumulates loss, statistic and correct-count
// sums. SIMD over packs of at::vec::Vectorized (exp inline below; log1p is not vectorised at all, hence
// log1p_from_atanh_arg in loss_math.h); threads over fixed-size blocks whose partial sums are added in
// block order, so the results do not depend on the thread count.
//
// Only raw pointers cross this boundary: no at::Tensor inline code is emitted with AVX2/AVX-512 instructions.
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY (DEFAULT, AVX2 or AVX512) before including losses_cpu_kernel.h"
#endif

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <type_traits>
#include <utility>
#include <memory>

#include "losses/losses_cpu_sums.h"

namespace gansvc {
namespace losses {
namespace CPU_CAPABILITY {
namespace {

// The SIMD value of the element math: K vectors treated as one. Every operation is issued for all K vectors
// back to back, so K independent dependency chains interleave in program order. The bce/softplus chain of one
// vector (exp, a division, a polynomial: ~100 cycles of latency over ~70 instructions) is longer than the
// out-of-order window reaches, so one vector at a time left the core waiting; K chains fill the wait. K is
// chosen per build and type (kPack): enough chains to cover the latency, few enough to stay in registers.
template <typename Vec, int K>
struct Pack {
  Vec v[K];
};

// Pack operations written as pack expansions over I = 0..K-1 (aggregate-initialised: no default-constructed
// vectors, see GANSVC_INLINE), one definition for every K.
template <typename Vec, typename Seq>
struct PackOps;

template <typename Vec, std::size_t... I>
struct PackOps<Vec, std::index_sequence<I...>> {
  using P = Pack<Vec, static_cast<int>(sizeof...(I))>;
  template <typename S>
  static GANSVC_INLINE P splat(S x) { return {{(static_cast<void>(I), Vec(x))...}}; }
  static GANSVC_INLINE P add(const P& a, const P& b) { return {{(a.v[I] + b.v[I])...}}; }
  static GANSVC_INLINE P sub(const P& a, const P& b) { return {{(a.v[I] - b.v[I])...}}; }
  static GANSVC_INLINE P mul(const P& a, const P& b) { return {{(a.v[I] * b.v[I])...}}; }
  static GANSVC_INLINE P div(const P& a, const P& b) { return {{(a.v[I] / b.v[I])...}}; }
  static GANSVC_INLINE P bit_or(const P& a, const P& b) { return {{(a.v[I] | b.v[I])...}}; }
  static GANSVC_INLINE P bit_and(const P& a, const P& b) { return {{(a.v[I] & b.v[I])...}}; }
  static GANSVC_INLINE P neg(const P& a) { return {{(-a.v[I])...}}; }
  static GANSVC_INLINE P gt(const P& a, const P& b) { return {{(a.v[I] > b.v[I])...}}; }
  static GANSVC_INLINE P lt(const P& a, const P& b) { return {{(a.v[I] < b.v[I])...}}; }
  static GANSVC_INLINE P ge(const P& a, const P& b) { return {{(a.v[I] >= b.v[I])...}}; }
  static GANSVC_INLINE P eq(const P& a, const P& b) { return {{(a.v[I] == b.v[I])...}}; }
  static GANSVC_INLINE P abs(const P& a) { return {{a.v[I].abs()...}}; }
  static GANSVC_INLINE P log(const P& a) { return {{a.v[I].log()...}}; }
  static GANSVC_INLINE P exp(const P& a) { return {{a.v[I].exp()...}}; }
  static GANSVC_INLINE P maximum(const P& a, const P& b) { return {{at::vec::maximum(a.v[I], b.v[I])...}}; }
  static GANSVC_INLINE P blendv(const P& f, const P& t, const P& m) {
    return {{Vec::blendv(f.v[I], t.v[I], m.v[I])...}};
  }
  static GANSVC_INLINE P loadu(const typename Vec::value_type* p) { return {{Vec::loadu(p + I * Vec::size())...}}; }
  static GANSVC_INLINE void store(const P& a, typename Vec::value_type* p) { (a.v[I].store(p + I * Vec::size()), ...); }
};

template <typename Vec, int K>
using PackOf = PackOps<Vec, std::make_index_sequence<K>>;

// Each vector converted: between at::vec::Vectorized and the raw intrinsic type (the same register).
template <typename Out, typename In, int K, std::size_t... I>
GANSVC_INLINE Pack<Out, K> pack_cast(const Pack<In, K>& a, std::index_sequence<I...>) {
  return {{static_cast<Out>(a.v[I])...}};
}
template <typename Out, typename In, int K>
GANSVC_INLINE Pack<Out, K> pack_cast(const Pack<In, K>& a) {
  return pack_cast<Out>(a, std::make_index_sequence<K>());
}

// The arithmetic the element math (loss_math.h) writes with operators.
#define GANSVC_PACK_OPERATOR(op, name)                                                               \
  template <typename Vec, int K>                                                                     \
  GANSVC_INLINE Pack<Vec, K> operator op(const Pack<Vec, K>& a, const Pack<Vec, K>& b) {            \
    return PackOf<Vec, K>::name(a, b);                                                               \
  }
GANSVC_PACK_OPERATOR(+, add)
GANSVC_PACK_OPERATOR(-, sub)
GANSVC_PACK_OPERATOR(*, mul)
GANSVC_PACK_OPERATOR(/, div)
#undef GANSVC_PACK_OPERATOR

template <typename Vec, int K>
GANSVC_INLINE Pack<Vec, K> operator-(const Pack<Vec, K>& a) {
  return PackOf<Vec, K>::neg(a);
}

// e^x for x <= 0 or NaN, a pack of float vectors, inline (Sleef's exp is a call, and a call in the loop spills
// every live vector register). Table-driven: x = (N / S) ln2 + r with S = 2^O::kTableBits table steps per
// octave, N = round(S x / ln2) and |r| <= ln2 / 2S; then e^x = 2^n 2^(j/S) e^r with n = floor(N / S), j = N mod S.
// 2^(j/S) comes from a table held in one register (a single permute: 16 floats fill an AVX-512 register, 8 an
// AVX2 one), and over the short interval e^r - 1 needs a cubic (S = 16) or a quartic (S = 8) where a whole
// octave took Cephes' degree-6 polynomial: four vector instructions fewer per vector on AVX-512, in a loop
// bound by how many it issues. About 1 ulp: the table entry's rounding and the final one. Results below
// FLT_MIN (x < -87.3) flush to 0: the loss terms and gradients they feed are below every tolerance there.
// One body for the AVX2 and AVX-512 builds, over the ISA's intrinsics in RawOps.
template <class O>
GANSVC_INLINE typename O::F exp_nonpositive_floats(const typename O::F& x_in) {
  using F = typename O::F;
  constexpr int kSteps = 1 << O::kTableBits;
  // max(lo, x) keeps a NaN x (the second operand is returned when unordered).
  const F x = O::max(O::set1(-88.0f), x_in);
  // N = round(S x / ln2) by adding 1.5 * 2^23 (plus 127 S, the exponent bias in table steps): the sum's low
  // mantissa bits then hold 2^22 + N + 127 S (rounded to nearest even, as a round instruction would), and
  // subtracting the constant again gives N as a float. Cheaper than a round and a float-to-int conversion.
  const F magic = O::set1(12582912.0f + 127.0f * kSteps);
  const F shifted = O::fmadd(x, O::set1(kSteps * 1.44269504088896341f), magic);
  const F steps = O::sub(shifted, magic);
  // r = x - N ln2 / S in two parts (Cody–Waite): the high part has 9 significant bits, so N times it is exact.
  F r = O::fnmadd(steps, O::set1(0.693359375f / kSteps), x);
  r = O::fnmadd(steps, O::set1(-2.12194440e-4f / kSteps), r);
  // e^r - 1 by its Taylor series: |r| <= ln2 / 32 (S = 16) leaves r^4 / 24 < 1e-8, |r| <= ln2 / 16 (S = 8) r^5 / 120.
  const F r2 = O::mul(r, r);
  F q = O::fmadd(O::set1(1.0f / 6), r, O::set1(0.5f));
  if constexpr (kSteps < 16) q = O::fmadd(O::set1(1.0f / 24), r2, q);
  const F expm1_r = O::fmadd(q, r2, r);
  // The permute reads the low O::kTableBits bits of each lane: j, as 2^22 and 127 S are multiples of S.
  const F t = O::table_lookup(shifted);
  // n + 127 in [0, 127] (x >= -88): shifted's bits shifted right by kTableBits hold 2^(22 - kTableBits) + n + 127,
  // and left by 23 the 2^(22 - kTableBits) leaves the lane: the biased exponent of 2^n (0 gives the factor 0, the
  // flush above).
  return O::mul(O::fmadd(t, expm1_r, t), O::pow2_from_high_bits(shifted));
}

#if defined(CPU_CAPABILITY_AVX2)
using RawFloats = __m256;
struct RawOps {
  using F = __m256;
  static GANSVC_INLINE F set1(float v) { return _mm256_set1_ps(v); }
  static GANSVC_INLINE F max(F a, F b) { return _mm256_max_ps(a, b); }
  static GANSVC_INLINE F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static GANSVC_INLINE F add(F a, F b) { return _mm256_add_ps(a, b); }
  static GANSVC_INLINE F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static GANSVC_INLINE F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static GANSVC_INLINE F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  static constexpr int kTableBits = 3;
  // 2^(j/8), j the low 3 bits of each lane of s (float32 roundings of the exact values).
  static GANSVC_INLINE F table_lookup(F s) {
    const F table = _mm256_setr_ps(1.0f, 1.0905077457427979f, 1.1892070770263672f, 1.2968395948410034f,
                                   1.4142135381698608f, 1.5422108173370361f, 1.6817928552627563f, 1.8340080976486206f);
    return _mm256_permutevar8x32_ps(table, _mm256_castps_si256(s));
  }
  static GANSVC_INLINE F pow2_from_high_bits(F s) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_srli_epi32(_mm256_castps_si256(s), kTableBits), 23));
  }
};
#elif defined(CPU_CAPABILITY_AVX512)
using RawFloats = __m512;
struct RawOps {
  using F = __m512;
  static GANSVC_INLINE F set1(float v) { return _mm512_set1_ps(v); }
  static GANSVC_INLINE F max(F a, F b) { return _mm512_max_ps(a, b); }
  static GANSVC_INLINE F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static GANSVC_INLINE F add(F a, F b) { return _mm512_add_ps(a, b); }
  static GANSVC_INLINE F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static GANSVC_INLINE F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static GANSVC_INLINE F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  static constexpr int kTableBits = 4;
  // 2^(j/16), j the low 4 bits of each lane of s (float32 roundings of the exact values).
  static GANSVC_INLINE F table_lookup(F s) {
    const F table = _mm512_setr_ps(1.0f, 1.0442737340927124f, 1.0905077457427979f, 1.1387885808944702f,
                                   1.1892070770263672f, 1.2418577671051025f, 1.2968395948410034f, 1.3542555570602417f,
                                   1.4142135381698608f, 1.4768261909484863f, 1.5422108173370361f, 1.610490322113037f,
                                   1.6817928552627563f, 1.7562521696090698f, 1.8340080976486206f, 1.9152065515518188f);
    return _mm512_permutexvar_ps(_mm512_castps_si512(s), table);
  }
  static GANSVC_INLINE F pow2_from_high_bits(F s) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_srli_epi32(_mm512_castps_si512(s), kTableBits), 23));
  }
};
#endif

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// RawOps over a pack of K raw vectors, each operation issued for all K back to back.
template <int K, typename Seq = std::make_index_sequence<K>>
struct RawPackOps;

template <int K, std::size_t... I>
struct RawPackOps<K, std::index_sequence<I...>> {
  using F = Pack<RawFloats, K>;
  static GANSVC_INLINE F set1(float v) { return {{(static_cast<void>(I), RawOps::set1(v))...}}; }
  static GANSVC_INLINE F max(const F& a, const F& b) { return {{RawOps::max(a.v[I], b.v[I])...}}; }
  static GANSVC_INLINE F mul(const F& a, const F& b) { return {{RawOps::mul(a.v[I], b.v[I])...}}; }
  static GANSVC_INLINE F add(const F& a, const F& b) { return {{RawOps::add(a.v[I], b.v[I])...}}; }
  static GANSVC_INLINE F sub(const F& a, const F& b) { return {{RawOps::sub(a.v[I], b.v[I])...}}; }
  static GANSVC_INLINE F fmadd(const F& a, const F& b, const F& c) {
    return {{RawOps::fmadd(a.v[I], b.v[I], c.v[I])...}};
  }
  static GANSVC_INLINE F fnmadd(const F& a, const F& b, const F& c) {
    return {{RawOps::fnmadd(a.v[I], b.v[I], c.v[I])...}};
  }
  static constexpr int kTableBits = RawOps::kTableBits;
  static GANSVC_INLINE F table_lookup(const F& s) { return {{RawOps::table_lookup(s.v[I])...}}; }
  static GANSVC_INLINE F pow2_from_high_bits(const F& s) { return {{RawOps::pow2_from_high_bits(s.v[I])...}}; }
};
#endif

// Vectors per pack: 2 for float in the SIMD builds (AVX-512 has 32 vector registers, AVX2 16: two chains fit
// either), 1 elsewhere (the baseline build's SSE2 vectors, and double, whose exp is Sleef's out-of-line call).
template <typename T>
constexpr int kPack =
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    std::is_same_v<T, float> ? 2 : 1;
#else
    1;
#endif

// The element math's comparisons and selects. Through at::vec a comparison gives a vector of all-ones lanes and a
// select takes one (on AVX2 that is the ISA's own form: one instruction each).
template <typename Scalar, int K>
struct VecMasks {
  using Vec = at::vec::Vectorized<Scalar>;
  using V = Pack<Vec, K>;
  using Mask = V;
  using Ops = PackOf<Vec, K>;
  static GANSVC_INLINE Mask gt(const V& a, const V& b) { return Ops::gt(a, b); }
  static GANSVC_INLINE Mask lt(const V& a, const V& b) { return Ops::lt(a, b); }
  static GANSVC_INLINE Mask ge(const V& a, const V& b) { return Ops::ge(a, b); }
  static GANSVC_INLINE Mask eq(const V& a, const V& b) { return Ops::eq(a, b); }
  static GANSVC_INLINE V select(const Mask& m, const V& if_true, const V& if_false) {
    return Ops::blendv(if_false, if_true, m);
  }
  static GANSVC_INLINE V ones_where(const Mask& m) { return Ops::bit_and(m, Ops::splat(Scalar(1))); }
  // a + (b where set, else +0): an AND and an add, no select (ATen's generic Vectorized, where no SIMD
  // specialisation exists, branches on every lane of a select).
  static GANSVC_INLINE V add_where(const Mask& m, const V& a, const V& b) { return a + Ops::bit_and(m, b); }
  static GANSVC_INLINE V sub_where(const Mask& m, const V& a, const V& b) { return a - Ops::bit_and(m, b); }
  static GANSVC_INLINE V mul_where(const Mask& m, const V& a, const V& b) { return select(m, a * b, a); }
};

#if defined(CPU_CAPABILITY_AVX512)
// AVX-512 compares into mask registers, and its blends and zeroing moves read them: one instruction per comparison,
// select or 0/1 vector. at::vec's AVX-512 floats keep the vector form above, which costs a mask-to-vector move
// after every comparison and a vector-to-mask compare before every blend: the bce loop spent a tenth of its
// vector instructions on those conversions. The predicates are at::vec's (ordered, quiet: NaN compares false).
template <int K, typename Seq = std::make_index_sequence<K>>
struct MaskRegisters;

template <int K, std::size_t... I>
struct MaskRegisters<K, std::index_sequence<I...>> {
  using Vec = at::vec::Vectorized<float>;
  using V = Pack<Vec, K>;
  using Mask = Pack<__mmask16, K>;
  template <int kPredicate>
  static GANSVC_INLINE Mask compare(const V& a, const V& b) {
    return {{_mm512_cmp_ps_mask(static_cast<__m512>(a.v[I]), static_cast<__m512>(b.v[I]), kPredicate)...}};
  }
  static GANSVC_INLINE Mask gt(const V& a, const V& b) { return compare<_CMP_GT_OQ>(a, b); }
  static GANSVC_INLINE Mask lt(const V& a, const V& b) { return compare<_CMP_LT_OQ>(a, b); }
  static GANSVC_INLINE Mask ge(const V& a, const V& b) { return compare<_CMP_GE_OQ>(a, b); }
  static GANSVC_INLINE Mask eq(const V& a, const V& b) { return compare<_CMP_EQ_OQ>(a, b); }
  static GANSVC_INLINE V select(const Mask& m, const V& if_true, const V& if_false) {
    return {{Vec(_mm512_mask_blend_ps(m.v[I], static_cast<__m512>(if_false.v[I]), static_cast<__m512>(if_true.v[I])))...}};
  }
  static GANSVC_INLINE V ones_where(const Mask& m) {
    return {{Vec(_mm512_maskz_mov_ps(m.v[I], _mm512_set1_ps(1.0f)))...}};
  }
  static GANSVC_INLINE V add_where(const Mask& m, const V& a, const V& b) {
    return {{Vec(_mm512_mask_add_ps(static_cast<__m512>(a.v[I]), m.v[I], static_cast<__m512>(a.v[I]),
                                    static_cast<__m512>(b.v[I])))...}};
  }
  static GANSVC_INLINE V sub_where(const Mask& m, const V& a, const V& b) {
    return {{Vec(_mm512_mask_sub_ps(static_cast<__m512>(a.v[I]), m.v[I], static_cast<__m512>(a.v[I]),
                                    static_cast<__m512>(b.v[I])))...}};
  }
  static GANSVC_INLINE V mul_where(const Mask& m, const V& a, const V& b) {
    return {{Vec(_mm512_mask_mul_ps(static_cast<__m512>(a.v[I]), m.v[I], static_cast<__m512>(a.v[I]),
                                    static_cast<__m512>(b.v[I])))...}};
  }
};

template <int K>
struct VecMasks<float, K> : MaskRegisters<K> {};
#endif

template <typename Scalar, int K = kPack<Scalar>>
struct VecMath {
  using T = Scalar;
  using Vec = at::vec::Vectorized<Scalar>;
  using V = Pack<Vec, K>;
  using Masks = VecMasks<Scalar, K>;
  using Mask = typename Masks::Mask;
  using Ops = PackOf<Vec, K>;
  static GANSVC_INLINE V splat(T x) { return Ops::splat(x); }
  static GANSVC_INLINE V exp_nonpositive(const V& x) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<T, float>) {
      return pack_cast<Vec>(exp_nonpositive_floats<RawPackOps<K>>(pack_cast<RawFloats>(x)));
    }
#endif
    return Ops::exp(x);
  }
  static GANSVC_INLINE V log(const V& x) { return Ops::log(x); }
  static GANSVC_INLINE V abs(const V& x) { return Ops::abs(x); }
  static GANSVC_INLINE V neg_abs(const V& x) { return Ops::bit_or(x, splat(T(-0.0))); }  // the sign bit set
  static GANSVC_INLINE V max(const V& a, const V& b) { return Ops::maximum(a, b); }  // propagates NaN
  static GANSVC_INLINE V select(const Mask& m, const V& if_true, const V& if_false) {
    return Masks::select(m, if_true, if_false);
  }
  static GANSVC_INLINE Mask gt(const V& a, const V& b) { return Masks::gt(a, b); }
  static GANSVC_INLINE Mask lt(const V& a, const V& b) { return Masks::lt(a, b); }
  static GANSVC_INLINE Mask ge(const V& a, const V& b) { return Masks::ge(a, b); }
  static GANSVC_INLINE Mask eq(const V& a, const V& b) { return Masks::eq(a, b); }
  static GANSVC_INLINE V ones_where(const Mask& m) { return Masks::ones_where(m); }
  static GANSVC_INLINE V add_where(const Mask& m, const V& a, const V& b) { return Masks::add_where(m, a, b); }
  static GANSVC_INLINE V sub_where(const Mask& m, const V& a, const V& b) { return Masks::sub_where(m, a, b); }
  static GANSVC_INLINE V mul_where(const Mask& m, const V& a, const V& b) { return Masks::mul_where(m, a, b); }
};

constexpr int kFlushEvery = 16;  // packs summed in T before moving into double

// The scalar policy of the CPU loop's tail (and of the whole loop in the x86-64 baseline build, below). On x86 its
// maximum is SSE's maxss / maxsd, which returns the second operand when unordered: max(a, b) keeps a NaN a, as
// ScalarMath's does. GCC compiled ScalarMath's comparisons and select into a branch, mispredicted every other
// time on random logits (hinge at 65 536 per side in the baseline build: ~580 -> 210 us, one thread).
template <typename T>
struct CpuScalarMath : ScalarMath<T> {
  using V = T;
  static GANSVC_INLINE V max(V a, V b) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) return _mm_cvtss_f32(_mm_max_ss(_mm_set_ss(b), _mm_set_ss(a)));
    if constexpr (std::is_same_v<T, double>) return _mm_cvtsd_f64(_mm_max_sd(_mm_set_sd(b), _mm_set_sd(a)));
#endif
    return ScalarMath<T>::max(a, b);
  }
};

// The x86-64 baseline build runs the scalar loop only: its at::vec is ATen's generic fallback, whose comparisons,
// selects and maximum loop over the lanes with a branch each, mispredicted every other lane on random logits
// (at 65 536 logits per side, one thread: bce 1.64 -> 1.15 ms, wasserstein 649 -> 120 us, hinge 600 -> 210 us with
// CpuScalarMath's maximum). Elsewhere (aarch64's baseline build has ATen's NEON vectors) the vector loop runs.
#if defined(CPU_CAPABILITY_DEFAULT) && defined(__x86_64__)
constexpr bool kScalarLoopOnly = true;
#else
constexpr bool kScalarLoopOnly = false;
#endif

// Lane-wise double accumulators of a pack: a flush converts each float lane and adds it to its own double lane,
// a loop the compiler vectorises (convert + add per vector), where a horizontal sum ran one dependent scalar
// add per lane and held the out-of-order window up behind it. The lanes are summed once, at the block's end.
template <typename Vec, int K>
struct LaneSums {
  using T = typename Vec::value_type;
  static constexpr int kLanes = K * Vec::size();
  alignas(64) double lanes[kLanes] = {};
  GANSVC_INLINE void flush(const Pack<Vec, K>& p) {
    alignas(64) T values[kLanes];
    PackOf<Vec, K>::store(p, values);
    for (int i = 0; i < kLanes; ++i) lanes[i] += values[i];
  }
  double total() const {
    double s = 0;
    for (int i = 0; i < kLanes; ++i) s += lanes[i];
    return s;
  }
};

// Runs `term(x) -> {loss, grad, stat[, correct]}` over logits [begin, end): writes grad * scale, returns sums.
// Term is a functor called on a pack of vectors (the SIMD math policy) and on a scalar (the scalar policy, for
// the tail): the same formula. A functor with forced-inline calls, not a lambda: GCC left the lambda
// out of line, and its 128-byte result then went through memory on every vector.
template <typename T, bool kHasCorrect, typename Term>
Sums run_block(const T* logits, T* grad, int64_t begin, int64_t end, T scale, const Term& term) {
  using M = VecMath<T>;
  using Ops = typename M::Ops;
  constexpr int64_t kStep = kPack<T> * M::Vec::size();
  Sums sums;
  typename M::V acc_loss = M::splat(T(0)), acc_stat = M::splat(T(0)), acc_correct = M::splat(T(0));
  LaneSums<typename M::Vec, kPack<T>> lane_loss, lane_stat, lane_correct;
  const typename M::V vscale = M::splat(scale), one = M::splat(T(1));
  int64_t i = begin;
  int pending = 0;
  for (; !kScalarLoopOnly && i + kStep <= end; i += kStep) {
    auto t = term(Ops::loadu(logits + i));
    Ops::store(t.grad * vscale, grad + i);
    acc_loss = acc_loss + t.loss;
    acc_stat = acc_stat + t.stat;
    if constexpr (kHasCorrect) acc_correct = M::add_where(t.correct, acc_correct, one);
    if (++pending == kFlushEvery) {
      lane_loss.flush(acc_loss);
      lane_stat.flush(acc_stat);
      if constexpr (kHasCorrect) lane_correct.flush(acc_correct);
      acc_loss = acc_stat = acc_correct = M::splat(T(0));
      pending = 0;
    }
  }
  lane_loss.flush(acc_loss);
  lane_stat.flush(acc_stat);
  if constexpr (kHasCorrect) lane_correct.flush(acc_correct);
  sums.loss = lane_loss.total();
  sums.stat = lane_stat.total();
  if constexpr (kHasCorrect) sums.correct = lane_correct.total();
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
  // Not a std::vector: GCC 13 marks std::allocator's members always_inline, and inlining them into this
  // target("avx2") / target("avx512f") code fails with "target specific option mismatch".
  std::unique_ptr<Sums[]> partial(new Sums[blocks]);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) partial[k] = run(k);
  });
  for (int64_t k = 0; k < blocks; ++k) add(k, partial[k]);
  return total;
}

// kUnitLabel: the real label is the constant 1 (no label smoothing, the common case), so the label test in d_term
// folds away at compile time instead of running once per pack in the loop.
template <typename T, DKind K, bool kIsReal, bool kUnitLabel>
struct DSideTerm {
  T real_label;
  GANSVC_INLINE T label() const { return kUnitLabel ? T(1) : real_label; }
  GANSVC_INLINE DTerm<VecMath<T>> operator()(const typename VecMath<T>::V& s) const {
    return d_term<VecMath<T>>(K, kIsReal, s, label());
  }
  GANSVC_INLINE DTerm<CpuScalarMath<T>> operator()(T s) const {
    return d_term<CpuScalarMath<T>>(K, kIsReal, s, label());
  }
};

template <typename T, DKind K, bool kUnitLabel>
DSums d_sides(const DArgs<T>& a) {
  const auto label = static_cast<T>(a.real_label);
  using Real = Side<T, true, DSideTerm<T, K, true, kUnitLabel>>;
  using Fake = Side<T, true, DSideTerm<T, K, false, kUnitLabel>>;
  const auto [real, fake] = run_sides(Real{a.real, a.grad_real, a.n_real, {label}},
                                      Fake{a.fake, a.grad_fake, a.n_fake, {label}});
  return {real, fake};
}

// Only bce reads the real label.
template <typename T, DKind K>
DSums d_both(const DArgs<T>& a) {
  if (K == DKind::kBce && static_cast<T>(a.real_label) != T(1)) return d_sides<T, K, false>(a);
  return d_sides<T, K, true>(a);
}

template <typename T, GKind K>
struct GSideTerm {
  GANSVC_INLINE GTerm<VecMath<T>> operator()(const typename VecMath<T>::V& s) const {
    return g_term<VecMath<T>>(K, s);
  }
  GANSVC_INLINE GTerm<CpuScalarMath<T>> operator()(T s) const { return g_term<CpuScalarMath<T>>(K, s); }
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
