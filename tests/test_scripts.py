"""scripts/setup.sh as a newcomer's terminal sees it: progress lines only, tool output in the log, its tail on failure.

The real script runs in a scratch checkout whose .venv holds stand-ins for python and pip: shell scripts
that print what a compiler and pip print on these machines (hundreds of warnings, pip's location
notices) and exit with a chosen status. What reaches the terminal is compared with what the tools wrote.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOISE_LINES = 300

# Prints like a torch extension build (one warning per line, then the last word), records its arguments.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../python.calls"
for i in $(seq 1 {noise}); do
    echo "csrc/ops.cpp:$i: warning: ignoring '#pragma unroll' [-Wunknown-pragmas]" >&2
done
if [ "${{FAKE_BUILD_STATUS:-0}}" != 0 ]; then
    echo "error: command '/usr/bin/c++' failed with exit code 1"
fi
exit "${{FAKE_BUILD_STATUS:-0}}"
"""
FAKE_PIP = """#!/usr/bin/env bash
echo "GANSVC_SKIP_EXTENSION=${{GANSVC_SKIP_EXTENSION:-}} $*" >> "$(dirname "$0")/../pip.calls"
for i in $(seq 1 {noise}); do
    echo "WARNING: Location '/nonexistent/index-$i' is ignored: it is neither a file nor a directory." >&2
done
exit "${{FAKE_PIP_STATUS:-0}}"
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A scratch checkout: the real scripts/setup.sh, a requirements.txt, and a .venv of stand-ins."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    (tmp_path / "requirements.txt").write_text("torch==2.14.1\n")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    _executable(bin_dir / "python", FAKE_PYTHON.format(noise=NOISE_LINES))
    _executable(bin_dir / "pip", FAKE_PIP.format(noise=NOISE_LINES))
    _executable(bin_dir / "gansvc", "#!/bin/sh\nexit 0\n")  # installed already: only the incremental build runs
    shutil.copy(tmp_path / "requirements.txt", tmp_path / ".venv" / ".requirements.stamp")
    # A stand-in apt-get that fails, in case this machine lacks the data package: never touch the system.
    shims = tmp_path / "shims"
    shims.mkdir()
    _executable(shims / "apt-get", "#!/bin/sh\nexit 100\n")
    return tmp_path


def _setup(checkout: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PATH": f"{checkout / 'shims'}:{os.environ['PATH']}", **env}
    environment.pop("GANSVC_SETUP_LOG", None)
    return subprocess.run(
        ["bash", str(checkout / "scripts" / "setup.sh")], env=environment, capture_output=True, text=True, timeout=120
    )


def test_a_fresh_checkout_builds_the_extension_once(checkout: Path):
    # Issue 18: pip's editable install built the extension in a temporary folder and the "incremental" build
    # after it started from nothing. Now: one in-place build, then an editable install that builds nothing.
    (checkout / ".venv" / "bin" / "gansvc").unlink()  # not installed yet: a fresh clone
    result = _setup(checkout)
    assert result.returncode == 0, result.stderr
    builds = [c for c in (checkout / ".venv" / "python.calls").read_text().splitlines() if "build_ext" in c]
    assert builds == ["setup.py --quiet build_ext --inplace"]
    editable = [c for c in (checkout / ".venv" / "pip.calls").read_text().splitlines() if c.endswith("-e .")]
    assert len(editable) == 1 and editable[0].startswith("GANSVC_SKIP_EXTENSION=1 "), editable
    terminal = result.stderr.splitlines()
    assert [i for i, line in enumerate(terminal) if "extension" in line] == [0]  # built before the install line
    assert "installing gansvc (editable)" in terminal[1]


def test_build_failure_prints_the_log_tail_and_exits_with_the_status(checkout: Path):
    result = _setup(checkout, FAKE_BUILD_STATUS="3")
    assert result.returncode == 3, result.stderr
    log = checkout / "build" / "setup.log"
    log_lines = log.read_text().splitlines()
    # the log holds everything the build printed ...
    assert sum("#pragma unroll" in line for line in log_lines) == NOISE_LINES
    assert log_lines[-1] == "error: command '/usr/bin/c++' failed with exit code 1"
    # ... and the terminal its last lines, the failing step and the log's path, not the whole of it
    terminal = result.stderr.splitlines()
    assert "FAILED" in result.stderr and "exit 3" in result.stderr
    assert "build/setup.log" in result.stderr
    assert log_lines[-1] in terminal
    assert log_lines[-2] in terminal
    assert "csrc/ops.cpp:1:" not in result.stderr  # the first warning is far from the tail
    assert len(terminal) < 60
    assert result.stdout == ""


def test_success_shows_progress_lines_only(checkout: Path):
    (checkout / "requirements.txt").write_text("torch==2.14.1\ngrpcio==1.85.1\n")  # changed: pip runs again
    result = _setup(checkout)
    assert result.returncode == 0, result.stderr
    log = (checkout / "build" / "setup.log").read_text()
    assert log.count("WARNING: Location") == NOISE_LINES
    assert log.count("#pragma unroll") == NOISE_LINES
    terminal = result.stderr.splitlines()
    assert "warning" not in result.stderr.lower()
    assert result.stdout == ""
    assert all(line.startswith("gansvc setup: ") for line in terminal), terminal
    assert len(terminal) == 3  # the wheels, the build, "ready"
    assert "installing the pinned wheels" in terminal[0] and terminal[0].endswith(" s)")
    assert "building the C++/CUDA extension" in terminal[1] and terminal[1].endswith(" s)")
    assert "build/setup.log" in terminal[2]
    # the steps ran the real commands, and the stamp now records the installed requirements
    assert "-r requirements.txt" in (checkout / ".venv" / "pip.calls").read_text()
    assert (checkout / ".venv" / "python.calls").read_text().split() == [
        "setup.py", "--quiet", "build_ext", "--inplace"
    ]  # fmt: skip
    stamp = (checkout / ".venv" / ".requirements.stamp").read_text()
    assert stamp == (checkout / "requirements.txt").read_text()


def test_failed_pip_install_keeps_the_old_stamp(checkout: Path):
    old_stamp = (checkout / ".venv" / ".requirements.stamp").read_text()
    (checkout / "requirements.txt").write_text("torch==2.14.1\nnumpy==2.4.0\n")
    result = _setup(checkout, FAKE_PIP_STATUS="1")
    assert result.returncode == 1
    assert "installing the pinned wheels" in result.stderr and "FAILED" in result.stderr
    assert not (checkout / ".venv" / "python.calls").exists()  # nothing after the failed step ran
    assert (checkout / ".venv" / ".requirements.stamp").read_text() == old_stamp  # so the next run retries


def test_dockerfile_health_check_uses_the_health_port_and_arch_list_covers_t4_and_newer_gpus():
    import json
    import re

    text = (ROOT / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    check = json.loads(re.search(r"^\s+CMD (\[.*\])$", text, re.M).group(1))
    assert entrypoint[:2] == ["gansvc", "serve"] and "--health-listen" in entrypoint
    health_listen = entrypoint[entrypoint.index("--health-listen") + 1]
    assert health_listen.startswith("127.0.0.1:")  # the plaintext, token-free port stays inside the container
    assert check[:2] == ["gansvc", "health"] and check[check.index("--server") + 1] == health_listen
    arch = re.search(r'TORCH_CUDA_ARCH_LIST="([^"]+)"', text).group(1).split(";")
    assert arch[0] == "7.5" and arch[-1].endswith("+PTX"), arch  # T4 (sm_75) and PTX for GPUs past the list
