"""Build gansvc._C: the C++ kernels always, the CUDA kernels when nvcc and a CUDA build of torch exist."""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _configure_cuda_env() -> None:
    # torch guesses CUDA_HOME from `which nvcc`; on these machines that is a wrapper in
    # /usr/local/bin and the link then fails with `cannot find -lcudart`.
    if not os.environ.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    # Without a GPU torch cannot pick the architectures itself (IndexError in _get_cuda_arch_flags).
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")


def _want_cuda() -> bool:
    import torch
    from torch.utils import cpp_extension

    if os.environ.get("GANSVC_NO_CUDA") == "1":
        return False
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and (
        os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")) or shutil.which("nvcc") is not None
    )


def _cpu_capability_flags() -> list[str]:
    """Flags that make at::vec::Vectorized use AVX2 + FMA (and Sleef's vector exp/log) in our CPU kernels.

    GANSVC_CPU_CAPABILITY=AVX2|DEFAULT overrides the guess from the build machine's /proc/cpuinfo.
    """
    choice = os.environ.get("GANSVC_CPU_CAPABILITY", "").upper()
    if not choice:
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
            choice = "AVX2" if (" avx2" in flags and " fma" in flags) else "DEFAULT"
        except OSError:
            choice = "DEFAULT"
    if choice == "AVX2":
        return ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    return []


def _extensions():
    _configure_cuda_env()
    from torch.utils import cpp_extension

    cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cuda_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    with_cuda = _want_cuda()
    # -g0: Python's default -g doubles compile time and makes an 11 MB .so.
    args = {"cxx": ["-O3", "-g0", *_cpu_capability_flags()], "nvcc": ["-O3", "-g0"]}
    common = dict(name="gansvc._C", include_dirs=[os.path.join(ROOT, "csrc")], py_limited_api=False)
    if with_cuda:
        ext = cpp_extension.CUDAExtension(
            sources=cpp_sources + cuda_sources,
            define_macros=[("GANSVC_WITH_CUDA", "1")],
            extra_compile_args=args,
            **common,
        )
        arch = os.environ["TORCH_CUDA_ARCH_LIST"]
        print(f"gansvc: building CPU and CUDA kernels (arch {arch}): {len(cuda_sources)} .cu files", file=sys.stderr)
    else:
        ext = cpp_extension.CppExtension(sources=cpp_sources, extra_compile_args={"cxx": args["cxx"]}, **common)
        print("gansvc: building CPU kernels only (no nvcc or no CUDA build of torch)", file=sys.stderr)
    return [ext], cpp_extension.BuildExtension.with_options(use_ninja=True)


ext_modules, build_ext = _extensions()
setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
