// The FID core: Tr((S1 S2)^{1/2}) without scipy.linalg.sqrtm, the Fréchet distance, and streaming
// feature moments. Everything here is device-agnostic ATen code (matmuls, Cholesky, eigvalsh); the
// only device-specific pieces are the fused element kernels it calls through the dispatcher
// (fid_elementwise_cpu.cpp / fid_elementwise_cuda.cu). The same functions are registered for CPU
// and CUDA; "auto" picks the eigen route on CPU and Newton–Schulz on GPUs.
//
// Why the routes are exact: the eigenvalues of S1 S2 are those of Fᵀ S2 F for any F Fᵀ = S1, and with
// S2 = G Gᵀ they are the squared singular values of C = Gᵀ F, so Tr((S1 S2)^{1/2}) = ||C||_* (the
// nuclear norm). F and G are Cholesky factors where the covariance is positive definite, and
// eigen-factors with the zero modes dropped where it is not (dead feature units make that common),
// so every eigenvalue problem solved is symmetric and no complex arithmetic appears.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "fid/fid.h"

// LAPACK's dsyevd (LP64) as the PyTorch build exports it for ATen (MKL or OpenBLAS). Weak: where a build does
// not export it the pointer is null and eigenvalues_lower goes through at::linalg_eigvalsh, instead of the
// extension failing to load.
extern "C" void dsyevd_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
                        double* work, const int* lwork, int* iwork, const int* liwork, int* info)
    __attribute__((weak));

namespace gansvc {
namespace fid {
namespace {

constexpr double kEps = std::numeric_limits<double>::epsilon();
// Safety factor on the first-order rounding analysis behind the reported error bound (mirrors
// gansvc.ops.fid_reference._ROUNDING_FACTOR).
constexpr double kRoundingFactor = 4.0;
// Rounding leaves eigenvalues of a PSD matrix down to about -sqrt(d)·eps·λmax (eps of the dtype the
// covariance was computed in: float32 statistics carry ~1e-7 noise). Eigenvalues below
// -psd_tolerance·λmax mean the input is not a covariance matrix, and we say so instead of clamping
// a real error away; above it they are clamped at 0.
double psd_tolerance(int64_t d, std::initializer_list<at::ScalarType> input_types) {
  double eps = kEps;
  for (const auto type : input_types) {
    if (type == at::kFloat) eps = std::max(eps, 1.1920929e-7);
    if (type == at::kHalf) eps = std::max(eps, 9.765625e-4);
    if (type == at::kBFloat16) eps = std::max(eps, 7.8125e-3);
  }
  return std::max(1.5e-8, 100.0 * std::sqrt(static_cast<double>(d)) * eps);
}
// Relative asymmetry accepted in a covariance (float32 statistics are symmetric to ~1e-7).
constexpr double kSymmetryTolerance = 1e-5;
// Doubles per float64 chunk of a feature batch (16 MB): the temporaries stay at 2 chunks whatever
// the batch size, and narrow features still get chunks of many rows (few, large ATen calls).
constexpr int64_t kMomentChunkElements = int64_t{1} << 21;
// Diagonal blocks of the CPU Cholesky factorisation (lower_cholesky).
constexpr int64_t kCholeskyBlock = 256;
// Block size of the triangular-aware congruence Lᵀ S L (1.27 d³ flops instead of 4 d³).
constexpr int64_t kCongruenceBlock = 256;
// Block size of the lower-triangle Gram update of the feature moments.
constexpr int64_t kGramBlock = 256;

// How a trace was computed; mirrored by gansvc.ops.fid.ROUTES.
enum class Route : int64_t { kCholesky = 1, kEigh = 2, kNewtonSchulz = 3, kSamples = 4, kSamplesNewtonSchulz = 5 };

enum class Method { kAuto, kEigen, kNewtonSchulz };

struct TraceResult {
  double value = 0.0;
  Route route = Route::kCholesky;
  int64_t iterations = 0;
  double bound = 0.0;  // bound on the relative error of `value` (truncation + rounding; see gansvc.ops.fid)
  bool fell_back = false;
  int64_t rank = 0;  // size of the problem after dead units / zero modes were removed

