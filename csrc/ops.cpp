// The gansvc operator library: schemas of the loss ops, their autograd (in C++, so a call costs a
// few microseconds instead of a Python autograd.Function's tens), and the Python module gansvc._C.
//
// Ops:
//   d_loss_fused / g_loss_fused  one pass: loss, gradient w.r.t. the logits, statistics (CPU, CUDA)
//   d_loss / g_loss              (loss, stats), differentiable; backward scales the saved gradient
// The FID ops declare themselves in csrc/fid/ with TORCH_LIBRARY_FRAGMENT.
#include <ATen/ATen.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <string>

#include "losses/losses.h"

namespace gansvc {
namespace losses {

DKind parse_d_kind(c10::string_view kind) {
  if (kind == "bce") return DKind::kBce;
  if (kind == "hinge") return DKind::kHinge;
  if (kind == "wasserstein") return DKind::kWasserstein;
  TORCH_CHECK_VALUE(false, "kind must be one of 'bce', 'hinge', 'wasserstein' for the D loss, got '", kind, "'");
}

GKind parse_g_kind(c10::string_view kind) {
  if (kind == "ns") return GKind::kNonSaturating;
  if (kind == "minimax") return GKind::kMinimax;
  if (kind == "hinge") return GKind::kHinge;
  if (kind == "wasserstein") return GKind::kWasserstein;
  TORCH_CHECK_VALUE(false, "kind must be one of 'ns', 'minimax', 'hinge', 'wasserstein' for the G loss, got '",
                    kind, "'");
}

void check_logits(const at::Tensor& logits, const char* argument) {
  TORCH_CHECK_VALUE(at::isFloatingType(logits.scalar_type()), argument,
                    " must be a floating-point tensor (float16, bfloat16, float32, float64), got ",
                    logits.scalar_type());
  // Sizes are symbolic while torch.compile traces; the kernels see real ones and check there too.
  if (!logits.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) {
    TORCH_CHECK_VALUE(logits.numel() > 0, argument, " is empty: a loss needs at least one logit");
  }
}

at::ScalarType opmath_type(at::ScalarType logits_type) {
  return logits_type == at::kDouble ? at::kDouble : at::kFloat;
}

namespace {

void check_pair(const at::Tensor& real, const at::Tensor& fake, double real_label) {
  check_logits(real, "real_logits");
  check_logits(fake, "fake_logits");
  TORCH_CHECK_VALUE(real.device() == fake.device(), "real_logits and fake_logits must be on the same device, got ",
                    real.device(), " and ", fake.device());
  TORCH_CHECK_VALUE(real.scalar_type() == fake.scalar_type(), "real_logits and fake_logits must have the same dtype, got ",
                    real.scalar_type(), " and ", fake.scalar_type());
  TORCH_CHECK_VALUE(real_label > 0.0 && real_label <= 1.0, "real_label must be in (0, 1], got ", real_label);
}

// The dispatcher entries of the fused ops, so that autograd and the composite ops reach CPU or CUDA.
DLossOut call_d_fused(const at::Tensor& real, const at::Tensor& fake, c10::string_view kind, double real_label) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("gansvc::d_loss_fused", "").typed<DLossOut(
      const at::Tensor&, const at::Tensor&, c10::string_view, double)>();
  return op.call(real, fake, kind, real_label);
}

GLossOut call_g_fused(const at::Tensor& fake, c10::string_view kind) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("gansvc::g_loss_fused", "").typed<GLossOut(
      const at::Tensor&, c10::string_view)>();
  return op.call(fake, kind);
}

// d loss / d logits as differentiable ATen expressions: used only when the backward itself is being
// differentiated (create_graph=True, e.g. a penalty on the gradient); the fast path reuses the
// gradient the fused kernel saved.
at::Tensor d_grad_expression(const at::Tensor& s_in, DKind kind, bool is_real, double real_label) {
  const at::Tensor s = s_in.to(opmath_type(s_in.scalar_type()));
  const double inv_n = 1.0 / static_cast<double>(s.numel());
  at::Tensor g;
  switch (kind) {
    case DKind::kBce:
      g = !is_real ? at::sigmoid(s) : (real_label == 1.0 ? -at::sigmoid(-s) : at::sigmoid(s) - real_label);
      break;
    case DKind::kHinge:
      g = is_real ? -(s < 1.0).to(s.scalar_type()) : (s > -1.0).to(s.scalar_type());
      break;
    case DKind::kWasserstein:
      g = at::full_like(s, is_real ? -1.0 : 1.0);
      break;
  }
  return (g * inv_n).to(s_in.scalar_type());
}

at::Tensor g_grad_expression(const at::Tensor& s_in, GKind kind) {
  const at::Tensor s = s_in.to(opmath_type(s_in.scalar_type()));
  const double inv_n = 1.0 / static_cast<double>(s.numel());
  at::Tensor g;
  switch (kind) {
    case GKind::kNonSaturating: g = -at::sigmoid(-s); break;
    case GKind::kMinimax: g = -at::sigmoid(s); break;
    default: g = at::full_like(s, -1.0); break;
  }
  return (g * inv_n).to(s_in.scalar_type());
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class DLossFunction : public torch::autograd::Function<DLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& real, const at::Tensor& fake,
                               c10::string_view kind, double real_label) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad_real, grad_fake, stats] = call_d_fused(real, fake, kind, real_label);
    ctx->save_for_backward({real, fake, grad_real, grad_fake});
    ctx->saved_data["kind"] = static_cast<int64_t>(parse_d_kind(kind));
    ctx->saved_data["real_label"] = real_label;
    ctx->mark_non_differentiable({stats});
    return {loss, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_loss = grad_outputs[0];
    at::Tensor grad_real = saved[2], grad_fake = saved[3];
    if (at::GradMode::is_enabled()) {
      const auto kind = static_cast<DKind>(ctx->saved_data["kind"].toInt());
      const double label = ctx->saved_data["real_label"].toDouble();
      grad_real = d_grad_expression(saved[0], kind, true, label).view_as(saved[0]);
      grad_fake = d_grad_expression(saved[1], kind, false, label).view_as(saved[1]);
    }
    return {grad_loss * grad_real, grad_loss * grad_fake, at::Tensor(), at::Tensor()};
  }
};

