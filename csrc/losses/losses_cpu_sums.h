// The raw-pointer interface between the CPU loss kernels (one build per CPU capability, see
// losses_cpu_kernel.h) and their tensor-level wrapper losses_cpu.cpp.
#pragma once

#include <cstdint>

#include "losses/loss_math.h"

namespace gansvc {
namespace losses {

// Logits per block of the CPU kernel's sums: the unit of work of its threads and of its fixed summation
// order. Small enough that a batch of 2 x 16 384 logits is split over two threads, large enough to amortise
// a task. The kernel runs on one thread below kParallelMinimum logits (both sides together): under that a
// fork and join costs more than the work (ATen's elementwise grain is 32 768 elements).
constexpr int64_t kSumBlock = 16384;
constexpr int64_t kParallelMinimum = 32768;

// Sums over one side (real or fake): loss terms, statistics, correct classifications.
struct Sums {
  double loss = 0, stat = 0, correct = 0;
  void add(const Sums& o) {
    loss += o.loss;
    stat += o.stat;
    correct += o.correct;
  }
};

struct DSums {
  Sums real, fake;
};

// Contiguous logits in the compute type and the gradient buffers the kernel fills.
template <typename T>
struct DArgs {
  const T* real;
  int64_t n_real;
  const T* fake;
  int64_t n_fake;
  T* grad_real;
  T* grad_fake;
  DKind kind;
  double real_label;
};

// One declaration per capability; the definitions are in losses_cpu_kernel.h.
#define GANSVC_DECLARE_LOSS_SUMS(capability)                                         \
  namespace capability {                                                             \
  DSums d_sums(const DArgs<float>& a);                                               \
  DSums d_sums(const DArgs<double>& a);                                              \
  Sums g_sums(const float* fake, float* grad, int64_t n, GKind kind);                \
  Sums g_sums(const double* fake, double* grad, int64_t n, GKind kind);              \
  }
GANSVC_DECLARE_LOSS_SUMS(DEFAULT)
GANSVC_DECLARE_LOSS_SUMS(AVX2)
GANSVC_DECLARE_LOSS_SUMS(AVX512)
#undef GANSVC_DECLARE_LOSS_SUMS

// The entry points of a SIMD build compiled where its ISA is not available (a non-x86 compiler): never called,
// since the dispatcher checks the CPU first. Needs <c10/util/Exception.h>.
#define GANSVC_DEFINE_UNBUILT_LOSS_SUMS(capability, isa)                                                      \
  namespace gansvc {                                                                                         \
  namespace losses {                                                                                         \
  namespace capability {                                                                                     \
  DSums d_sums(const DArgs<float>&) { TORCH_CHECK(false, "gansvc: " isa " loss kernels not built"); }       \
  DSums d_sums(const DArgs<double>&) { TORCH_CHECK(false, "gansvc: " isa " loss kernels not built"); }      \
  Sums g_sums(const float*, float*, int64_t, GKind) { TORCH_CHECK(false, "gansvc: " isa " loss kernels not built"); } \
  Sums g_sums(const double*, double*, int64_t, GKind) {                                                    \
    TORCH_CHECK(false, "gansvc: " isa " loss kernels not built");                                            \
  }                                                                                                          \
  }                                                                                                          \
  }                                                                                                          \
  }

}  // namespace losses
}  // namespace gansvc
