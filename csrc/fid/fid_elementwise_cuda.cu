// CUDA versions of the FID core's fused element kernels. Each launch reads its operands once;
// per-block partial sums go to a buffer that one block then adds in block order (deterministic,
// no floating-point atomics). Launched on the current stream under a device guard.
#include <ATen/core/Tensor.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "fid/fid.h"

namespace gansvc {
namespace fid {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

__device__ double block_sum(double value, double* shared) {
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  return shared[0];
}

__global__ void ns_polar_step_kernel(double* __restrict__ x, const double* __restrict__ q,
                                     const double* __restrict__ b, int64_t n, double* __restrict__ partials) {
  __shared__ double shared[kThreads];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double v = 1.5 * x[i] - 0.5 * q[i];
    x[i] = v;
    acc += v * b[i];
  }
  const double total = block_sum(acc, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

__global__ void sum_squared_difference_kernel(const double* __restrict__ a, const double* __restrict__ b, int64_t n,
                                              double* __restrict__ partials) {
  __shared__ double shared[kThreads];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double diff = a[i] - b[i];
    acc += diff * diff;
  }
  const double total = block_sum(acc, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// One block adds the partials in a fixed order: the same inputs always give the same bits.
__global__ void add_partials_kernel(const double* __restrict__ partials, int num_partials, double* __restrict__ out) {
  __shared__ double shared[kThreads];
  double acc = 0.0;
  for (int i = threadIdx.x; i < num_partials; i += blockDim.x) acc += partials[i];
  const double total = block_sum(acc, shared);
  if (threadIdx.x == 0) *out = total;
}

int num_blocks_for(int64_t n) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks, (n + kThreads - 1) / kThreads)));
}

// One thread per entry (i, j): reads s_ij and s_ji, writes the symmetric part, and reduces
// max |s|, max |s - sᵀ| and the non-finite count per block into partials[block, 3].
__global__ void symmetrize_checked_kernel(const double* __restrict__ s, int64_t d, double* __restrict__ out,
                                          double* __restrict__ partials) {
  __shared__ double shared[kThreads];
  const int64_t n = d * d;
  double local_abs = 0.0, local_asym = 0.0, local_bad = 0.0;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = k / d, j = k - i * d;
    const double a = s[k], b = s[j * d + i];
    if (!isfinite(a) || !isfinite(b)) {
      local_bad += 1.0;
      continue;
    }
    local_abs = fmax(local_abs, fabs(a));
    local_asym = fmax(local_asym, fabs(a - b));
    out[k] = 0.5 * (a + b);
  }
  // Block reductions: max, max, sum (each through the shared buffer in turn).
  double values[3] = {local_abs, local_asym, local_bad};
  for (int r = 0; r < 3; ++r) {
    shared[threadIdx.x] = values[r];
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
      if (threadIdx.x < stride) {
        shared[threadIdx.x] = r == 2 ? shared[threadIdx.x] + shared[threadIdx.x + stride]
                                     : fmax(shared[threadIdx.x], shared[threadIdx.x + stride]);
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) partials[blockIdx.x * 3 + r] = shared[0];
    __syncthreads();
  }
}

}  // namespace

at::Tensor ns_polar_step_cuda(at::Tensor& x, const at::Tensor& q, const at::Tensor& b) {
  check_elementwise_operands(x, q, "x", "q");
  check_elementwise_operands(x, b, "x", "b");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  const int blocks = num_blocks_for(n);
  at::Tensor partials = at::empty({blocks}, x.options());
  at::Tensor out = at::empty({}, x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  ns_polar_step_kernel<<<blocks, kThreads, 0, stream>>>(x.data_ptr<double>(), q.const_data_ptr<double>(),
                                                       b.const_data_ptr<double>(), n, partials.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  add_partials_kernel<<<1, kThreads, 0, stream>>>(partials.const_data_ptr<double>(), blocks, out.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor sum_squared_difference_cuda(const at::Tensor& a, const at::Tensor& b) {
  check_elementwise_operands(a, b, "a", "b");
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.numel();
  const int blocks = num_blocks_for(n);
  at::Tensor partials = at::empty({blocks}, a.options());
  at::Tensor out = at::empty({}, a.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  sum_squared_difference_kernel<<<blocks, kThreads, 0, stream>>>(a.const_data_ptr<double>(),
                                                                 b.const_data_ptr<double>(), n,
                                                                 partials.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  add_partials_kernel<<<1, kThreads, 0, stream>>>(partials.const_data_ptr<double>(), blocks, out.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> symmetrize_checked_cuda(const at::Tensor& s) {
  check_square_float64(s, "s");
  const c10::cuda::CUDAGuard guard(s.device());
  const int64_t d = s.size(0);
  const int blocks = num_blocks_for(d * d);
  at::Tensor out = at::empty_like(s);
  at::Tensor partials = at::empty({blocks, 3}, s.options());
  symmetrize_checked_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      s.const_data_ptr<double>(), d, out.data_ptr<double>(), partials.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Order-independent reductions of the per-block partials (max, max, sum of small integers).
  at::Tensor stats = at::stack({partials.select(1, 0).amax(), partials.select(1, 1).amax(), partials.select(1, 2).sum()});
  return {out, stats};
}

}  // namespace fid
}  // namespace gansvc

TORCH_LIBRARY_IMPL(gansvc, CUDA, m) {
  m.impl("ns_polar_step_", &gansvc::fid::ns_polar_step_cuda);
  m.impl("sum_squared_difference", &gansvc::fid::sum_squared_difference_cuda);
  m.impl("symmetrize_checked", &gansvc::fid::symmetrize_checked_cuda);
}
