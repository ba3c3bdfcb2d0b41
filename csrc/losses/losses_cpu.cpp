// The CPU fused GAN losses at tensor level: argument shaping, the choice of the kernel build for the
// running CPU (baseline, AVX2 + FMA or AVX-512, losses_cpu_kernel.h), and the ops' outputs.
#include <ATen/ATen.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "losses/losses.h"
#include "losses/losses_cpu_sums.h"

namespace gansvc {
namespace losses {
namespace {

bool cpu_has_avx2_fma() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

// The set losses_cpu_avx512.cpp is compiled for (ATen's AVX512 build asks the same).
bool cpu_has_avx512() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  return cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

// -1: not chosen yet; else a CpuCapability. Chosen once per process (GANSVC_CPU_CAPABILITY, then the CPU).
std::atomic<int> g_capability{-1};

CpuCapability parse_capability(const std::string& name) {
  if (name == "default") return CpuCapability::kDefault;
  if (name == "avx2") {
    TORCH_CHECK_VALUE(cpu_has_avx2_fma(), "GANSVC_CPU_CAPABILITY=avx2 but this CPU lacks AVX2, FMA or F16C");
    return CpuCapability::kAvx2;
  }
  if (name == "avx512") {
    TORCH_CHECK_VALUE(cpu_has_avx512(), "GANSVC_CPU_CAPABILITY=avx512 but this CPU lacks AVX-512 F, BW, VL or DQ");
    return CpuCapability::kAvx512;
  }
  TORCH_CHECK_VALUE(false, "GANSVC_CPU_CAPABILITY must be 'default', 'avx2' or 'avx512', got '", name, "'");
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

CpuCapability cpu_capability() {
  int c = g_capability.load(std::memory_order_relaxed);
  if (c < 0) {
    const char* env = std::getenv("GANSVC_CPU_CAPABILITY");
    CpuCapability chosen = (env != nullptr && *env != '\0') ? parse_capability(lower(env))
                           : cpu_has_avx512()               ? CpuCapability::kAvx512
                           : cpu_has_avx2_fma()             ? CpuCapability::kAvx2
                                                            : CpuCapability::kDefault;
    c = static_cast<int>(chosen);
    g_capability.store(c, std::memory_order_relaxed);
  }
  return static_cast<CpuCapability>(c);
}

std::string cpu_capability_name() {
  switch (cpu_capability()) {
    case CpuCapability::kAvx512: return "avx512";
    case CpuCapability::kAvx2: return "avx2";
    default: return "default";
  }
}

std::string set_cpu_capability(const std::string& name) {
  const std::string previous = cpu_capability_name();
  if (name.empty()) {
    g_capability.store(-1, std::memory_order_relaxed);  // choose again (environment, then CPU)
  } else {
    g_capability.store(static_cast<int>(parse_capability(lower(name))), std::memory_order_relaxed);
  }
  return previous;
}

at::Tensor compute_input(const at::Tensor& logits) {
  return logits.to(opmath_type(logits.scalar_type())).contiguous().view(-1);
}

DValues d_loss_values_cpu(const at::Tensor& r, const at::Tensor& f, DKind kind, double real_label,
                          const at::Tensor& grad_r, const at::Tensor& grad_f) {
  DSums sums;
  const CpuCapability capability = cpu_capability();
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "gansvc::d_loss", [&] {
    const DArgs<scalar_t> a{r.const_data_ptr<scalar_t>(), r.numel(), f.const_data_ptr<scalar_t>(), f.numel(),
                            grad_r.mutable_data_ptr<scalar_t>(), grad_f.mutable_data_ptr<scalar_t>(), kind, real_label};
    sums = capability == CpuCapability::kAvx512 ? AVX512::d_sums(a)
           : capability == CpuCapability::kAvx2 ? AVX2::d_sums(a)
                                                : DEFAULT::d_sums(a);
  });
  const double n_r = static_cast<double>(r.numel()), n_f = static_cast<double>(f.numel());
  return {sums.real.loss / n_r + sums.fake.loss / n_f, sums.real.stat / n_r, sums.fake.stat / n_f,
          (sums.real.correct + sums.fake.correct) / (n_r + n_f)};
}

DLossOut d_loss_fused_cpu(const at::Tensor& real, const at::Tensor& fake, c10::string_view kind, double real_label) {
  const DKind k = parse_d_kind(kind);
  const at::Tensor r = compute_input(real), f = compute_input(fake);
  at::Tensor grad_r = at::empty_like(r), grad_f = at::empty_like(f);
  const DValues v = d_loss_values_cpu(r, f, k, real_label, grad_r, grad_f);
  // Separate tensors (not views of one): outputs of an op must not alias each other.
  at::Tensor loss = at::empty({}, r.options()), stats = at::empty({3}, r.options());
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "gansvc::d_loss_values", [&] {
    *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(v[0]);
    auto* st = stats.mutable_data_ptr<scalar_t>();
    for (int i = 0; i < 3; ++i) st[i] = static_cast<scalar_t>(v[i + 1]);
  });
  return {loss, grad_r.view(real.sizes()).to(real.scalar_type()), grad_f.view(fake.sizes()).to(fake.scalar_type()),
          stats};
}

GLossOut g_loss_fused_cpu(const at::Tensor& fake, c10::string_view kind) {
  const GKind k = parse_g_kind(kind);
  const at::Tensor f = compute_input(fake);
  at::Tensor grad_f = at::empty_like(f);
  const CpuCapability capability = cpu_capability();
  at::Tensor loss = at::empty({}, f.options()), stats = at::empty({1}, f.options());
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "gansvc::g_loss", [&] {
    const auto* in = f.const_data_ptr<scalar_t>();
    auto* grad = grad_f.mutable_data_ptr<scalar_t>();
    const Sums sums = capability == CpuCapability::kAvx512 ? AVX512::g_sums(in, grad, f.numel(), k)
                      : capability == CpuCapability::kAvx2 ? AVX2::g_sums(in, grad, f.numel(), k)
                                                           : DEFAULT::g_sums(in, grad, f.numel(), k);
    const double n = static_cast<double>(f.numel());
    *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(sums.loss / n);
    *stats.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(sums.stat / n);
  });
  return {loss, grad_f.view(fake.sizes()).to(fake.scalar_type()), stats};
}

}  // namespace losses
}  // namespace gansvc
