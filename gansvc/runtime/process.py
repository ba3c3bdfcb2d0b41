"""The process toolkit: child processes that die with their parent, process-group signals, and
pid-checked kills of processes left behind (a pid is checked before it is signalled, because a dead
process's pid may already belong to some other program).

Used by the service's worker and scheduler and by the distributed launcher and its ranks.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

EXIT_ORPHANED = 3  # the parent is gone: nobody would record what this process does


def die_with_parent(parent_pid: int | None = None, exit_code: int = EXIT_ORPHANED) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies; exit now if it already has.

    `parent_pid` is the pid the parent is expected to have (default: the current parent). Linux ties
    PR_SET_PDEATHSIG to the parent *thread* that forked, so parents start children from a long-lived
    thread. Elsewhere this only checks the parent once.
    """
    expected = os.getppid() if parent_pid is None else parent_pid
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            print(f"gansvc: prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}", file=sys.stderr)
    # The parent may have died before prctl took effect: then this process was re-parented already.
    if os.getppid() != expected:
        os._exit(exit_code)


def signal_group(pid: int, signum: int) -> bool:
    """Send signum to the process group led by pid (started with start_new_session); return whether it was sent."""
    try:
        os.killpg(pid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _read_proc(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:  # gone, or no /proc
        return None


def children(pid: int | None = None) -> list[int]:
    """Return the pids of the live children of `pid` (default: this process), from /proc (empty without it)."""
    pid = os.getpid() if pid is None else pid
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        stat = _read_proc(int(entry.name), "stat") if entry.name.isdigit() else None
        try:  # the parent pid is the 2nd field after the command name, which may itself hold ')'
            if stat is not None and int(stat.rsplit(b")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (IndexError, ValueError):
            continue
    return found


def command_line(pid: int) -> list[bytes] | None:
    """Return the process's argv (None when it is gone or cannot be read)."""
    data = _read_proc(pid, "cmdline")
    return data.split(b"\0") if data else None


def environment(pid: int) -> bytes | None:
    """Return the process's environment block, raw (None when it is gone or cannot be read)."""
    return _read_proc(pid, "environ")


def is_zombie_or_gone(pid: int) -> bool:
    """Return whether pid has exited (gone, or a zombie waiting for its parent)."""
    stat = _read_proc(pid, "stat")
    if stat is None:
        return True
    return stat.rsplit(b")", 1)[1].split()[0] == b"Z"


def kill_if(pid: int, belongs: Callable[[int], bool], *, group: bool = False, wait: float = 0.0) -> bool:
    """SIGKILL pid (its process group with group=True) if belongs(pid) says it is still ours; wait up to
    `wait` seconds for it to exit. Return whether it was ours and was signalled."""
    if not belongs(pid):
        return False
    sent = group and signal_group(pid, signal.SIGKILL)
    if not sent:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return False
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not is_zombie_or_gone(pid):
        time.sleep(0.05)
    return True
