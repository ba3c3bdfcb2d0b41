"""`gansvc doctor`: self-test gansvc's kernels on every device and print a table; exit 1 on a mismatch.

    gansvc doctor                 # the CPU and every CUDA device
    gansvc doctor --device cuda:1 --json

Each op runs on small, awkward inputs (odd sizes, extreme values, every dtype it takes) against the
pure-PyTorch reference (gansvc.ops.selftest, the same check a process runs on a GPU's first use).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from gansvc.runtime.console import UsageError


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Declare the options of `gansvc doctor`."""
    parser.add_argument(
        "--device", action="append", default=None, metavar="DEVICE",
        help="a device to test (cpu, cuda, cuda:N); repeatable (default: cpu and every CUDA device)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the checks as JSON lines instead of a table")


def devices_to_test(requested: list[str] | None) -> list[torch.device]:
    """Return the devices named (checked to exist), or the CPU and every visible CUDA device."""
    if not requested:
        return [torch.device("cpu")] + [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    devices = []
    for name in requested:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UsageError(f"--device: {name!r} is not a device (cpu, cuda, cuda:N)") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise UsageError(f"--device {name}: no CUDA device is visible to this process")
            device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
            if device.index >= torch.cuda.device_count():
                raise UsageError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
        elif device.type != "cpu":
            raise UsageError(f"--device {name}: only cpu and cuda devices have gansvc kernels")
        devices.append(device)
    return devices


def format_table(checks) -> str:
    """Return the checks as an aligned text table: device, op, dtype, status, max error (and the failure)."""
    rows = [("device", "op", "dtype", "status", "max error", "")]
    for c in checks:
        rows.append((c.device, c.op, c.dtype, "ok" if c.passed else "MISMATCH", f"{c.max_error:.2e}", c.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(line + (f"  {row[5]}" if row[5] else "") for line, row in zip(lines, rows))


def run(name: str, args) -> int:
    """Self-test each device; print the table (or JSON lines); return 1 when any check failed, else 0."""
    from dataclasses import asdict

    from gansvc.ops import cpu_capability, cuda_compiled, load_extension, selftest

    devices = devices_to_test(args.device)
    if load_extension() is None:
        print("gansvc._C is not built: the pure-PyTorch reference kernels are in use; nothing to self-test "
              "(build it with scripts/setup.sh)")
        return 0
    notes = [f"CPU kernels: {cpu_capability()}"]
    if torch.cuda.is_available() and not cuda_compiled():
        notes.append("CUDA devices are visible but gansvc._C was built without CUDA kernels: CUDA tensors use the "
                     "reference")
        devices = [d for d in devices if d.type != "cuda"]
    checks = []
    for device in devices:
        checks.extend(selftest.check_device(device))
    if args.json:
        for check in checks:
            print(json.dumps(asdict(check)))
    else:
        print(format_table(checks))
        failed = [c for c in checks if not c.passed]
        for note in notes:
            print(note)
        where = ", ".join(str(d) for d in devices)
        if failed:
            print(f"{len(failed)} of {len(checks)} checks MISMATCH on {where}: gansvc falls back to the reference "
                  "kernels there (or set GANSVC_KERNELS=ref)", file=sys.stderr)
        else:
            print(f"all {len(checks)} checks passed on {where}")
    return 1 if any(not c.passed for c in checks) else 0
