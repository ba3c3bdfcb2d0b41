// Declarations shared by the FID core (fid_ops.cpp, device-agnostic ATen code) and its small fused
// element kernels (fid_elementwise_cpu.cpp, fid_elementwise_cuda.cu).
#pragma once

#include <ATen/core/Tensor.h>

namespace gansvc {
namespace fid {

// One Newton–Schulz polar step, fused with the trace estimate it feeds:
//   x <- 1.5 x - 0.5 q   (q = x (xᵀx) or (x xᵀ) x, computed by the caller with a GEMM)
//   returns sum(x ⊙ b) as a 0-dim float64 tensor on x's device (= Tr(xᵀ b), the nuclear-norm estimate).
// All three tensors: float64, contiguous, same shape and device. Reductions are in a fixed order.
at::Tensor ns_polar_step_cpu(at::Tensor& x, const at::Tensor& q, const at::Tensor& b);

// sum((a - b)^2) as a 0-dim float64 tensor (the verification residual of the iteration), fixed order.
at::Tensor sum_squared_difference_cpu(const at::Tensor& a, const at::Tensor& b);

#ifdef GANSVC_WITH_CUDA
at::Tensor ns_polar_step_cuda(at::Tensor& x, const at::Tensor& q, const at::Tensor& b);
at::Tensor sum_squared_difference_cuda(const at::Tensor& a, const at::Tensor& b);
#endif

// Argument checks shared by the CPU and CUDA entries of the element kernels.
void check_elementwise_operands(const at::Tensor& a, const at::Tensor& b, const char* name_a, const char* name_b);

}  // namespace fid
}  // namespace gansvc