  std::tuple<at::Tensor, at::Tensor> as_tensors(const at::TensorOptions& options) const {
    at::Tensor info = at::tensor({static_cast<double>(route), static_cast<double>(iterations), bound,
                                  fell_back ? 1.0 : 0.0, static_cast<double>(rank)},
                                 at::TensorOptions().dtype(at::kDouble));
    return {at::scalar_tensor(value, options), info};
  }
};

Method parse_method(c10::string_view method) {
  if (method == "auto") return Method::kAuto;
  if (method == "eigh") return Method::kEigen;
  if (method == "newton-schulz") return Method::kNewtonSchulz;
  TORCH_CHECK_VALUE(false, "method must be 'auto', 'eigh' or 'newton-schulz', got '", method, "'");
}

bool use_newton_schulz(Method method, const at::Tensor& on) {
  return method == Method::kNewtonSchulz || (method == Method::kAuto && !on.is_cpu());
}

void check_finite(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(at::isfinite(t).all().item<bool>(), name, " contains NaN or Inf");
}

// The element kernels go through the dispatcher, which picks the CPU or the CUDA version.
at::Tensor call_ns_polar_step(at::Tensor& x, const at::Tensor& q, const at::Tensor& b) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gansvc::ns_polar_step_", "")
                       .typed<at::Tensor(at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(x, q, b);
}

at::Tensor call_sum_squared_difference(const at::Tensor& a, const at::Tensor& b) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gansvc::sum_squared_difference", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(a, b);
}

std::tuple<at::Tensor, at::Tensor> call_symmetrize_checked(const at::Tensor& s) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gansvc::symmetrize_checked", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>();
  return op.call(s);
}

void check_covariance_shape(const at::Tensor& sigma, const char* name) {
  TORCH_CHECK_VALUE(sigma.dim() == 2 && sigma.size(0) == sigma.size(1), name,
                    " must be a square covariance matrix [d, d], got shape ", sigma.sizes());
  TORCH_CHECK_VALUE(sigma.size(0) > 0, name, " is empty (d = 0)");
  TORCH_CHECK_VALUE(at::isFloatingType(sigma.scalar_type()), name, " must be a floating-point tensor, got ",
                    sigma.scalar_type());
}

// The checks on symmetrize_checked's statistics `stats` of the float64 matrix s, and on s's diagonal.
void check_covariance(const at::Tensor& s, const at::Tensor& stats_device, const char* name, double psd_tol) {
  const at::Tensor stats = stats_device.cpu();
  const double* st = stats.const_data_ptr<double>();
  TORCH_CHECK_VALUE(st[2] == 0.0, name, " contains NaN or Inf (", static_cast<int64_t>(st[2]), " entries)");
  TORCH_CHECK_VALUE(st[1] <= kSymmetryTolerance * st[0], name, " is not symmetric: max |S - Sᵀ| = ", st[1],
                    " for max |S| = ", st[0]);
  const double min_variance = s.diagonal().min().item<double>();
  TORCH_CHECK_VALUE(min_variance >= -psd_tol * st[0], name,
                    " is not a covariance matrix: it has a negative variance ", min_variance, " on its diagonal");
}

// float64, contiguous, finite, symmetric (checked, then made exactly symmetric) [d, d]: one fused
// pass (symmetrize_checked) over the matrix, then a look at its diagonal. The result is the call's own copy.
at::Tensor prepare_covariance(const at::Tensor& sigma, const char* name, double psd_tol) {
  check_covariance_shape(sigma, name);
  auto [s, stats] = call_symmetrize_checked(sigma.to(at::kDouble).contiguous());
  check_covariance(s, stats, name, psd_tol);
  return s;
}

// A covariance the call only reads: sigma itself where it is a contiguous float64 CPU matrix that one
// read-only pass (symmetry_stats_cpu) finds exactly symmetric and finite, as covariances computed by
// gansvc, np.cov or a BLAS rank-k update are; else prepare_covariance's copy. At d = 2 048 a fresh copy costs
// ~8 ms of page faults on two threads, ~2 % of the trace.
struct ReadableCovariance {
  at::Tensor s;
  bool own;  // s is the call's own copy, which it may overwrite
};

ReadableCovariance prepare_covariance_to_read(const at::Tensor& sigma, const char* name, double psd_tol) {
  check_covariance_shape(sigma, name);
  if (sigma.is_cpu() && sigma.scalar_type() == at::kDouble && sigma.is_contiguous()) {
    const at::Tensor stats = symmetry_stats_cpu(sigma);
    const double* st = stats.const_data_ptr<double>();
    if (st[1] == 0.0 && st[2] == 0.0) {
      check_covariance(sigma, stats, name, psd_tol);
      return {sigma, false};
    }
  }
  return {prepare_covariance(sigma, name, psd_tol), true};
}

void check_same_problem(const at::Tensor& a, const at::Tensor& b, const char* name_a, const char* name_b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), name_a, " and ", name_b, " must be on the same device, got ",
                    a.device(), " and ", b.device());
}

// Writes the lower Cholesky factor of the symmetric, contiguous CPU matrix a over its lower triangle; false when
// the factorisation fails, with the lower triangle then partly overwritten. Only the diagonal tiles
// (kCholeskyBlock wide) are written above the diagonal, so the rest of the upper triangle still holds S and a
// failure can be undone (restore_lower). The algorithm of LAPACK's blocked dpotrf (right-looking) spelled out in
// ATen calls: potrf on each diagonal block, a triangular solve for the panel under it, and the trailing update
// as GEMMs over its lower block triangle only. MKL's dpotrf ran at ~20 GFLOP/s on one core at d = 2 048
// (0.146 s), this at GEMM speed (0.081 s; two threads 0.085 -> 0.047 s), with the same backward stability.
bool factor_lower_in_place(at::Tensor& a) {
  const int64_t d = a.size(0);
  for (int64_t k = 0; k < d; k += kCholeskyBlock) {
    const int64_t b = std::min(kCholeskyBlock, d - k);
    at::Tensor diagonal = a.narrow(0, k, b).narrow(1, k, b);
    auto [lkk, info] = at::linalg_cholesky_ex(diagonal, /*upper=*/false, /*check_errors=*/false);
    if (info.item<int64_t>() != 0) return false;
    diagonal.copy_(lkk);
    const int64_t rest = d - k - b;
    if (rest == 0) break;
    // The panel L21 = A21 L11⁻ᵀ, i.e. L11 L21ᵀ = A21ᵀ.
    at::Tensor panel_view = a.narrow(0, k + b, rest).narrow(1, k, b);
    const at::Tensor panel = at::linalg_solve_triangular(lkk, panel_view.t(), /*upper=*/false).t().contiguous();
    panel_view.copy_(panel);
    // A22 -= L21 L21ᵀ on the lower block triangle (row block i, columns up to its diagonal), in place.
    for (int64_t i = 0; i < rest; i += kCholeskyBlock) {
      const int64_t h = std::min(kCholeskyBlock, rest - i);
      at::Tensor out = a.narrow(0, k + b + i, h).narrow(1, k + b, i + h);
      out.addmm_(panel.narrow(0, i, h), panel.narrow(0, 0, i + h).t(), /*beta=*/1, /*alpha=*/-1);
    }
  }
  return true;
}

// Copies of the diagonal tiles of s, the part of S that factor_lower_in_place overwrites above the diagonal.
std::vector<at::Tensor> diagonal_tiles(const at::Tensor& s) {
  std::vector<at::Tensor> tiles;
  for (int64_t i = 0; i < s.size(0); i += kCholeskyBlock) {
    const int64_t h = std::min(kCholeskyBlock, s.size(0) - i);
    tiles.push_back(s.narrow(0, i, h).narrow(1, i, h).clone());
  }
  return tiles;
}

// Undoes a failed factor_lower_in_place: the diagonal tiles from their copies, the tiles below them mirrored
// from the upper triangle (a tile and its mirror do not overlap).
void restore_lower(at::Tensor& s, const std::vector<at::Tensor>& tiles) {
  for (int64_t i = 0, t = 0; i < s.size(0); i += kCholeskyBlock, ++t) {
    const int64_t h = std::min(kCholeskyBlock, s.size(0) - i);
    s.narrow(0, i, h).narrow(1, i, h).copy_(tiles[static_cast<size_t>(t)]);
    for (int64_t j = 0; j < i; j += kCholeskyBlock) {
      s.narrow(0, i, h).narrow(1, j, kCholeskyBlock).copy_(s.narrow(0, j, kCholeskyBlock).narrow(1, i, h).t());
    }
  }
}

