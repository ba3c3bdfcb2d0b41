"""Packaging: the wheel builds from the tracked files and works in a clean virtual environment.

Built offline with `pip wheel --no-build-isolation --no-deps` against the installed torch (build isolation
would fetch a second torch), with GANSVC_NO_CUDA=1 so that it takes minutes, not ten (setup.py builds the
CPU kernels only then; the CUDA build is exercised by scripts/setup.sh and bench/gpu.sh). The clean venv
sees the test environment's dependencies through a path entry (not its .pth files, so not the editable
gansvc of the checkout); gansvc itself must come from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
import sys, torch
import gansvc, gansvc._C
from gansvc import ops
assert gansvc.__file__.startswith(sys.prefix), gansvc.__file__
assert gansvc._C.__file__.startswith(sys.prefix), gansvc._C.__file__
assert ops.use_extension() and not ops.cuda_compiled()
real, fake = torch.randn(101, dtype=torch.float64), torch.randn(37, dtype=torch.float64)
loss, _ = ops.d_loss(real, fake, "bce")
expected, _ = ops.reference.d_loss(real, fake, "bce")
assert abs(float(loss) - float(expected)) <= 1e-12 * abs(float(expected)), (float(loss), float(expected))
from gansvc._proto.v1 import gansvc_pb2  # the stubs are in the wheel
print("capability", ops.cpu_capability())
"""


def _tracked_copy(target: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.mark.slow
def test_wheel_builds_and_imports_in_a_clean_venv(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to know the tracked files")
    source = _tracked_copy(tmp_path / "src")
    env = {**os.environ, "GANSVC_NO_CUDA": "1", "CUDA_HOME": os.environ.get("CUDA_HOME", "/usr/local/cuda"),
           "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0"), "MAX_JOBS": "2"}
    env.pop("PYTHONPATH", None)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("gansvc-*.whl")
    assert "linux" in wheel.name and "cp311" in wheel.name

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies (torch, numpy, grpcio, pip...) of this environment, as a plain path entry.
    Path(site, "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    run = subprocess.run([python, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "capability" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    doctor = subprocess.run([venv / "bin" / "gansvc", "doctor", "--device", "cpu"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert doctor.returncode == 0 and "all" in doctor.stdout and "checks passed on cpu" in doctor.stdout, (
        doctor.stdout[-3000:] + doctor.stderr[-3000:]
    )
