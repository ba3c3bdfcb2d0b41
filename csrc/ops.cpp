// The gansvc operator library: schemas of the loss ops, their autograd (in C++, so a call costs a
// few microseconds instead of a Python autograd.Function's tens), and the Python module gansvc._C.
//
// Ops:
//   d_loss_fused / g_loss_fused  one pass: loss, gradient w.r.t. the logits, statistics (CPU, CUDA)
//   d_loss / g_loss              (loss, stats), differentiable; backward hands over the saved gradient
// and, outside the dispatcher (gansvc._C, since they write gradients as a side effect):
//   d_loss_step / g_loss_step    the fused kernel, then its gradient added to the logits' gradients
//                                without an autograd node: one call, one output, for a training step
// The FID ops declare themselves in csrc/fid/ with TORCH_LIBRARY_FRAGMENT.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/accumulate.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include <functional>
#include <mutex>
#include <numeric>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "fid/fid.h"
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

// An ordinary CPU tensor of one element, whose value can be read at once: not one being traced
// (torch.compile's fake, functional or functorch-wrapped tensors have no value to read).
bool readable_cpu_scalar(const at::Tensor& t) {
  const c10::DispatchKeySet traced({c10::DispatchKey::Python, c10::DispatchKey::Functionalize,
                                    c10::DispatchKey::FuncTorchGradWrapper, c10::DispatchKey::FuncTorchBatched});
  return t.is_cpu() && (t.key_set() & traced).empty() && t.numel() == 1;
}

// The gradient the fused kernel computed in the forward, scaled by the incoming grad_loss. It is kept
// in saved_data (not save_for_backward) so that the first backward can move it out of the context:
// with no other reference left, the engine takes it as the leaf's .grad without a copy, and it is
// scaled in place; for loss.backward() (grad_loss exactly 1, read where that costs no device sync)
// not even that pass runs. A later backward of a retained graph runs the kernel again (whoever
// received the first gradient may have changed it in place), so every backward gives the same bits;
// a backward that is itself differentiated takes the ATen expression.
at::Tensor scaled_saved_gradient(AutogradContext* ctx, const char* key, const at::Tensor& grad_loss,
                                 const std::function<at::Tensor()>& kernel,
                                 const std::function<at::Tensor()>& expression) {
  if (!grad_loss.defined()) return at::Tensor();
  if (at::GradMode::is_enabled()) return grad_loss * expression();
  at::Tensor grad;
  if (const auto found = ctx->saved_data.find(key); found != ctx->saved_data.end()) {
    grad = std::move(found->second).toTensor();
    ctx->saved_data.erase(found);
  } else {
    at::AutoDispatchBelowADInplaceOrView guard;
    grad = kernel();
  }
  if (!(readable_cpu_scalar(grad_loss) && grad_loss.item<double>() == 1.0)) grad.mul_(grad_loss);
  return grad;
}

class DLossFunction : public torch::autograd::Function<DLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& real, const at::Tensor& fake,
                               c10::string_view kind, double real_label) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad_real, grad_fake, stats] = call_d_fused(real, fake, kind, real_label);
    ctx->save_for_backward({real, fake});
    ctx->saved_data["grad_real"] = std::move(grad_real);
    ctx->saved_data["grad_fake"] = std::move(grad_fake);
    ctx->saved_data["kind"] = static_cast<int64_t>(parse_d_kind(kind));
    ctx->saved_data["kind_name"] = std::string(kind);
    ctx->saved_data["real_label"] = real_label;
    ctx->mark_non_differentiable({stats});
    return {loss, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto kind = static_cast<DKind>(ctx->saved_data["kind"].toInt());
    const double label = ctx->saved_data["real_label"].toDouble();
    std::optional<DLossOut> again;  // one kernel run for both sides, when needed
    const auto kernel = [&](bool is_real) {
      if (!again) again = call_d_fused(saved[0], saved[1], ctx->saved_data["kind_name"].toStringRef(), label);
      return is_real ? std::get<1>(*again) : std::get<2>(*again);
    };
    const auto expression = [&](bool is_real) {
      const at::Tensor& logits = saved[is_real ? 0 : 1];
      return d_grad_expression(logits, kind, is_real, label).view_as(logits);
    };
    return {scaled_saved_gradient(ctx, "grad_real", grad_outputs[0], [&] { return kernel(true); },
                                  [&] { return expression(true); }),
            scaled_saved_gradient(ctx, "grad_fake", grad_outputs[0], [&] { return kernel(false); },
                                  [&] { return expression(false); }),
            at::Tensor(), at::Tensor()};
  }
};