// Lower Cholesky factor of s, or nothing when s is not (numerically) positive definite: a failed
// factorisation, or a pivot at the level of rounding, which would turn noise into a direction. LAPACK's potrf
// on the whole matrix on GPUs and for small d, factor_lower_in_place on the CPU. With `scratch` (s is the
// caller's own exactly symmetric copy) the factor is written into s's storage: a fresh matrix for it costs more
// than the copy (~8 ms of page faults for 32 MB at d = 2 048); s holds S again when nothing is returned.
std::optional<at::Tensor> cholesky_factor(at::Tensor& s, bool scratch) {
  const int64_t d = s.size(0);
  const double max_variance = s.diagonal().max().item<double>();
  const auto pivots_clear_rounding = [&](const at::Tensor& factor) {
    const double min_pivot = factor.diagonal().min().item<double>();
    return min_pivot * min_pivot > static_cast<double>(d) * kEps * max_variance;
  };
  if (!s.is_cpu() || d <= 2 * kCholeskyBlock) {
    auto [factor, info] = at::linalg_cholesky_ex(s, /*upper=*/false, /*check_errors=*/false);
    if (info.item<int64_t>() != 0 || !pivots_clear_rounding(factor)) return std::nullopt;
    return factor;
  }
  at::Tensor a = scratch ? s : s.clone(at::MemoryFormat::Contiguous);
  const std::vector<at::Tensor> tiles = scratch ? diagonal_tiles(a) : std::vector<at::Tensor>();
  if (factor_lower_in_place(a) && pivots_clear_rounding(a)) return a.tril_();
  if (scratch) restore_lower(a, tiles);
  return std::nullopt;
}

struct EigenFactor {
  at::Tensor factor;
  double dropped = 0.0;  // k·τ: the number of dropped modes times the cap on their eigenvalues
};

// F [d, r] with F Fᵀ = s, from an eigendecomposition with the zero modes (below the numerical rank
// threshold d·eps·λmax) dropped; r may be 0.
EigenFactor eigen_factor(const at::Tensor& s, const char* name, double psd_tol) {
  auto [values, vectors] = at::linalg_eigh(s);
  const double largest = values.max().item<double>();
  const double smallest = values.min().item<double>();
  TORCH_CHECK_VALUE(smallest >= -psd_tol * std::max(largest, 0.0), name,
                    " is not positive semi-definite: its smallest eigenvalue is ", smallest, " (largest ", largest,
                    ")");
  const double threshold = static_cast<double>(s.size(0)) * kEps * largest;
  const at::Tensor keep = (values > threshold).nonzero().squeeze(1);
  const double dropped = static_cast<double>(s.size(0) - keep.size(0)) * std::max(threshold, -smallest);
  return {vectors.index_select(1, keep) * values.index_select(0, keep).sqrt(), dropped};
}

// Factor of a covariance: its Cholesky factor when positive definite (nothing dropped), else its eigen-factor.
EigenFactor factor_of(const std::optional<at::Tensor>& cholesky, const at::Tensor& s, const char* name,
                      double psd_tol) {
  return cholesky ? EigenFactor{*cholesky, 0.0} : eigen_factor(s, name, psd_tol);
}

// Dropping modes E (rank k, ||E|| <= τ) from one covariance moves Tr((S1 S2)^½) by at most
// Tr((S_other^½ E S_other^½)^½) <= sqrt(k·τ·Tr(S_other)) (Rotfel'd: Tr sqrt is subadditive on PSD matrices).
double dropped_modes_error(double dropped, const at::Tensor& other) {
  return dropped > 0.0 ? std::sqrt(dropped * other.diagonal().sum().item<double>()) : 0.0;
}

// BLAS's dot of the flattened matrix where it is contiguous: at d = 2 048 in the trace on two threads
// at::linalg_vector_norm took ~3 ms, the dot half that.
double frobenius(const at::Tensor& t) {
  if (!t.is_contiguous() || t.scalar_type() != at::kDouble) return at::linalg_vector_norm(t).item<double>();
  const at::Tensor flat = t.view(-1);
  return std::sqrt(at::dot(flat, flat).item<double>());
}

// A relative bound; a zero trace with a zero error bound is exact, with a positive one unbounded.
double relative(double error, double value) {
  if (value > 0.0) return error / value;
  return error == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
}

// Y [m-1, d] with Yᵀ Y = Xcᵀ Xc (Xc the centred rows of x): no structural zero left. Centring leaves
// the m rows of Xc in the (m-1)-dimensional space orthogonal to the ones vector, so an m×m problem
// built on them has an exact zero eigenvalue that rounding turns into ±noise, and sqrt(noise) ~ 1e-8
// relative error when the noise comes out positive (which BLAS's summation order, and so the thread
// count and SIMD path, decides). The Householder reflection H taking 1/sqrt(m) to e1 is orthogonal;
// its rows 2..m are an orthonormal basis of that space, so Y = (H Xc)[1:] carries the same covariance.
at::Tensor centred_contrasts(const at::Tensor& x) {
  const int64_t m = x.size(0);
  const at::Tensor xc = x - x.mean(0);
  const double root_m = std::sqrt(static_cast<double>(m));
  const at::Tensor w = xc.sum(0) / root_m - xc[0];  // vᵀ Xc for v = 1/sqrt(m) - e1
  const double vtv = 2.0 - 2.0 / root_m;
  return xc.narrow(0, 1, m - 1) - w * (2.0 / (vtv * root_m));
}

// An uninitialised n×n matrix, stored column-major. The products below are written in this layout: it is
// LAPACK's, so eigvalsh copies them as they are, where a row-major matrix is copied transposed (15 ms at d = 2 048,
// an eighth of the trace term on two threads); GEMMs write it as readily. Only their lower block triangle is
// written, and only the lower triangle is read (sum_sqrt_eigenvalues), so the rest is not zeroed either.
at::Tensor column_major_square(int64_t n, const at::TensorOptions& options) {
  return at::empty({n, n}, options).t();
}

