// Declarations shared by the FID core (fid_ops.cpp, device-agnostic ATen code) and its small fused
// element kernels (fid_elementwise_cpu.cpp, fid_elementwise_cuda.cu).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace gansvc {
namespace fid {

// One Newton–Schulz polar step, fused with the trace estimate it feeds:
//   x <- 1.5 x - 0.5 q   (q = x (xᵀx) or (x xᵀ) x, computed by the caller with a GEMM)
//   returns sum(x ⊙ b) as a 0-dim float64 tensor on x's device (= Tr(xᵀ b), the nuclear-norm estimate).
// All three tensors: float64, contiguous, same shape and device. Reductions are in a fixed order.
at::Tensor ns_polar_step_cpu(at::Tensor& x, const at::Tensor& q, const at::Tensor& b);

// sum((a - b)^2) as a 0-dim float64 tensor (the verification residual of the iteration), fixed order.
at::Tensor sum_squared_difference_cpu(const at::Tensor& a, const at::Tensor& b);

// One pass over a covariance matrix s [d, d] (float64, contiguous): returns (its symmetric part
// (s + sᵀ)/2, stats float64 [3] = [max |s_ij|, max |s_ij - s_ji|, number of entries (i, j) with
// s_ij or s_ji non-finite]; the maxima skip those) —
// the checks and the symmetrisation the FID ops start with, instead of six passes of ATen calls
// (two of them reading a transpose). Maxima are order-independent: results do not depend on threads.
std::tuple<at::Tensor, at::Tensor> symmetrize_checked_cpu(const at::Tensor& s);
// The same statistics without the symmetric part (a CPU matrix read once, nothing written): where they show s
// exactly symmetric and finite, the FID core reads s itself instead of a fresh copy (a new 32 MB at d = 2 048
// costs ~8 ms of page faults on two threads). gansvc._C._symmetry_stats for the tests.
at::Tensor symmetry_stats_cpu(const at::Tensor& s);

#ifdef GANSVC_WITH_CUDA
at::Tensor ns_polar_step_cuda(at::Tensor& x, const at::Tensor& q, const at::Tensor& b);
at::Tensor sum_squared_difference_cuda(const at::Tensor& a, const at::Tensor& b);
std::tuple<at::Tensor, at::Tensor> symmetrize_checked_cuda(const at::Tensor& s);
#endif

// Argument checks shared by the CPU and CUDA entries of the element kernels.
void check_elementwise_operands(const at::Tensor& a, const at::Tensor& b, const char* name_a, const char* name_b);
void check_square_float64(const at::Tensor& s, const char* name);

}  // namespace fid
}  // namespace gansvc
