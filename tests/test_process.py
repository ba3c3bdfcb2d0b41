"""The process toolkit against real processes: parent death, group kill, pid-checked kills."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from gansvc.runtime import process

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux")


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.is_zombie_or_gone(pid):
            return True
        time.sleep(0.05)
    return False


def test_a_child_dies_with_its_parent(tmp_path):
    # parent starts a grandchild that asks to die with it, prints the grandchild's pid, then exits
    child_code = "from gansvc.runtime.process import die_with_parent; import sys, time; " \
                 "die_with_parent(int(sys.argv[1])); time.sleep(60)"  # fmt: skip
    parent_code = textwrap.dedent(f"""
        import os, subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", {child_code!r}, str(os.getpid())])
        print(p.pid, flush=True)
        time.sleep(1.5)
        os._exit(0)
    """)
    parent = subprocess.run([sys.executable, "-c", parent_code], capture_output=True, text=True, timeout=30)
    grandchild = int(parent.stdout.split()[0])
    assert _wait_gone(grandchild), "the child outlived its parent"


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    code = "from gansvc.runtime.process import die_with_parent; die_with_parent(1, exit_code=7)"
    result = subprocess.run([sys.executable, "-c", code], timeout=30)
    assert result.returncode == 7  # its parent is this test, not pid 1


def test_kill_if_checks_the_pid_and_kills_the_group():
    leader = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"],
                              start_new_session=True)  # fmt: skip
    time.sleep(1.0)
    members = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == leader.pid]
    assert len(members) == 2
    assert not process.kill_if(leader.pid, lambda pid: False, group=True)  # not ours: left alone
    assert not process.is_zombie_or_gone(leader.pid)
    assert process.kill_if(leader.pid, lambda pid: b"-c" in (process.command_line(pid) or []), group=True, wait=5)
    leader.wait(timeout=10)
    assert all(_wait_gone(pid) for pid in members)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_children_lists_this_process_s_children_and_not_their_children():
    """runtime.process.children against the pids subprocess itself started: a child and, through it, a grandchild."""
    import subprocess

    from gansvc.runtime.process import children

    child = subprocess.Popen(["bash", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(child.stdout.readline())
        assert child.pid in children() and grandchild not in children()
        assert children(child.pid) == [grandchild]
    finally:
        child.kill()
        os.kill(grandchild, 9)
        child.wait()
