// The CPU loss kernels for any CPU: baseline instruction set (SSE2 on x86-64), no FMA.
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#include "losses/losses_cpu_kernel.h"
