"""FID's trace term Tr((S1 S2)^½): gansvc vs pytorch-fid's sqrtm route vs torchmetrics' eigvals route.

All routes run in this one process on the same matrices, in float64:
- gansvc eigh            gansvc.ops.fid.trace_sqrt_product(method="eigh") (the CPU default)
- gansvc newton-schulz   the GPU default, run on the CPU here (GEMM-bound: slow on 2 cores)
- gansvc m×m             trace_sqrt_product_lowrank, when the m < d generated features are at hand
- pytorch-fid            np.trace(scipy.linalg.sqrtm(S1 @ S2)).real
- torchmetrics           torch.linalg.eigvals(S1 @ S2).sqrt().real.sum()
Problems: "features" (covariances of synthetic ReLU features, n = 10 000 per side), "known" (a
realistic spectrum with the exact answer known by construction: S1 = A Aᵀ, S2 = A⁻ᵀ P diag(b) Pᵀ A⁻¹),
and "m<d" (1000 generated samples, d = 2048, exact answer known: the generated features are built so
that X A has known singular values). Times are the minimum of --repeat runs. Then FeatureStats on
50 000 × 2048 features vs np.cov on the whole matrix: time and peak memory (each in a fresh process).

    python bench/fid.py [--dims 512,2048] [--repeat 3] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from threads import pin_threads_from_argv  # noqa: E402  (bench/threads.py, beside this script)

pin_threads_from_argv()

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402

from gansvc.ops import fid as fid_ops  # noqa: E402
from gansvc.ops._ext import use_extension  # noqa: E402


def orthogonal(d: int, rng: np.random.Generator, columns: int | None = None) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, columns or d)))
    return q * np.sign(np.diag(r))


def relu_features(n: int, d: int, rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    """Inception-like features: a ReLU layer on a 512-d latent, a decaying covariance spectrum."""
    weights = np.random.default_rng(0).standard_normal((512, d)) / math.sqrt(512)
    latent = rng.standard_normal((n, 512)) + shift
    return np.maximum(latent @ weights + 0.05 * rng.standard_normal((n, d)), 0.0)


def features_problem(d: int, rng: np.random.Generator):
    s1 = np.cov(relu_features(10_000, d, rng), rowvar=False)
    s2 = np.cov(relu_features(10_000, d, rng, shift=0.15), rowvar=False)
    return s1, s2, None, None


def known_problem(d: int, rng: np.random.Generator):
    # Spectra decaying over 6 decades like Inception pool3 covariances; A = Q diag(s), so A⁻¹ is exact.
    q, p = orthogonal(d, rng), orthogonal(d, rng)
    s = np.sqrt(np.logspace(0.5, -3, d))
    b = np.logspace(1, -5, d) * rng.uniform(0.5, 1.5, d)
    s1 = (q * s**2) @ q.T
    inner = (q / s) @ p
    s2 = (inner * b) @ inner.T
    return (s1 + s1.T) / 2, (s2 + s2.T) / 2, float(np.sqrt(b).sum()), None


def lowrank_problem(d: int, rng: np.random.Generator, m: int = 1000):
    # S1 = A Aᵀ with A = Q diag(s). Generated features X = B A⁻¹ + mean, where B = U diag(σ) Vᵀ has
    # zero column means (U ⟂ 1): then X's centred rows are B A⁻¹ and Tr((S1 S2)^½) = Σσ / sqrt(m-1).
    q = orthogonal(d, rng)
    s = np.sqrt(np.logspace(0.5, -3, d))
    s1 = (q * s**2) @ q.T
    g = rng.standard_normal((m, m - 1))
    u = np.linalg.qr(g - g.mean(0))[0]
    v = orthogonal(d, rng, m - 1)
    sigma = np.logspace(1.5, -2, m - 1)
    x = ((u * sigma) @ v.T) @ (q / s).T + rng.standard_normal(d) * 3
    return (s1 + s1.T) / 2, np.cov(x, rowvar=False), float(sigma.sum() / math.sqrt(m - 1)), x


def timed(fn, repeat: int) -> tuple[float, float]:
    best, value = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def sqrtm_route(s1, s2) -> float:
    return float(np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)


def eigvals_route(t1, t2) -> float:
    return float(torch.linalg.eigvals(t1 @ t2).sqrt().real.sum())


def run_problem(name: str, d: int, s1, s2, exact, features, repeat: int, newton_schulz: bool) -> list[dict]:
    t1, t2 = torch.from_numpy(s1), torch.from_numpy(s2)
    routes = [("gansvc eigh", lambda: fid_ops.trace_sqrt_product(t1, t2, "eigh"), repeat)]
    if features is not None:
        x = torch.from_numpy(features)
        routes.append(("gansvc m×m", lambda: fid_ops.trace_sqrt_product_lowrank(t1, x, "eigh"), repeat))
    if newton_schulz and (d <= 1024 or name == "known"):  # ~30 s a problem at d = 2048 on this CPU
        routes.append(("gansvc newton-schulz (CPU)", lambda: fid_ops.trace_sqrt_product(t1, t2, "newton-schulz"), 1))
    routes += [
        ("pytorch-fid sqrtm", lambda: sqrtm_route(s1, s2), max(1, repeat - 1) if d > 1024 else repeat),
        ("torchmetrics eigvals", lambda: eigvals_route(t1, t2), max(1, repeat - 1) if d > 1024 else repeat),
    ]
    rows = []
    for route, fn, n in routes:
        seconds, value = timed(fn, n)
        rows.append({"problem": name, "d": d, "route": route, "seconds": seconds, "value": value})
        print(f"  {name:9s} d={d:5d} {route:28s} {seconds:8.3f} s  {value:.12g}", file=sys.stderr, flush=True)
    anchor = exact if exact is not None else rows[0]["value"]
    sqrtm_seconds = next(r["seconds"] for r in rows if r["route"] == "pytorch-fid sqrtm")
    for row in rows:
        row["rel_diff"] = abs(row["value"] - anchor) / abs(anchor)
        row["vs"] = "exact" if exact is not None else "gansvc eigh"
        row["speedup_vs_sqrtm"] = sqrtm_seconds / row["seconds"]
    return rows


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak resident memory of a code section beyond the resident memory when it started (Linux)."""

    def __enter__(self):
        self.start = _status_mb("VmRSS")
        try:  # "5" resets the peak (VmHWM) to the current RSS; without it the section peak is a bound
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        return self

    def __exit__(self, *exc):
        self.extra_mb = _status_mb("VmHWM") - self.start


