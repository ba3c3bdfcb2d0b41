// The CPU loss kernels for CPUs with AVX-512 (F, BW, VL, DQ) and FMA, chosen at run time by losses_cpu.cpp.
//
// As losses_cpu_avx2.cpp: a target pragma before every include compiles this whole translation unit for the
// capability (ATen's AVX512 build's set), the ISA macros sleef.h and ATen test are defined as the
// command-line flags would, and CPU_CAPABILITY gives its at::vec::Vectorized (16 floats or 8 doubles per
// vector) and kernels namespaces of their own. Twice the lanes of the AVX2 build: the bce/softplus loop is
// arithmetic-bound (about 60 vector operations per vector), so the wider vectors nearly halve its time.
// Elsewhere the entry points are stubs that are never called (the dispatcher checks the CPU first).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#pragma GCC target("avx,avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
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
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "losses/losses_cpu_kernel.h"
#else
#define CPU_CAPABILITY AVX512
#include "losses/losses_cpu_sums.h"
#include <c10/util/Exception.h>
GANSVC_DEFINE_UNBUILT_LOSS_SUMS(AVX512, "AVX-512")
#endif
