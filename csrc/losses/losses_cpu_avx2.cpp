// The CPU loss kernels for CPUs with AVX2 and FMA, chosen at run time by losses_cpu.cpp.
//
// The target pragma (instead of -mavx2 -mfma on the command line, which setuptools cannot give to
// one file) comes before every include, so this whole translation unit is compiled for AVX2 + FMA
// (+ F16C, as ATen's AVX2 build); CPU_CAPABILITY puts its at::vec::Vectorized and kernels in
// namespaces of their own. The pragma does not define the ISA macros that sleef.h and ATen test, so
// they are defined here as the command-line flags would. Elsewhere the AVX2 entry points are stubs
// that are never called (the dispatcher checks the CPU first).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#pragma GCC target("avx,avx2,fma,f16c")
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "losses/losses_cpu_kernel.h"
#else
#define CPU_CAPABILITY AVX2
#include "losses/losses_cpu_sums.h"
#include <c10/util/Exception.h>
GANSVC_DEFINE_UNBUILT_LOSS_SUMS(AVX2, "AVX2")
#endif