// The lower triangle of Lᵀ S L for lower-triangular L, column-major (eigvalsh reads the lower one only), by
// block columns j: X = S[j:, j:] L[j:, j-block] (L's rows above j are zero), then each 256-row block r of
// M[rows >= j, j-block] = L[j:, j:]ᵀ X as L[r:, r-block]ᵀ X[r - j:], skipping L's zero upper triangle: 1.27 d³
// flops (10.9 GFLOP at d = 2 048) in GEMMs whose output goes straight to its place. S is only read. With
// `in_place` (L is the call's own) M is written over L's storage: block column j of M is L's row block j right
// of its diagonal tile, which no later block reads (they read rows below it); only the diagonal tile, which the
// same block column's last product reads, goes through a buffer. So no d×d matrix is allocated: a fresh one
// costs ~8 ms of page faults at d = 2 048 on two threads. Two threads: 105 -> 81 ms against computing
// Wᵀ = Lᵀ S first (1.6 d³ flops, S's storage overwritten, its rows copied through a buffer).
at::Tensor lower_congruence(const at::Tensor& lower, const at::Tensor& s, bool in_place) {
  const int64_t d = s.size(0);
  at::Tensor m = in_place ? lower.t() : column_major_square(d, s.options());
  const at::Tensor buffer = at::empty({kCongruenceBlock * d}, s.options());
  const at::Tensor tile = in_place ? at::empty({kCongruenceBlock, kCongruenceBlock}, s.options()) : at::Tensor();
  for (int64_t j = 0; j < d; j += kCongruenceBlock) {
    const int64_t width = std::min(kCongruenceBlock, d - j);
    const at::Tensor panel = lower.narrow(0, j, d - j).narrow(1, j, width);
    at::Tensor x = buffer.narrow(0, 0, (d - j) * width).view({d - j, width});
    at::mm_out(x, s.narrow(0, j, d - j).narrow(1, j, d - j), panel);
    for (int64_t r = j + width; r < d; r += kCongruenceBlock) {
      const int64_t height = std::min(kCongruenceBlock, d - r);
      at::Tensor out = m.narrow(0, r, height).narrow(1, j, width);
      at::mm_out(out, lower.narrow(0, r, d - r).narrow(1, r, height).t(), x.narrow(0, r - j, d - r));
    }
    at::Tensor diagonal = m.narrow(0, j, width).narrow(1, j, width);
    if (in_place) {
      at::Tensor product = tile.narrow(0, 0, width).narrow(1, 0, width);
      diagonal.copy_(at::mm_out(product, panel.t(), x));
    } else {
      at::mm_out(diagonal, panel.t(), x);
    }
  }
  return m;
}

// The lower block triangle of a bᵀ (a, b: [n, k]), for a symmetric product whose eigenvalues are
// wanted: half the GEMM flops of the whole product.
at::Tensor lower_product(const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = a.size(0);
  at::Tensor m = column_major_square(n, a.options());
  for (int64_t i = 0; i < n; i += kCongruenceBlock) {
    const int64_t height = std::min(kCongruenceBlock, n - i);
    at::Tensor out = m.narrow(0, i, height).narrow(1, 0, i + height);
    at::mm_out(out, a.narrow(0, i, height), b.narrow(0, 0, i + height).t());
  }
  return m;
}

// Gram matrix of c on its smaller side: the non-zero eigenvalues are the squared singular values.
at::Tensor small_gram(const at::Tensor& c) {
  return c.size(0) <= c.size(1) ? at::mm(c, c.t()) : at::mm(c.t(), c);
}

// Eigenvalues, ascending, of the symmetric matrix whose lower triangle `sym` holds; `sym` is overwritten.
// at::linalg_eigvalsh copies its input for LAPACK: a fresh 32 MB at d = 2 048, ~7 ms with its page faults on two
// threads. A column-major float64 CPU matrix (lower_congruence's and lower_product's layout) goes to dsyevd as
// it is, with the workspace it asks for; anything else, or a build without dsyevd_, through ATen.
at::Tensor eigenvalues_lower(const at::Tensor& sym) {
  const int64_t n = sym.size(0);
  const bool lapack_layout = sym.is_cpu() && sym.scalar_type() == at::kDouble && sym.stride(0) == 1 &&
                             sym.stride(1) == n && n <= std::numeric_limits<int>::max() / n;
  if (dsyevd_ == nullptr || !lapack_layout) return at::linalg_eigvalsh(sym, "L");
  const int order = static_cast<int>(n);
  const char jobz = 'N', uplo = 'L';
  at::Tensor values = at::empty({n}, sym.options());
  double* a = sym.data_ptr<double>();
  double work_size = 0.0;
  int iwork_size = 0, info = 0;
  const int query = -1;
  dsyevd_(&jobz, &uplo, &order, a, &order, values.data_ptr<double>(), &work_size, &query, &iwork_size, &query, &info);
  TORCH_CHECK(info == 0, "dsyevd's workspace query failed (info ", info, ")");
  const int lwork = std::max(1, static_cast<int>(work_size)), liwork = std::max(1, iwork_size);
  at::Tensor work = at::empty({lwork}, sym.options());
  at::Tensor iwork = at::empty({liwork}, sym.options().dtype(at::kInt));
  dsyevd_(&jobz, &uplo, &order, a, &order, values.data_ptr<double>(), work.data_ptr<double>(), &lwork,
          iwork.data_ptr<int>(), &liwork, &info);
  TORCH_CHECK_LINALG(info == 0, "the symmetric eigensolver (dsyevd) did not converge (info ", info, ")");
  return values;
}

struct SqrtSum {
  double value = 0.0;
  double error = 0.0;  // bound on the absolute error of `value`
};

// Absolute perturbation allowed for each eigenvalue of an r×r problem matrix formed from the
// covariances by Cholesky / eigh factors and GEMMs (sums of `inner` products per entry), then solved
// by a backward-stable symmetric eigensolver: each step is backward stable to a small multiple of
// (r + inner)·eps times the product of its operands' norms, and Weyl's theorem moves every eigenvalue
// by at most the perturbation's norm. `scale` (a product of Frobenius norms) dominates those norms.
double rounding_allowance(int64_t r, int64_t inner, double scale) {
  return kRoundingFactor * static_cast<double>(r + inner) * kEps * scale;
}