class GLossFunction : public torch::autograd::Function<GLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& fake, c10::string_view kind) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, grad_fake, stats] = call_g_fused(fake, kind);
    ctx->save_for_backward({fake});
    ctx->saved_data["grad_fake"] = std::move(grad_fake);
    ctx->saved_data["kind"] = static_cast<int64_t>(parse_g_kind(kind));
    ctx->saved_data["kind_name"] = std::string(kind);
    ctx->mark_non_differentiable({stats});
    return {loss, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto kind = static_cast<GKind>(ctx->saved_data["kind"].toInt());
    return {scaled_saved_gradient(
                ctx, "grad_fake", grad_outputs[0],
                [&] { return std::get<1>(call_g_fused(saved[0], ctx->saved_data["kind_name"].toStringRef())); },
                [&] { return g_grad_expression(saved[0], kind).view_as(saved[0]); }),
            at::Tensor()};
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

// A leaf whose gradient a step may write itself, exactly as AccumulateGrad would: no hooks of any
// kind (tensor, accumulator, post-accumulate, retain_grad), contiguous, and a gradient that is absent
// or a dense tensor of its shape and dtype that does not require grad. Anything else goes through
// the autograd engine.
bool plain_leaf(const at::Tensor& t) {
  namespace impl = torch::autograd::impl;
  if (!t.is_leaf() || !t.is_contiguous() || t.layout() != at::kStrided) return false;
  if (!impl::hooks(t).empty() || impl::post_acc_grad_hooks(t) != nullptr) return false;
  if (auto acc = impl::try_get_grad_accumulator(t)) {
    if (!acc->pre_hooks().empty() || !acc->tensor_pre_hooks().empty() || !acc->retains_grad_hooks().empty() ||
        !acc->post_hooks().empty()) {
      return false;
    }
  }
  const at::Tensor& grad = t.grad();
  return !grad.defined() || (grad.layout() == at::kStrided && !grad.requires_grad() && grad.sizes() == t.sizes() &&
                             grad.scalar_type() == t.scalar_type() && grad.device() == t.device());
}

// Adds each gradient to its logits' gradient (as loss.backward() would have): a plain leaf takes it
// as its .grad (or adds it in place), the rest go through the engine in one backward call.
void propagate(const at::Tensor& a, const at::Tensor& grad_a, const at::Tensor& b, const at::Tensor& grad_b) {
  torch::autograd::variable_list roots, grads;
  for (const auto& [t, g] : {std::pair{&a, &grad_a}, std::pair{&b, &grad_b}}) {
    if (!t->defined() || !t->requires_grad()) continue;
    if (plain_leaf(*t)) {
      at::Tensor& current = const_cast<at::Tensor&>(*t).mutable_grad();
      if (current.defined()) {
        current.add_(*g);
      } else {
        current = *g;  // freshly allocated by the step and referenced nowhere else: no copy needed
      }
    } else {
      roots.push_back(*t);
      grads.push_back(*g);
    }
  }
  if (!roots.empty()) torch::autograd::backward(roots, grads);
}

// Recycled CPU buffers for the steps' gradients. A step's gradient becomes a parameter's .grad and is
// freed at the next zero_grad(set_to_none=True); glibc hands buffers of 128 KiB and more back to the
// kernel on free, so without the pool every step would page-fault its gradients in again (at 65 536
// logits that cost more than the whole kernel). Holds at most kMaxBuffers freed buffers, kMaxBytes in all.
class GradPool {
 public:
  static GradPool& instance() {
    static auto* pool = new GradPool();  // never destroyed: tensors may be freed during interpreter exit
    return *pool;
  }

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    const int64_t numel = c10::multiply_integers(sizes);
    const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
    if (bytes < kMinBytes) return at::empty(sizes, options);
    void* data = take(bytes);
    if (data == nullptr) data = c10::alloc_cpu(bytes);
    return at::from_blob(data, sizes, [this, bytes](void* p) { give(p, bytes); }, options);
  }

 private:
  static constexpr size_t kMinBytes = size_t(64) << 10, kMaxBytes = size_t(256) << 20;
  static constexpr size_t kMaxBuffers = 8;

  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->second == bytes) {
        void* p = it->first;
        held_ -= bytes;
        free_.erase(it);
        return p;
      }
    }
    return nullptr;
  }

  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (free_.size() < kMaxBuffers && held_ + bytes <= kMaxBytes) {
        free_.emplace_back(p, bytes);
        held_ += bytes;
        return;
      }
    }
    c10::free_cpu(p);
  }

  std::mutex mutex_;
  std::vector<std::pair<void*, size_t>> free_;
  size_t held_ = 0;
};