def memory_child(kind: str, n: int, d: int, chunk: int) -> None:
    """Run one of the moment computations in this (fresh) process; print JSON with time and peak RSS."""
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((256, d)) / 16

    def batch(rows: int) -> np.ndarray:
        return np.maximum(rng.standard_normal((rows, 256)) @ weights, 0.0).astype(np.float32)

    result = {"kind": kind, "n": n, "d": d}
    if kind == "featurestats":
        from gansvc.metrics.fid import FeatureStats

        FeatureStats(d).update(torch.ones(2, d))  # the extension's first call, outside (no rng draws)
        # The batches are made first, so that one wall-clock interval times the statistics alone, and it
        # includes covariance(): the last partial chunk's update and the mirroring of M2.
        batches = [torch.from_numpy(batch(min(chunk, n - start))) for start in range(0, n, chunk)]
        with PeakMemory() as peak:  # includes the statistics themselves (mean, M2: 32 MB at d = 2048)
            began = time.perf_counter()
            stats = FeatureStats(d)
            for rows in batches:  # features arrive in batches, as from an extractor
                stats.update(rows)
            cov = stats.covariance()
            seconds = time.perf_counter() - began
        result["check"] = float(cov.trace())
    else:
        features = np.concatenate([batch(min(chunk, n - s)) for s in range(0, n, chunk)]).astype(np.float64)
        with PeakMemory() as peak:
            began = time.perf_counter()
            cov = np.cov(features, rowvar=False)
            seconds = time.perf_counter() - began
        result["check"] = float(np.trace(cov))
        result["input_mb"] = features.nbytes / 1e6
    result["seconds"] = seconds
    result["peak_extra_mb"] = peak.extra_mb
    print(json.dumps(result))


def measure_memory(n: int, d: int, chunk: int) -> list[dict]:
    results = []
    for kind in ("featurestats", "np.cov"):
        done = subprocess.run(
            [sys.executable, __file__, "--memory-child", kind, "--n", str(n), "--d", str(d), "--chunk", str(chunk)],
            capture_output=True, text=True, check=True, env=os.environ,
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  {kind}: {results[-1]}", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", default="512,2048")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="BLAS/OpenMP threads for every library")
    parser.add_argument("--no-newton-schulz", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=50_000, help=argparse.SUPPRESS)
    parser.add_argument("--d", type=int, default=2048, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=1000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.n, args.d, args.chunk)
        return 0
    if not use_extension():
        print("warning: gansvc._C is not in use; timing the pure-PyTorch reference", file=sys.stderr)
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    rows = []
    for d in [int(x) for x in args.dims.split(",")]:
        rng = np.random.default_rng(d)
        problems = [("features", *features_problem(d, rng)), ("known", *known_problem(d, rng))]
        if d >= 2048:
            problems.append(("m<d", *lowrank_problem(d, rng)))
        for name, s1, s2, exact, features in problems:
            rows += run_problem(name, d, s1, s2, exact, features, args.repeat, not args.no_newton_schulz)
    memory = [] if args.skip_memory else measure_memory(args.n, args.d, args.chunk)

    print("\n| problem | d | route | time (s) | × faster than sqrtm | rel. difference |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['problem']} | {row['d']} | {row['route']} | {row['seconds']:.3f} | "
            f"{row['speedup_vs_sqrtm']:.1f} | {row['rel_diff']:.1e} (vs {row['vs']}) |"
        )
    if memory:
        print(f"\nMoments of {args.n} × {args.d} float32 features (float64 statistics):\n")
        print("| method | time (s) | peak memory beyond its input (MB) |")
        print("|---|---|---|")
        for m in memory:
            label = (f"FeatureStats, batches of {args.chunk} streamed (incl. its 32 MB state)"
                     if m["kind"] == "featurestats"
                     else f"np.cov on the whole matrix (after its {m['input_mb']:.0f} MB float64 input)")
            print(f"| {label} | {m['seconds']:.2f} | {m['peak_extra_mb']:.0f} |")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f} (2 cores shared; times are minima of repeats)")
    if args.json:
        args.json.write_text(json.dumps({"trace": rows, "moments": memory}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