// Σ sqrt(λ) over the eigenvalues of a symmetric PSD matrix (lower triangle read): one
// eigenvalues-only call. Eigenvalues inside the rounding-noise band are counted as 0: when a
// covariance is singular, its zero modes come out as ±ν noise (ν ~ d·eps·λmax) and the square roots
// of the positive half would add ~1e-8 relative error. The band is measured, not guessed: ν = |most
// negative eigenvalue| (a PSD matrix has none but noise), and eigenvalues below 2ν are
// indistinguishable from 0. Genuinely tiny eigenvalues, computed accurately (no negative noise), are
// kept; when positive noise hides among them, the bound says how much it can cost. The error bound:
// every eigenvalue may be off by the rounding allowance η, so a kept one contributes
// η / (sqrt(λ) + sqrt(λ - η)) and a zeroed one sqrt(band + η) (a true eigenvalue that small cannot be
// told from 0 in float64), plus the rounding of the roots and their sum.
//
// `sym` is consumed: the products handed in are this call's own, and LAPACK may work in their storage.
SqrtSum sum_sqrt_eigenvalues(const at::Tensor& sym, const char* culprit, const char* what, double psd_tol,
                             int64_t inner, double scale) {
  if (sym.numel() == 0) return {};
  const at::Tensor values = eigenvalues_lower(sym);
  const double largest = values.max().item<double>();
  const double smallest = values.min().item<double>();
  // `what` is congruent to (or, for the m×m route, shares the inertia of) `culprit` on the space
  // that matters, so a clearly negative eigenvalue of it means `culprit` is not a covariance.
  TORCH_CHECK_VALUE(smallest >= -psd_tol * std::max(largest, 0.0), culprit,
                    " is not positive semi-definite: ", what, " has the eigenvalue ", smallest, " (largest ",
                    largest, ")");
  const int64_t r = sym.size(0);
  const double band = smallest < 0.0 ? -2.0 * smallest : 0.0;
  const double eta = rounding_allowance(r, inner, scale);
  const at::Tensor kept = values.masked_select(values > band);
  const at::Tensor roots = kept.sqrt();
  SqrtSum result;
  result.value = roots.sum().item<double>();
  result.error = (eta / (roots + (kept - eta).clamp_min(0.0).sqrt())).sum().item<double>() +
                 static_cast<double>(r - kept.numel()) * std::sqrt(band + eta) +
                 static_cast<double>(r + 2) * kEps * result.value;
  return result;
}

// Rounding of the iteration, relative, first order: the GEMM that formed c [n, k] moves its nuclear
// norm by ||E||_* <= sqrt(n) ||E||_F <= sqrt(n)·k·eps·||c||_F, and the final blocked sum Tr(Xᵀ c)
// (||X||_F <= sqrt(n)) adds sqrt(n·k)·eps·sqrt(n)·||c||_F.
double iteration_rounding(const at::Tensor& c, double trace) {
  const double n = static_cast<double>(c.size(0)), k = static_cast<double>(c.size(1));
  return kRoundingFactor * std::sqrt(n) * (k + std::sqrt(n * k)) * kEps * frobenius(c) / trace;
}

struct NewtonSchulzResult {
  double value;
  int64_t iterations;
  double bound;
  bool verified;
};

// ||c||_* by the Newton–Schulz iteration for the polar factor, X <- X (3I - XᵀX)/2 from X0 = c/||c||_F:
// each singular value s of X follows s <- s(3 - s²)/2, which rises monotonically to 1 from any
// s in (0, 1] (zero stays zero: no square roots of negative rounding noise), so Tr(Xᵀc) = Σ u_i σ_i
// rises to Σ σ_i. Two GEMMs per step on the smaller Gram side.
//
// Stopping: when the trace itself stops changing (relative change <= rtol) the result is verified:
// with u_i <= 1, the error Σ σ_i (1 - u_i) <= Σ σ_i (1 - u_i²) <= sqrt(n) ||(I - X Xᵀ) c||_F, a
// bound computable with one more GEMM. It is accepted when bound / trace <= verify_tol. A small
// residual of X² against the target alone is not enough: unconverged tiny singular values leave
// a residual of σ² while the trace misses σ.
NewtonSchulzResult newton_schulz_nuclear_norm(const at::Tensor& c_in, int64_t max_iter, double rtol,
                                              double verify_tol) {
  const at::Tensor c = (c_in.size(0) <= c_in.size(1) ? c_in : c_in.t()).contiguous();  // rows <= cols
  const double scale = at::linalg_vector_norm(c).item<double>();                       // >= σ_max
  if (c.numel() == 0 || !(scale > 0.0)) return {0.0, 0, 0.0, true};
  const double n = static_cast<double>(c.size(0));
  at::Tensor x = c / scale;
  double trace = scale;  // Tr(X0ᵀ c) = ||c||_F² / ||c||_F
  double previous = std::numeric_limits<double>::quiet_NaN();
  double bound = std::numeric_limits<double>::infinity();
  for (int64_t step = 0;; ++step) {
    const at::Tensor gram = at::mm(x, x.t());
    if (step > 0 && std::abs(trace - previous) <= rtol * std::abs(trace)) {
      const double residual = call_sum_squared_difference(c, at::mm(gram, c)).item<double>();
      bound = std::sqrt(n * residual) / trace;
      // converged on the truncation bound; the reported bound adds the rounding
      if (bound <= verify_tol) return {trace, step, bound + iteration_rounding(c, trace), true};
    }
    if (step >= max_iter || !std::isfinite(trace)) return {trace, step, bound, false};
    previous = trace;
    trace = call_ns_polar_step(x, at::mm(gram, x), c).item<double>();
  }
}

// Indices of the features that vary in both sets. A zero variance makes the whole row and column
// of a PSD matrix zero, so S1 S2 is block-triangular there with a zero block: dropping those
// features leaves the non-zero eigenvalues of S1 S2 unchanged.
std::optional<at::Tensor> live_features(const at::Tensor& s1, const at::Tensor& s2) {
  const at::Tensor live = at::logical_and(s1.diagonal() > 0.0, s2.diagonal() > 0.0);
  if (live.all().item<bool>()) return std::nullopt;
  return live.nonzero().squeeze(1);
}

at::Tensor restrict(const at::Tensor& s, const at::Tensor& index) {
  return s.index_select(0, index).index_select(1, index).contiguous();
}