at::Tensor d_loss_step(const at::Tensor& real, const at::Tensor& fake, const std::string& kind, double real_label) {
  check_pair(real, fake, real_label);
  const DKind k = parse_d_kind(kind);
  at::Tensor grad_r, grad_f, values;
  {
    at::NoGradGuard no_grad;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    if (real.device().is_cpu()) {
      const at::Tensor r = compute_input(real), f = compute_input(fake);
      const bool same_type = r.scalar_type() == real.scalar_type();
      // The kernel writes the gradients straight into tensors of the logits' shape when no cast is needed.
      grad_r = GradPool::instance().empty(same_type ? real.sizes() : r.sizes(), r.options());
      grad_f = GradPool::instance().empty(same_type ? fake.sizes() : f.sizes(), f.options());
      const DValues v = d_loss_values_cpu(r, f, k, real_label, grad_r, grad_f);
      if (!same_type) {
        grad_r = grad_r.view(real.sizes()).to(real.scalar_type());
        grad_f = grad_f.view(fake.sizes()).to(fake.scalar_type());
      }
      values = at::empty({4}, r.options());
      AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "gansvc::d_loss_step", [&] {
        auto* out = values.mutable_data_ptr<scalar_t>();
        for (int i = 0; i < 4; ++i) out[i] = static_cast<scalar_t>(v[i]);
      });
    } else {
      auto [loss, gr, gf, stats] = call_d_fused(real, fake, kind, real_label);
      grad_r = gr;
      grad_f = gf;
      values = at::cat({loss.view({1}), stats});
    }
  }
  propagate(real, grad_r, fake, grad_f);
  return values;
}

at::Tensor g_loss_step(const at::Tensor& fake, const std::string& kind) {
  check_logits(fake, "fake_logits");
  at::Tensor grad_f, values;
  {
    at::NoGradGuard no_grad;
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [loss, gf, stats] = call_g_fused(fake, kind);
    grad_f = gf;
    values = at::cat({loss.view({1}), stats});
  }
  propagate(fake, grad_f, at::Tensor(), at::Tensor());
  return values;
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
  namespace py = pybind11;
  using namespace gansvc::losses;
  module.def("cpu_capability", &cpu_capability_name,
             "The CPU loss-kernel build in use: 'avx512' (AVX-512), 'avx2' (AVX2 + FMA) or 'default' (any CPU).");
  module.def("_set_cpu_capability", &set_cpu_capability, py::arg("name"),
             "Use the 'default', 'avx2' or 'avx512' CPU kernels ('' chooses again); returns the previous choice. "
             "For tests.");
  // What the kernels' at::parallel_for really forks into (setup.py's -fopenmp): without OpenMP at compile
  // time the fork is dropped and every task runs on the calling thread.
  module.def(
      "_parallel_threads",
      [](int64_t tasks) {
        std::vector<int> ran(static_cast<size_t>(at::get_num_threads()), 0);
        at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
          ran[static_cast<size_t>(at::get_thread_num()) % ran.size()] = 1;
        });
        return std::accumulate(ran.begin(), ran.end(), 0);
      },
      py::arg("tasks"), "The number of threads at::parallel_for ran `tasks` one-element tasks on. For tests.");
  module.def("_symmetry_stats", &gansvc::fid::symmetry_stats_cpu, py::arg("s"),
             "symmetrize_checked's statistics of a CPU float64 matrix without its symmetric part. For tests.");
  // The GIL is released while the step runs: its backward may reach Python autograd nodes on other threads.
  module.def("d_loss_step", &d_loss_step, py::arg("real_logits"), py::arg("fake_logits"), py::arg("kind"),
             py::arg("real_label") = 1.0, py::call_guard<py::gil_scoped_release>(),
             "D's fused loss; adds d loss / d logits to the logits' gradients and returns "
             "[loss, mean_real, mean_fake, accuracy] (float64 for float64 logits, else float32).");
  module.def("g_loss_step", &g_loss_step, py::arg("fake_logits"), py::arg("kind"),
             py::call_guard<py::gil_scoped_release>(),
             "G's fused loss; adds d loss / d logits to the logits' gradient and returns [loss, mean_fake].");
}
