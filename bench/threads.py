"""--threads N for the benchmarks, applied before torch, NumPy and SciPy load their thread pools."""

from __future__ import annotations

import os
import sys


def pin_threads_from_argv() -> None:
    """Set OMP/MKL/OpenBLAS thread counts from a `--threads N` on the command line (call before importing them).

    On a shared, oversubscribed CPU one thread each gives steadier (and often faster) times.
    """
    if "--threads" in sys.argv[:-1]:
        value = sys.argv[sys.argv.index("--threads") + 1]
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = value
