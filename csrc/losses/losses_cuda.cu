// CUDA kernels of the fused GAN losses: one launch reads both logit tensors once, writes the
// gradients and reduces loss/statistic/correct sums; the last block to finish adds the per-block
// partial sums in block order (deterministic, no float atomics) and writes the results.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <algorithm>
#include <type_traits>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "losses/losses.h"

namespace gansvc {
namespace losses {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;
constexpr int kSums = 6;  // real: loss, stat, correct; fake: loss, stat, correct

template <typename acc_t>
__device__ double block_sum(acc_t value, double* shared) {
  // Fixed-shape tree: the same inputs always add up in the same order.
  shared[threadIdx.x] = static_cast<double>(value);
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  double total = shared[0];
  __syncthreads();
  return total;
}

// Adds the partials of all blocks (run by the last block); every thread gets the totals.
__device__ void reduce_partials(const double* partials, int num_blocks, double* shared, double* totals) {
  for (int k = 0; k < kSums; ++k) {
    double mine = 0;
    for (int b = threadIdx.x; b < num_blocks; b += blockDim.x) mine += partials[b * kSums + k];
    totals[k] = block_sum(mine, shared);
  }
}

// Each block stores its sums; the last block to finish adds every block's sums in block order into
// `totals` and returns true (in all of its threads); the other blocks return false.
template <typename acc_t>
__device__ bool reduce_across_blocks(const acc_t (&acc)[kSums], double* partials, unsigned int* finished_blocks,
                                     double* shared, double (&totals)[kSums]) {
  __shared__ bool is_last;
  for (int k = 0; k < kSums; ++k) {
    double block_total = block_sum(acc[k], shared);
    if (threadIdx.x == 0) partials[blockIdx.x * kSums + k] = block_total;
  }
  if (threadIdx.x == 0) {
    __threadfence();
    is_last = atomicAdd(finished_blocks, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return false;
  __threadfence();
  reduce_partials(partials, gridDim.x, shared, totals);
  return true;
}

// The real and the fake side as one index range [0, n_real + n_fake).
template <typename scalar_t, typename acc_t>
__global__ void d_loss_kernel(const scalar_t* __restrict__ real, int64_t n_real, const scalar_t* __restrict__ fake,
                              int64_t n_fake, DKind kind, acc_t real_label, scalar_t* __restrict__ grad_real,
                              scalar_t* __restrict__ grad_fake, double* __restrict__ partials,
                              unsigned int* __restrict__ finished_blocks, acc_t* __restrict__ loss_out,
                              acc_t* __restrict__ stats_out) {
  __shared__ double shared[kThreads];
  acc_t acc[kSums] = {0, 0, 0, 0, 0, 0};
  const acc_t inv_real = acc_t(1) / static_cast<acc_t>(n_real), inv_fake = acc_t(1) / static_cast<acc_t>(n_fake);
  const int64_t total = n_real + n_fake;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool is_real = i < n_real;
    const acc_t s = is_real ? static_cast<acc_t>(real[i]) : static_cast<acc_t>(fake[i - n_real]);
    const auto t = d_term<ScalarMath<acc_t>>(kind, is_real, s, real_label);
    const int side = is_real ? 0 : 3;
    acc[side] += t.loss;
    acc[side + 1] += t.stat;
    acc[side + 2] += t.correct;
    if (is_real) {
      grad_real[i] = static_cast<scalar_t>(t.grad * inv_real);
    } else {
      grad_fake[i - n_real] = static_cast<scalar_t>(t.grad * inv_fake);
    }
  }
  double t[kSums];
  if (reduce_across_blocks(acc, partials, finished_blocks, shared, t)) {
    if (threadIdx.x == 0) {
      const double n_r = static_cast<double>(n_real), n_f = static_cast<double>(n_fake);
      *loss_out = static_cast<acc_t>(t[0] / n_r + t[3] / n_f);
      stats_out[0] = static_cast<acc_t>(t[1] / n_r);
      stats_out[1] = static_cast<acc_t>(t[4] / n_f);
      stats_out[2] = static_cast<acc_t>((t[2] + t[5]) / (n_r + n_f));
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void g_loss_kernel(const scalar_t* __restrict__ fake, int64_t n_fake, GKind kind,
                              scalar_t* __restrict__ grad_fake, double* __restrict__ partials,
                              unsigned int* __restrict__ finished_blocks, acc_t* __restrict__ loss_out,
                              acc_t* __restrict__ stats_out) {
  __shared__ double shared[kThreads];
  acc_t acc[kSums] = {0, 0, 0, 0, 0, 0};
  const acc_t inv_fake = acc_t(1) / static_cast<acc_t>(n_fake);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n_fake;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const auto t = g_term<ScalarMath<acc_t>>(kind, static_cast<acc_t>(fake[i]));
    acc[0] += t.loss;
    acc[1] += t.stat;
    grad_fake[i] = static_cast<scalar_t>(t.grad * inv_fake);
  }
  double t[kSums];
  if (reduce_across_blocks(acc, partials, finished_blocks, shared, t)) {
    if (threadIdx.x == 0) {
      *loss_out = static_cast<acc_t>(t[0] / static_cast<double>(n_fake));
      stats_out[0] = static_cast<acc_t>(t[1] / static_cast<double>(n_fake));
    }
  }
}

int num_blocks_for(int64_t n, const at::Device& device) {
  int sm_count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device.index()));
  const int64_t wanted = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({wanted, int64_t(4) * sm_count, kMaxBlocks})));
}

// Workspace: per-block partial sums and the finished-block counter (zeroed).
struct Workspace {
  at::Tensor partials, counter;
  Workspace(int blocks, const at::Device& device)
      : partials(at::empty({blocks * kSums}, at::TensorOptions().dtype(at::kDouble).device(device))),
        counter(at::zeros({1}, at::TensorOptions().dtype(at::kInt).device(device))) {}
  double* partials_ptr() { return partials.data_ptr<double>(); }
  unsigned int* counter_ptr() { return reinterpret_cast<unsigned int*>(counter.data_ptr<int>()); }
};

}  // namespace