// s1 is the call's own copy; s2 too where s2_own, else the caller's (only read).
TraceResult trace_sqrt_product_impl(at::Tensor s1, at::Tensor s2, bool s2_own, bool newton_schulz, int64_t max_iter,
                                    double rtol, double verify_tol, double psd_tol) {
  TraceResult result;
  if (auto live = live_features(s1, s2)) {
    s1 = restrict(s1, *live);
    s2 = restrict(s2, *live);
    s2_own = true;
  }
  result.rank = s1.size(0);
  if (result.rank == 0) return result;
  const double scale = frobenius(s1) * frobenius(s2);
  const int64_t inner = 2 * result.rank;  // the factor, then two GEMMs of inner size d
  if (!newton_schulz) {
    // CPU default: one factor only. Tr((S1 S2)^½) is symmetric in S1 and S2, so whichever is
    // positive definite gives a Cholesky factor L and the eigenvalues of Lᵀ S L (the other one's
    // singularity is handled by the noise band of sum_sqrt_eigenvalues). Neither: eigh of S1 with
    // its zero modes dropped, F [d, r1], and the r1×r1 matrix Fᵀ S2 F.
    SqrtSum sum;
    // s1 is this call's own copy (prepare_covariance, restrict), exactly symmetric: on the CPU the factor works
    // in its storage (cholesky_factor), and so does the congruence, which only reads the other covariance. s2's
    // factor, needed only where s1 is not positive definite, is written over s2 where s2 is the call's own too.
    const bool in_place = s1.is_cpu();
    if (const auto l1 = cholesky_factor(s1, in_place)) {
      sum = sum_sqrt_eigenvalues(lower_congruence(*l1, s2, in_place), "sigma2", "L1ᵀ S2 L1", psd_tol, inner, scale);
    } else if (const auto l2 = cholesky_factor(s2, in_place && s2_own)) {
      sum = sum_sqrt_eigenvalues(lower_congruence(*l2, s1, in_place), "sigma1", "L2ᵀ S1 L2", psd_tol, inner, scale);
    } else {
      const EigenFactor f1 = eigen_factor(s1, "sigma1", psd_tol);
      result.route = Route::kEigh;
      result.rank = f1.factor.size(1);
      sum = sum_sqrt_eigenvalues(at::mm(f1.factor.t(), at::mm(s2, f1.factor)), "sigma2", "F1ᵀ S2 F1", psd_tol,
                                 inner, scale);
      sum.error += dropped_modes_error(f1.dropped, s2);
    }
    result.value = sum.value;
    result.bound = relative(sum.error, sum.value);
    return result;
  }
  // Newton–Schulz works on C = F2ᵀ F1 (both factors: Cholesky, or eigh with zero modes dropped),
  // whose nuclear norm is the trace; two GEMMs per step.
  const auto l1 = cholesky_factor(s1, /*scratch=*/false);
  const auto l2 = cholesky_factor(s2, /*scratch=*/false);
  result.route = (l1 && l2) ? Route::kCholesky : Route::kEigh;
  const EigenFactor f1 = factor_of(l1, s1, "sigma1", psd_tol);
  const EigenFactor f2 = factor_of(l2, s2, "sigma2", psd_tol);
  const double dropped_error = dropped_modes_error(f1.dropped, s2) + dropped_modes_error(f2.dropped, s1);
  const at::Tensor c = at::mm(f2.factor.t(), f1.factor);
  result.rank = std::min(c.size(0), c.size(1));
  const auto ns = newton_schulz_nuclear_norm(c, max_iter, rtol, verify_tol);
  result.iterations = ns.iterations;
  if (ns.verified) {
    result.value = ns.value;
    result.bound = ns.bound + relative(dropped_error, ns.value);
    result.route = Route::kNewtonSchulz;
    return result;
  }
  result.fell_back = true;
  const SqrtSum sum =
      sum_sqrt_eigenvalues(small_gram(c), "sigma1 or sigma2", "the Gram matrix of F2ᵀ F1", psd_tol, inner, scale);
  result.value = sum.value;
  result.bound = relative(sum.error + dropped_error, sum.value);
  return result;
}

void check_iteration_settings(int64_t max_iter, double rtol, double verify_tol) {
  TORCH_CHECK_VALUE(max_iter >= 1, "max_iter must be >= 1, got ", max_iter);
  TORCH_CHECK_VALUE(rtol > 0.0 && rtol < 1.0, "rtol must be in (0, 1), got ", rtol);
  TORCH_CHECK_VALUE(verify_tol > 0.0 && verify_tol < 1.0, "verify_tol must be in (0, 1), got ", verify_tol);
}

std::tuple<at::Tensor, at::Tensor> trace_sqrt_product(const at::Tensor& sigma1, const at::Tensor& sigma2,
                                                      c10::string_view method, int64_t max_iter, double rtol,
                                                      double verify_tol) {
  const Method parsed = parse_method(method);
  check_iteration_settings(max_iter, rtol, verify_tol);
  check_same_problem(sigma1, sigma2, "sigma1", "sigma2");
  const double psd_tol = psd_tolerance(sigma1.dim() == 2 ? sigma1.size(0) : 1,
                                       {sigma1.scalar_type(), sigma2.scalar_type()});
  at::Tensor s1 = prepare_covariance(sigma1, "sigma1", psd_tol);
  const ReadableCovariance s2 = prepare_covariance_to_read(sigma2, "sigma2", psd_tol);
  TORCH_CHECK_VALUE(s1.size(0) == s2.s.size(0), "sigma1 and sigma2 must have the same size, got ", s1.sizes(),
                    " and ", s2.s.sizes());
  const TraceResult result = trace_sqrt_product_impl(s1, s2.s, s2.own, use_newton_schulz(parsed, s1), max_iter, rtol,
                                                     verify_tol, psd_tol);
  return result.as_tensors(s1.options());
}

