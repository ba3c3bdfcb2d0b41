// CPU versions of the FID core's fused element kernels. Sums are taken over fixed-size blocks
// whose partials are added in block order, so results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "fid/fid.h"

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

}  // namespace fid
}  // namespace gansvc

TORCH_LIBRARY_IMPL(gansvc, CPU, m) {
  m.impl("ns_polar_step_", &gansvc::fid::ns_polar_step_cpu);
  m.impl("sum_squared_difference", &gansvc::fid::sum_squared_difference_cpu);
}
