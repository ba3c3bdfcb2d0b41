// Declarations shared by the loss kernels (CPU, CUDA) and their registration in ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <string>
#include <tuple>

#include "losses/loss_math.h"

namespace gansvc {
namespace losses {

// Parses a kind string; raises ValueError naming `argument` and the accepted values.
DKind parse_d_kind(c10::string_view kind);
GKind parse_g_kind(c10::string_view kind);

// Checks a logit tensor (floating, non-empty) and raises ValueError naming `argument`.
void check_logits(const at::Tensor& logits, const char* argument);

// The dtype losses and statistics are reported in: float64 for float64 logits, float32 otherwise.
at::ScalarType opmath_type(at::ScalarType logits_type);

// (loss, grad_real, grad_fake, stats[mean_real, mean_fake, accuracy]) in one pass.
using DLossOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// (loss, grad_fake, stats[mean_fake]) in one pass.
using GLossOut = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// The CPU kernel build in use: baseline, AVX2 + FMA or AVX-512 (chosen once from GANSVC_CPU_CAPABILITY, else
// the widest the CPU runs).
enum class CpuCapability : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };
CpuCapability cpu_capability();
std::string cpu_capability_name();  // "default" | "avx2" | "avx512"
// Sets the build in use ("default" | "avx2" | "avx512"; "" chooses again); returns the previous name. For tests.
std::string set_cpu_capability(const std::string& name);

// Logits as a contiguous 1-d tensor in the compute type (float32 for half/bfloat16).
at::Tensor compute_input(const at::Tensor& logits);

// [loss, mean_real, mean_fake, accuracy] of D's loss on contiguous compute-type logits r, f; writes
// d loss / d logits into grad_r, grad_f (same type and size as r, f).
using DValues = std::array<double, 4>;
DValues d_loss_values_cpu(const at::Tensor& r, const at::Tensor& f, DKind kind, double real_label,
                          const at::Tensor& grad_r, const at::Tensor& grad_f);

DLossOut d_loss_fused_cpu(const at::Tensor& real, const at::Tensor& fake, c10::string_view kind, double real_label);
GLossOut g_loss_fused_cpu(const at::Tensor& fake, c10::string_view kind);

#ifdef GANSVC_WITH_CUDA
DLossOut d_loss_fused_cuda(const at::Tensor& real, const at::Tensor& fake, c10::string_view kind, double real_label);
GLossOut g_loss_fused_cuda(const at::Tensor& fake, c10::string_view kind);
#endif

}  // namespace losses
}  // namespace gansvc