class GLossFunction : public torch::autograd::Function<GLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& fake, c10::string_view kind) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad_fake, stats] = call_g_fused(fake, kind);
    ctx->save_for_backward({fake, grad_fake});
    ctx->saved_data["kind"] = static_cast<int64_t>(parse_g_kind(kind));
    ctx->mark_non_differentiable({stats});
    return {loss, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad_fake = saved[1];
    if (at::GradMode::is_enabled()) {
      grad_fake = g_grad_expression(saved[0], static_cast<GKind>(ctx->saved_data["kind"].toInt())).view_as(saved[0]);
    }
    return {grad_outputs[0] * grad_fake, at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> d_loss_autograd(const at::Tensor& real, const at::Tensor& fake,
                                                   c10::string_view kind, double real_label) {
  check_pair(real, fake, real_label);
  auto out = DLossFunction::apply(real, fake, kind, real_label);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> g_loss_autograd(const at::Tensor& fake, c10::string_view kind) {
  check_logits(fake, "fake_logits");
  auto out = GLossFunction::apply(fake, kind);
  return {out[0], out[1]};
}

// Without autograd (inference mode, or below the Autograd key): the fused op minus the gradients.
std::tuple<at::Tensor, at::Tensor> d_loss_plain(const at::Tensor& real, const at::Tensor& fake, c10::string_view kind,
                                                double real_label) {
  check_pair(real, fake, real_label);
  auto out = call_d_fused(real, fake, kind, real_label);
  return {std::get<0>(out), std::get<3>(out)};
}

std::tuple<at::Tensor, at::Tensor> g_loss_plain(const at::Tensor& fake, c10::string_view kind) {
  check_logits(fake, "fake_logits");
  auto out = call_g_fused(fake, kind);
  return {std::get<0>(out), std::get<2>(out)};
}

// The fused kernels behind their argument checks, one instantiation per device.
template <DLossOut (*kernel)(const at::Tensor&, const at::Tensor&, c10::string_view, double)>
DLossOut d_loss_fused_checked(const at::Tensor& real, const at::Tensor& fake, c10::string_view kind,
                              double real_label) {
  check_pair(real, fake, real_label);
  return kernel(real, fake, kind, real_label);
}

template <GLossOut (*kernel)(const at::Tensor&, c10::string_view)>
GLossOut g_loss_fused_checked(const at::Tensor& fake, c10::string_view kind) {
  check_logits(fake, "fake_logits");
  return kernel(fake, kind);
}

}  // namespace
}  // namespace losses
}  // namespace gansvc

TORCH_LIBRARY(gansvc, m) {
  m.def("d_loss_fused(Tensor real_logits, Tensor fake_logits, str kind, float real_label=1.0)"
        " -> (Tensor loss, Tensor grad_real, Tensor grad_fake, Tensor stats)");
  m.def("g_loss_fused(Tensor fake_logits, str kind) -> (Tensor loss, Tensor grad_fake, Tensor stats)");
  m.def("d_loss(Tensor real_logits, Tensor fake_logits, str kind, float real_label=1.0) -> (Tensor loss, Tensor stats)");
  m.def("g_loss(Tensor fake_logits, str kind) -> (Tensor loss, Tensor stats)");
}

TORCH_LIBRARY_IMPL(gansvc, CPU, m) {
  using namespace gansvc::losses;
  m.impl("d_loss_fused", &d_loss_fused_checked<d_loss_fused_cpu>);
  m.impl("g_loss_fused", &g_loss_fused_checked<g_loss_fused_cpu>);
}

#ifdef GANSVC_WITH_CUDA
TORCH_LIBRARY_IMPL(gansvc, CUDA, m) {
  using namespace gansvc::losses;
  m.impl("d_loss_fused", &d_loss_fused_checked<d_loss_fused_cuda>);
  m.impl("g_loss_fused", &g_loss_fused_checked<g_loss_fused_cuda>);
}
#endif

TORCH_LIBRARY_IMPL(gansvc, Autograd, m) {
  m.impl("d_loss", &gansvc::losses::d_loss_autograd);
  m.impl("g_loss", &gansvc::losses::g_loss_autograd);
}

TORCH_LIBRARY_IMPL(gansvc, CompositeExplicitAutograd, m) {
  m.impl("d_loss", &gansvc::losses::d_loss_plain);
  m.impl("g_loss", &gansvc::losses::g_loss_plain);
}

PYBIND11_MODULE(_C, module) {
  module.doc() = "gansvc's compiled kernels; the ops live in torch.ops.gansvc";
#ifdef GANSVC_WITH_CUDA
  module.attr("cuda_compiled") = true;
#else
  module.attr("cuda_compiled") = false;
#endif
#if defined(CPU_CAPABILITY_AVX2)
  module.attr("cpu_capability") = "AVX2";
#else
  module.attr("cpu_capability") = "DEFAULT";
#endif
}
