// CUDA versions of the FID core's fused element kernels. Each launch reads its operands once;
// per-block partial sums go to a buffer that one block then adds in block order (deterministic,
// no floating-point atomics). Launched on the current stream under a device guard.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
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

}  // namespace fid
}  // namespace gansvc

TORCH_LIBRARY_IMPL(gansvc, CUDA, m) {
  m.impl("ns_polar_step_", &gansvc::fid::ns_polar_step_cuda);
  m.impl("sum_squared_difference", &gansvc::fid::sum_squared_difference_cuda);
}