// Tr((S1 S2)^{1/2}) with S2 the covariance of `features2` [m, d], from an m×m problem: with X the
// centred features, S2 = XᵀX/(m-1) and the non-zero eigenvalues of S1 S2 are those of the
// symmetric X S1 Xᵀ/(m-1) (the FastFID observation). Exact where m < d: the d×d routes would carry
// d - m rounding-level eigenvalues.
std::tuple<at::Tensor, at::Tensor> trace_sqrt_product_lowrank(const at::Tensor& sigma1, const at::Tensor& features2,
                                                              c10::string_view method, int64_t max_iter,
                                                              double rtol, double verify_tol) {
  const Method parsed = parse_method(method);
  check_iteration_settings(max_iter, rtol, verify_tol);
  check_same_problem(sigma1, features2, "sigma1", "features2");
  const double psd_tol = psd_tolerance(sigma1.dim() == 2 ? sigma1.size(0) : 1,
                                       {sigma1.scalar_type(), features2.scalar_type()});
  at::Tensor s1 = prepare_covariance_to_read(sigma1, "sigma1", psd_tol).s;  // only read below
  TORCH_CHECK_VALUE(features2.dim() == 2, "features2 must be a matrix [m, d] of feature rows, got shape ",
                    features2.sizes());
  TORCH_CHECK_VALUE(features2.size(1) == s1.size(0), "features2 has ", features2.size(1),
                    " features per row but sigma1 is ", s1.size(0), " x ", s1.size(0));
  TORCH_CHECK_VALUE(features2.size(0) >= 2, "features2 needs at least 2 rows for a covariance, got ",
                    features2.size(0));
  const int64_t m = features2.size(0);
  at::Tensor x = features2.to(at::kDouble);
  check_finite(x, "features2");
  x = centred_contrasts(x) * (1.0 / std::sqrt(static_cast<double>(m - 1)));  // [m-1, d], S2 = xᵀ x
  const at::Tensor live = s1.diagonal() > 0.0;
  if (!live.all().item<bool>()) {
    const at::Tensor index = live.nonzero().squeeze(1);
    s1 = restrict(s1, index);
    x = x.index_select(1, index);
  }
  x = x.contiguous();
  TraceResult result;
  result.route = Route::kSamples;
  result.rank = std::min(m - 1, s1.size(0));
  if (s1.size(0) == 0) return result.as_tensors(s1.options());
  const double x_norm = frobenius(x);
  const double scale = frobenius(s1) * x_norm * x_norm;  // ||x||_F² = Tr(S2) >= ||S2||_F
  const int64_t inner = m + 2 * s1.size(0);  // the centring and contrasts (m rows), then two GEMMs of inner size d
  if (use_newton_schulz(parsed, s1)) {
    const EigenFactor f1 = factor_of(cholesky_factor(s1, /*scratch=*/false), s1, "sigma1", psd_tol);
    const double dropped_error = std::sqrt(f1.dropped) * x_norm;  // sqrt(k·τ·Tr(S2))
    const at::Tensor c = at::mm(x, f1.factor);  // [m-1, r1]
    const auto ns = newton_schulz_nuclear_norm(c, max_iter, rtol, verify_tol);
    result.iterations = ns.iterations;
    if (ns.verified) {
      result.value = ns.value;
      result.bound = ns.bound + relative(dropped_error, ns.value);
      result.route = Route::kSamplesNewtonSchulz;
      return result.as_tensors(s1.options());
    }
    result.fell_back = true;
    const SqrtSum sum = sum_sqrt_eigenvalues(small_gram(c), "sigma1", "the Gram matrix of X F1", psd_tol, inner, scale);
    result.value = sum.value;
    result.bound = relative(sum.error + dropped_error, sum.value);
    return result.as_tensors(s1.options());
  }
  const SqrtSum sum =
      sum_sqrt_eigenvalues(lower_product(at::mm(x, s1), x), "sigma1", "X S1 Xᵀ/(m-1)", psd_tol, inner, scale);
  result.value = sum.value;
  result.bound = relative(sum.error, sum.value);
  return result.as_tensors(s1.options());
}

at::Tensor prepare_mean(const at::Tensor& mu, int64_t d, const char* name) {
  TORCH_CHECK_VALUE(mu.dim() == 1 && mu.size(0) == d, name, " must be a vector of ", d, " means, got shape ",
                    mu.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(mu.scalar_type()), name, " must be a floating-point tensor, got ",
                    mu.scalar_type());
  at::Tensor m = mu.to(at::kDouble);
  check_finite(m, name);
  return m;
}

// ||mu1 - mu2||² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2}).
at::Tensor frechet_distance(const at::Tensor& mu1, const at::Tensor& sigma1, const at::Tensor& mu2,
                            const at::Tensor& sigma2, c10::string_view method) {
  TORCH_CHECK_VALUE(sigma1.dim() == 2, "sigma1 must be a square covariance matrix [d, d], got shape ",
                    sigma1.sizes());
  const int64_t d = sigma1.size(0);
  check_same_problem(mu1, sigma1, "mu1", "sigma1");
  check_same_problem(mu2, sigma1, "mu2", "sigma1");
  const at::Tensor diff = prepare_mean(mu1, d, "mu1") - prepare_mean(mu2, d, "mu2");
  const auto [trace, info] = trace_sqrt_product(sigma1, sigma2, method, 100, 1e-10, 1e-10);
  const at::Tensor traces =
      sigma1.to(at::kDouble).diagonal().sum() + sigma2.to(at::kDouble).diagonal().sum() - 2.0 * trace;
  return diff.dot(diff) + traces;
}

void check_moments(const at::Tensor& mean, const at::Tensor& m2, int64_t count, const char* prefix) {
  TORCH_CHECK_VALUE(mean.dim() == 1 && mean.scalar_type() == at::kDouble, prefix,
                    "mean must be a float64 vector [d], got ", mean.scalar_type(), " ", mean.sizes());
  const int64_t d = mean.size(0);
  TORCH_CHECK_VALUE(m2.dim() == 2 && m2.size(0) == d && m2.size(1) == d && m2.scalar_type() == at::kDouble, prefix,
                    "m2 must be a float64 matrix [", d, ", ", d, "], got ", m2.scalar_type(), " ", m2.sizes());
  TORCH_CHECK_VALUE(mean.device() == m2.device(), prefix, "mean and ", prefix, "m2 must be on the same device");
  TORCH_CHECK_VALUE(m2.is_contiguous(), prefix, "m2 must be contiguous");
  TORCH_CHECK_VALUE(count >= 0, prefix, "count must be >= 0, got ", count);
}

// Chan et al.'s pairwise update: (n_a, mean_a, M2_a) + (n_b, mean_b, M2_b), M2 = Σ (x - mean)(x - mean)ᵀ.
// Centred sums do not lose digits to E[xxᵀ] - μμᵀ cancellation when |μ| >> σ (ReLU features).
void combine_moments(at::Tensor& mean, at::Tensor& m2, int64_t count, const at::Tensor& other_mean,
                     int64_t other_count) {
  const double total = static_cast<double>(count) + static_cast<double>(other_count);
  const at::Tensor delta = other_mean - mean;
  m2.addr_(delta, delta, 1.0, static_cast<double>(count) * static_cast<double>(other_count) / total);
  mean.add_(delta, static_cast<double>(other_count) / total);
}