DLossOut d_loss_fused_cuda(const at::Tensor& real, const at::Tensor& fake, c10::string_view kind, double real_label) {
  const DKind k = parse_d_kind(kind);
  const c10::cuda::CUDAGuard guard(real.device());
  const at::Tensor r = real.contiguous(), f = fake.contiguous();
  at::Tensor grad_r = at::empty_like(r), grad_f = at::empty_like(f);
  const int64_t n_r = r.numel(), n_f = f.numel();
  const int blocks = num_blocks_for(n_r + n_f, real.device());
  Workspace ws(blocks, real.device());
  const auto out_options = r.options().dtype(opmath_type(r.scalar_type()));
  at::Tensor loss = at::empty({}, out_options), stats = at::empty({3}, out_options);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "gansvc::d_loss_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    d_loss_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        r.data_ptr<scalar_t>(), n_r, f.data_ptr<scalar_t>(), n_f, k, static_cast<acc_t>(real_label),
        grad_r.data_ptr<scalar_t>(), grad_f.data_ptr<scalar_t>(), ws.partials_ptr(), ws.counter_ptr(),
        loss.data_ptr<acc_t>(), stats.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, grad_r.view(real.sizes()), grad_f.view(fake.sizes()), stats};
}

GLossOut g_loss_fused_cuda(const at::Tensor& fake, c10::string_view kind) {
  const GKind k = parse_g_kind(kind);
  const c10::cuda::CUDAGuard guard(fake.device());
  const at::Tensor f = fake.contiguous();
  at::Tensor grad_f = at::empty_like(f);
  const int64_t n = f.numel();
  const int blocks = num_blocks_for(n, fake.device());
  Workspace ws(blocks, fake.device());
  const auto out_options = f.options().dtype(opmath_type(f.scalar_type()));
  at::Tensor loss = at::empty({}, out_options), stats = at::empty({1}, out_options);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "gansvc::g_loss_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    g_loss_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        f.data_ptr<scalar_t>(), n, k, grad_f.data_ptr<scalar_t>(), ws.partials_ptr(), ws.counter_ptr(),
        loss.data_ptr<acc_t>(), stats.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, grad_f.view(fake.sizes()), stats};
}

}  // namespace losses
}  // namespace gansvc
