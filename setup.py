"""Build gansvc._C: the C++ kernels always, the CUDA kernels when nvcc and a CUDA build of torch exist."""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


def _configure_cuda_env() -> None:
    # torch guesses CUDA_HOME from `which nvcc`; on these machines that is a wrapper in
    # /usr/local/bin and the link then fails with `cannot find -lcudart`.
    if not os.environ.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    # Without a GPU torch cannot pick the architectures itself (IndexError in _get_cuda_arch_flags); the
    # kernels cannot run here then, so one architecture checks that they compile at half the nvcc time of
    # two (the Docker image names its own list). With a GPU, torch builds for the GPUs it sees.
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0")


def _want_cuda() -> bool:
    import torch
    from torch.utils import cpp_extension

    if os.environ.get("GANSVC_NO_CUDA") == "1":
        return False
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and (
        os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")) or shutil.which("nvcc") is not None
    )


def _extensions():
    _configure_cuda_env()
    from torch.utils import cpp_extension

    # The CPU loss kernels are built three times, for any CPU, for AVX2 + FMA and for AVX-512
    # (csrc/losses/losses_cpu_avx2.cpp and _avx512.cpp compile themselves for their ISA with a target pragma),
    # and chosen at run time: no -march/-mavx2 here, so a wheel built on an AVX-512 machine runs on one
    # without. The SIMD objects link last, so that any inline function the builds share resolves to the
    # baseline copy.
    cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True), key=lambda p: ("_avx" in p, p))
    cuda_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    with_cuda = _want_cuda()
    # -g0: Python's default -g doubles compile time and makes an 11 MB .so.
    # -fopenmp: at::parallel_for is inline ATen code that forks with `#pragma omp parallel`; compiled without
    # it, the pragma is dropped and every "parallel" kernel runs on one thread. The link names libgomp.so.1,
    # which resolves to the copy torch has already loaded (the same soname), so there is one OpenMP runtime.
    args = {"cxx": ["-O3", "-g0", "-fopenmp"], "nvcc": ["-O3"]}
    common = dict(name="gansvc._C", include_dirs=[os.path.join(ROOT, "csrc")], py_limited_api=False,
                  extra_link_args=["-fopenmp"])
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


def generate_grpc_stubs() -> None:
    """Generate the Python gRPC stubs from protos/ into the ignored package gansvc/_proto/ (skipped when current).

    protos/gansvc/v1/x.proto is compiled as gansvc/_proto/v1/x.proto, so that the generated
    `*_pb2_grpc.py` imports its `*_pb2` as `gansvc._proto.v1` without any edit to generated code.
    Each file is renamed into place, so a process importing the stubs meanwhile never sees half a file.
    GANSVC_SKIP_GRPC_STUBS=1 skips them: bench/gpu.sh --python builds the kernels with a GPU image's own
    PyTorch, where grpcio-tools may be missing and only the kernels, the trainer and the metrics are used.
    """
    if os.environ.get("GANSVC_SKIP_GRPC_STUBS") == "1":
        print("gansvc: gRPC stubs not generated (GANSVC_SKIP_GRPC_STUBS=1)", file=sys.stderr)
        return
    import hashlib
    import tempfile
    from importlib.metadata import version

    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(glob.glob(os.path.join(ROOT, "protos", "gansvc", "**", "*.proto"), recursive=True))
    out_package = os.path.join(ROOT, "gansvc", "_proto")
    digest = hashlib.sha256(f"grpcio-tools {version('grpcio-tools')}".encode())
    for proto in protos:
        digest.update(os.path.relpath(proto, ROOT).encode())
        with open(proto, "rb") as f:
            digest.update(f.read())
    stamp = os.path.join(out_package, ".stamp")
    outputs = [os.path.join(out_package, os.path.relpath(p[: -len(".proto")], os.path.join(ROOT, "protos", "gansvc")))
               for p in protos]
    current = all(os.path.exists(o + suffix) for o in outputs for suffix in ("_pb2.py", "_pb2_grpc.py"))
    if current and os.path.exists(stamp) and open(stamp).read() == digest.hexdigest():
        return
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    os.makedirs(out_package, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_package, prefix=".protoc-") as tmp:
        args = [
            "grpc_tools.protoc",
            f"--proto_path=gansvc/_proto={os.path.join(ROOT, 'protos', 'gansvc')}",
            f"--proto_path={well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(protos)}")
        generated = os.path.join(tmp, "gansvc", "_proto")
        for folder, _, files in os.walk(generated):
            target = os.path.join(out_package, os.path.relpath(folder, generated))
            os.makedirs(target, exist_ok=True)
            init = os.path.join(target, "__init__.py")
            if not os.path.exists(init):
                with open(init, "w") as f:
                    f.write('"""Generated by setup.py from protos/ (never edit; rebuilt by scripts/setup.sh)."""\n')
            for name in files:
                os.replace(os.path.join(folder, name), os.path.join(target, name))
    with open(stamp, "w") as f:
        f.write(digest.hexdigest())
    print(f"gansvc: generated gRPC stubs in gansvc/_proto from {len(protos)} proto file(s)", file=sys.stderr)


# scripts/setup.sh builds the extension once, in place and incrementally (`setup.py build_ext --inplace`, ninja's
# objects kept under build/), then installs the package editable with GANSVC_SKIP_EXTENSION=1: pip builds an
# editable install in a temporary folder, so letting it build the extension too would compile everything twice.
if os.environ.get("GANSVC_SKIP_EXTENSION") == "1":
    from setuptools.command.build_ext import build_ext as base_build_ext

    ext_modules = []
else:
    ext_modules, base_build_ext = _extensions()


class build_ext(base_build_ext):  # noqa: N801 (setuptools command names are lower case)
    """BuildExtension that first regenerates the gRPC stubs (runs in `build_ext --inplace` and `pip install`)."""

    def run(self):
        generate_grpc_stubs()
        super().run()


class build_py(_build_py):  # noqa: N801
    """build_py that generates the stubs before collecting package files, so wheels contain them."""

    def run(self):
        generate_grpc_stubs()
        super().run()


setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext, "build_py": build_py})