// m2 += xᵀx on the lower block triangle only (diagonal blocks in full): 56 % of a full GEMM's flops
// at d = 2048 — the symmetric rank-k update ATen does not expose. mirror_lower_blocks() copies the
// lower off-diagonal blocks over the upper ones afterwards (the rank-1 terms of combine_moments are
// added to both halves and need no mirroring, but are overwritten by equal values).
void add_lower_gram(at::Tensor& m2, const at::Tensor& x) {
  const int64_t d = m2.size(0);
  for (int64_t i = 0; i < d; i += kGramBlock) {
    const int64_t height = std::min(kGramBlock, d - i);
    m2.narrow(0, i, height).narrow(1, 0, i + height).addmm_(x.narrow(1, i, height).t(), x.narrow(1, 0, i + height));
  }
}

void mirror_lower_blocks(at::Tensor& m2) {
  const int64_t d = m2.size(0);
  for (int64_t i = kGramBlock; i < d; i += kGramBlock) {
    const int64_t height = std::min(kGramBlock, d - i);
    m2.narrow(0, 0, i).narrow(1, i, height).copy_(m2.narrow(0, i, height).narrow(1, 0, i).t());
  }
}

int64_t feature_moments_update_(at::Tensor& mean, at::Tensor& m2, int64_t count, const at::Tensor& batch) {
  check_moments(mean, m2, count, "");
  const int64_t d = mean.size(0);
  TORCH_CHECK_VALUE(batch.dim() == 2 && batch.size(1) == d, "batch must be a matrix [n, ", d,
                    "] of feature rows, got shape ", batch.sizes());
  TORCH_CHECK_VALUE(batch.device() == mean.device(), "batch is on ", batch.device(), " but the statistics are on ",
                    mean.device());
  TORCH_CHECK_VALUE(at::isFloatingType(batch.scalar_type()) || at::isIntegralType(batch.scalar_type(), false),
                    "batch must hold real numbers, got ", batch.scalar_type());
  const int64_t chunk_rows = std::max<int64_t>(1, kMomentChunkElements / d);
  for (int64_t start = 0; start < batch.size(0); start += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, batch.size(0) - start);
    // Always a copy (also of float64 input), so that centring it in place never touches `batch`.
    at::Tensor chunk = batch.narrow(0, start, rows).to(at::kDouble, /*non_blocking=*/false, /*copy=*/true);
    check_finite(chunk, "batch");
    const at::Tensor chunk_mean = chunk.mean(0);
    chunk.sub_(chunk_mean);
    add_lower_gram(m2, chunk);
    combine_moments(mean, m2, count, chunk_mean, rows);
    count += rows;
  }
  mirror_lower_blocks(m2);
  return count;
}

int64_t feature_moments_merge_(at::Tensor& mean, at::Tensor& m2, int64_t count, const at::Tensor& other_mean,
                               const at::Tensor& other_m2, int64_t other_count) {
  check_moments(mean, m2, count, "");
  check_moments(other_mean, other_m2, other_count, "other_");
  TORCH_CHECK_VALUE(other_mean.size(0) == mean.size(0), "cannot merge statistics of ", other_mean.size(0),
                    " features into statistics of ", mean.size(0));
  TORCH_CHECK_VALUE(other_mean.device() == mean.device(), "other statistics are on ", other_mean.device(),
                    ", these on ", mean.device());
  if (other_count == 0) return count;
  m2.add_(other_m2);
  combine_moments(mean, m2, count, other_mean, other_count);
  return count + other_count;
}

}  // namespace
}  // namespace fid
}  // namespace gansvc

TORCH_LIBRARY_FRAGMENT(gansvc, m) {
  m.def("trace_sqrt_product(Tensor sigma1, Tensor sigma2, str method=\"auto\", int max_iter=100, "
        "float rtol=1e-10, float verify_tol=1e-10) -> (Tensor trace, Tensor info)");
  m.def("trace_sqrt_product_lowrank(Tensor sigma1, Tensor features2, str method=\"auto\", int max_iter=100, "
        "float rtol=1e-10, float verify_tol=1e-10) -> (Tensor trace, Tensor info)");
  m.def("frechet_distance(Tensor mu1, Tensor sigma1, Tensor mu2, Tensor sigma2, str method=\"auto\") -> Tensor");
  m.def("feature_moments_update_(Tensor(a!) mean, Tensor(b!) m2, int count, Tensor batch) -> int");
  m.def("feature_moments_merge_(Tensor(a!) mean, Tensor(b!) m2, int count, Tensor other_mean, Tensor other_m2, "
        "int other_count) -> int");
  // The fused element kernels of the Newton–Schulz iteration (CPU and CUDA versions).
  m.def("ns_polar_step_(Tensor(a!) x, Tensor q, Tensor b) -> Tensor");
  m.def("sum_squared_difference(Tensor a, Tensor b) -> Tensor");
  m.def("symmetrize_checked(Tensor s) -> (Tensor sym, Tensor stats)");
}

// The composite ops are the same device-agnostic code on CPU and CUDA.
TORCH_LIBRARY_IMPL(gansvc, CPU, m) {
  using namespace gansvc::fid;
  m.impl("trace_sqrt_product", &trace_sqrt_product);
  m.impl("trace_sqrt_product_lowrank", &trace_sqrt_product_lowrank);
  m.impl("frechet_distance", &frechet_distance);
  m.impl("feature_moments_update_", &feature_moments_update_);
  m.impl("feature_moments_merge_", &feature_moments_merge_);
}

#ifdef GANSVC_WITH_CUDA
TORCH_LIBRARY_IMPL(gansvc, CUDA, m) {
  using namespace gansvc::fid;
  m.impl("trace_sqrt_product", &trace_sqrt_product);
  m.impl("trace_sqrt_product_lowrank", &trace_sqrt_product_lowrank);
  m.impl("frechet_distance", &frechet_distance);
  m.impl("feature_moments_update_", &feature_moments_update_);
  m.impl("feature_moments_merge_", &feature_moments_merge_);
}
#endif
