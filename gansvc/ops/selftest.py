"""Self-test of gansvc's kernels on first use: every op on small, awkward inputs against the reference.

The CUDA kernels are compiled on machines without a GPU and run for the first time on the user's. So the
first time a process runs an extension op on a device not yet checked (by default any non-CPU device),
`check_device` runs each op of KERNELS on odd sizes, extreme values and every dtype it takes, and compares
it with the pure-PyTorch reference (gansvc.ops.reference, gansvc.ops.fid_reference: plain torch, float64
where it matters). A mismatch or an error logs a warning and switches the process to the reference
kernels (GANSVC_KERNELS=ref, inherited by the processes it starts); `status()` reports the outcome to the
trainer's warnings, GetServerInfo and `gansvc doctor`.

GANSVC_SELFTEST=auto (default: self-test non-CPU devices) | all (the CPU too) | off.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

from gansvc.ops import fid_reference, reference
from gansvc.ops._ext import cuda_compiled, load_extension, use_extension

LOGGER = logging.getLogger("gansvc.ops")
MODES = ("auto", "all", "off")
LOSS_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Accepted norm-wise relative error per dtype of the compared outputs (low-precision gradients are
# stored in their own dtype; loss values and statistics are float32 or float64 opmath).
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 2e-5, torch.float64: 1e-11}
# The iterative trace routes agree to their verification bound (1e-10), not to rounding, and on singular
# covariances the square roots of rounding-noise eigenvalues (~sqrt(d eps) relative) differ by route.
TRACE_TOLERANCE = 1e-6

# The extension side of each op, looked up at call time (the extension may not be built). Tests replace
# an entry with a deliberately wrong kernel to prove the fallback.
KERNELS: dict[str, Callable] = {
    "d_loss": lambda *a: torch.ops.gansvc.d_loss(*a),
    "g_loss": lambda *a: torch.ops.gansvc.g_loss(*a),
    "d_loss_step": lambda *a: load_extension().d_loss_step(*a),
    "g_loss_step": lambda *a: load_extension().g_loss_step(*a),
    "feature_moments_update_": lambda *a: torch.ops.gansvc.feature_moments_update_(*a),
    "feature_moments_merge_": lambda *a: torch.ops.gansvc.feature_moments_merge_(*a),
    "ns_polar_step_": lambda *a: torch.ops.gansvc.ns_polar_step_(*a),
    "sum_squared_difference": lambda *a: torch.ops.gansvc.sum_squared_difference(*a),
    "symmetrize_checked": lambda *a: torch.ops.gansvc.symmetrize_checked(*a),
    "trace_sqrt_product": lambda *a: torch.ops.gansvc.trace_sqrt_product(*a),
    "trace_sqrt_product_lowrank": lambda *a: torch.ops.gansvc.trace_sqrt_product_lowrank(*a),
    "frechet_distance": lambda *a: torch.ops.gansvc.frechet_distance(*a),
}


@dataclass(frozen=True)
class Check:
    """One op on one device and dtype: the largest relative error over its cases and whether it passed."""

    device: str
    op: str
    dtype: str
    passed: bool
    max_error: float  # norm-wise relative error, the worst case; inf for a non-finite mismatch or an error
    tolerance: float
    detail: str = ""  # the worst case, or the error the kernel raised


# --- comparison ------------------------------------------------------------------------------------------


def relative_error(actual, expected, floor: float = 0.0) -> float:
    """Return max |actual - expected| / max(max |expected|, floor); inf where their NaN/Inf entries differ.

    `floor` is the scale of the inputs for outputs that can cancel to ~0 (a difference of means): their
    rounding error is relative to the inputs, not to the result.
    """
    a = torch.as_tensor(actual).detach().to("cpu", torch.float64).reshape(-1)
    e = torch.as_tensor(expected).detach().to("cpu", torch.float64).reshape(-1)
    if a.shape != e.shape:
        return math.inf
    finite, nan = torch.isfinite(e), torch.isnan(e)
    infinite = ~finite & ~nan
    # Non-finite outputs must be the same non-finite values (NaN where NaN, +-inf where +-inf).
    if not bool((torch.isnan(a) == nan).all() and (a[infinite] == e[infinite]).all()):
        return math.inf
    if not bool(torch.isfinite(a[finite]).all()):
        return math.inf
    if not bool(finite.any()):
        return 0.0
    scale = max(float(e[finite].abs().max()), floor)
    error = float((a[finite] - e[finite]).abs().max())
    return error / scale if scale > 0 else error


def _input_scale(*logits: torch.Tensor) -> float:
    return sum(float(x.detach().double().abs().mean()) for x in logits)


def _worst(cases: Iterator[tuple[str, float]]) -> tuple[float, str]:
    worst, where = 0.0, ""
    for name, error in cases:
        if not error <= worst:  # also takes NaN / inf
            worst, where = error, name
    return worst, where


# --- inputs ------------------------------------------------------------------------------------------------


def _logits(n: int, dtype: torch.dtype, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    # Random logits with the extremes planted: saturated sigmoids (+-1e4), exact zeros (the accuracy's
    # threshold), the hinge's kinks (+-1) and tiny values.
    values = torch.randn(n, generator=generator, dtype=torch.float64) * 4.0
    extremes = torch.tensor([1e4, -1e4, 0.0, 1.0, -1.0, 30.0, -30.0, 1e-4], dtype=torch.float64)
    k = min(n, extremes.numel())
    values[:k] = extremes[torch.randperm(extremes.numel(), generator=generator)[:k]]
    return values.to(device=device, dtype=dtype)


def _loss_cases(device: torch.device, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(1234)
    for n_real, n_fake in ((1, 1), (7, 3), (1031, 517)):  # odd sizes: tails of every vector width
        real, fake = _logits(n_real, dtype, device, generator), _logits(n_fake, dtype, device, generator)
        yield f"n={n_real}/{n_fake}", real, fake


def _spd(d: int, rank: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    spread = torch.logspace(0, -3, rank, dtype=torch.float64)  # a decaying spectrum, as features have
    a = torch.randn(d, rank, generator=generator, dtype=torch.float64) * spread
    return (a @ a.T / rank).to(device)


# --- checks of each op ----------------------------------------------------------------------------------------


def _max_error(got: tuple, want: tuple, scale: float) -> float:
    # The first two outputs (loss, statistics) are means that can cancel: relative to the inputs' scale.
    # The gradients: relative to themselves.
    return max(relative_error(a, b, scale if i < 2 else 0.0) for i, (a, b) in enumerate(zip(got, want)))


def _grads(loss: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, inputs)


def _check_d_loss(kernel, device, dtype):
    for case, r, f in _loss_cases(device, dtype):
        for kind, label in (("bce", 1.0), ("bce", 0.9), ("hinge", 1.0), ("wasserstein", 1.0)):
            name = f"{kind} label={label} {case}"
            r1, f1 = r.clone().requires_grad_(), f.clone().requires_grad_()
            loss, stats = kernel(r1, f1, kind, label)
            got = (loss.detach(), stats, *_grads(loss, (r1, f1)))
            r2, f2 = r.clone().requires_grad_(), f.clone().requires_grad_()
            loss, stats = reference.d_loss(r2, f2, kind, label)
            want = (loss.detach(), stats, *_grads(loss, (r2, f2)))
            yield name, _max_error(got, want, _input_scale(r, f))


def _check_g_loss(kernel, device, dtype):
    for case, _, f in _loss_cases(device, dtype):
        for kind in reference.G_KINDS:
            f1, f2 = f.clone().requires_grad_(), f.clone().requires_grad_()
            loss1, stats1 = kernel(f1, kind)
            loss2, stats2 = reference.g_loss(f2, kind)
            got, want = (loss1.detach(), stats1, *_grads(loss1, (f1,))), (loss2.detach(), stats2, *_grads(loss2, (f2,)))
            yield f"{kind} {case}", _max_error(got, want, _input_scale(f))


def _check_d_loss_step(kernel, device, dtype):
    for case, r, f in _loss_cases(device, dtype):
        for kind in reference.D_KINDS:
            r1, f1 = r.clone().requires_grad_(), f.clone().requires_grad_()
            out = kernel(r1, f1, kind, 1.0)
            r2, f2 = r.clone().requires_grad_(), f.clone().requires_grad_()
            loss, stats = reference.d_loss(r2, f2, kind, 1.0)
            loss.backward()
            want = torch.cat([loss.detach().reshape(1), stats])
            got, expected = (out[:1], out[1:], r1.grad, f1.grad), (want[:1], want[1:], r2.grad, f2.grad)
            yield f"{kind} {case}", _max_error(got, expected, _input_scale(r, f))


def _check_g_loss_step(kernel, device, dtype):
    for case, _, f in _loss_cases(device, dtype):
        for kind in reference.G_KINDS:
            f1, f2 = f.clone().requires_grad_(), f.clone().requires_grad_()
            out = kernel(f1, kind)
            loss, stats = reference.g_loss(f2, kind)
            loss.backward()
            want = torch.cat([loss.detach().reshape(1), stats])
            got, expected = (out[:1], out[1:], f1.grad), (want[:1], want[1:], f2.grad)
            yield f"{kind} {case}", _max_error(got, expected, _input_scale(f))


def _moments(d: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(d, dtype=torch.float64, device=device), torch.zeros(d, d, dtype=torch.float64, device=device)


def _check_moments_update(kernel, device, dtype):
    generator = torch.Generator().manual_seed(7)
    d = 37
    # A mean far above the spread (the case that loses digits in Σxxᵀ/n - μμᵀ); rows of 1, 53 and 2 odd sizes.
    batches = [(torch.randn(n, d, generator=generator, dtype=torch.float64) * 0.5 + 100.0).to(device, dtype)
               for n in (53, 1, 2)]
    got, want = _moments(d, device), _moments(d, device)
    count_got = count_want = 0
    for batch in batches:
        count_got = int(kernel(*got, count_got, batch))
        count_want = fid_reference.reference_feature_moments_update_(*want, count_want, batch)
    if count_got != count_want:
        yield "count", math.inf
    yield "mean", relative_error(got[0], want[0])
    yield "m2", relative_error(got[1], want[1])


def _check_moments_merge(kernel, device, dtype):
    generator = torch.Generator().manual_seed(8)
    d = 37
    parts = []
    for n in (11, 3):
        mean, m2 = _moments(d, device)
        rows = torch.randn(n, d, generator=generator, dtype=torch.float64).to(device) + 5.0
        parts.append((mean, m2, fid_reference.reference_feature_moments_update_(mean, m2, 0, rows)))
    (mean_a, m2_a, count_a), (mean_b, m2_b, count_b) = parts
    got = (mean_a.clone(), m2_a.clone())
    want = (mean_a.clone(), m2_a.clone())
    count_got = int(kernel(*got, count_a, mean_b, m2_b, count_b))
    count_want = fid_reference.reference_feature_moments_merge_(*want, count_a, mean_b, m2_b, count_b)
    yield "count", 0.0 if count_got == count_want else math.inf
    yield "mean", relative_error(got[0], want[0])
    yield "m2", relative_error(got[1], want[1])


def _check_ns_polar_step(kernel, device, dtype):
    generator = torch.Generator().manual_seed(9)
    for shape in ((1, 1), (33, 17), (129, 65)):
        x, q, b = (torch.randn(*shape, generator=generator, dtype=torch.float64).to(device) for _ in range(3))
        x1, x2 = x.clone(), x.clone()
        total = kernel(x1, q, b)
        x2.mul_(1.5).sub_(0.5 * q)
        yield f"{shape}", max(relative_error(x1, x2), relative_error(total, (x2 * b).sum()))


def _check_sum_squared_difference(kernel, device, dtype):
    generator = torch.Generator().manual_seed(10)
    for shape in ((1,), (1031,), (67, 33)):
        a, b = (torch.randn(*shape, generator=generator, dtype=torch.float64).to(device) * 1e3 for _ in range(2))
        yield f"{shape}", relative_error(kernel(a, b), (a - b).square().sum())


def _check_symmetrize(kernel, device, dtype):
    generator = torch.Generator().manual_seed(11)
    for d in (1, 29, 130):
        s = (torch.randn(d, d, generator=generator, dtype=torch.float64) * 1e150).to(device)
        sym, stats = kernel(s)
        want = torch.stack([s.abs().max(), (s - s.T).abs().max(), torch.zeros((), dtype=torch.float64, device=device)])
        yield f"d={d}", max(relative_error(sym, (s + s.T) * 0.5), relative_error(stats, want))


def _covariance_pairs(device):
    generator = torch.Generator().manual_seed(12)
    d = 29
    yield "full rank", _spd(d, d, generator, device), _spd(d, d, generator, device)
    yield "singular", _spd(d, d, generator, device), _spd(d, 5, generator, device)


def _check_trace(kernel, device, dtype):
    for case, s1, s2 in _covariance_pairs(device):
        for method in ("eigh", "newton-schulz"):
            value, _ = kernel(s1, s2, method, fid_reference.DEFAULT_MAX_ITER, fid_reference.DEFAULT_RTOL,
                              fid_reference.DEFAULT_VERIFY_TOL)
            want = fid_reference.reference_trace_sqrt_product(s1, s2, method).value
            yield f"{method} {case}", relative_error(value, want)


def _check_trace_lowrank(kernel, device, dtype):
    generator = torch.Generator().manual_seed(13)
    s1 = _spd(29, 29, generator, device)
    features = torch.randn(13, 29, generator=generator, dtype=torch.float64).to(device, torch.float32)
    for method in ("eigh", "newton-schulz"):
        value, _ = kernel(s1, features, method, fid_reference.DEFAULT_MAX_ITER, fid_reference.DEFAULT_RTOL,
                          fid_reference.DEFAULT_VERIFY_TOL)
        want = fid_reference.reference_trace_sqrt_product_lowrank(s1, features, method).value
        yield method, relative_error(value, want)


def _check_frechet(kernel, device, dtype):
    generator = torch.Generator().manual_seed(14)
    for case, s1, s2 in _covariance_pairs(device):
        mu1, mu2 = (torch.randn(s1.shape[0], generator=generator, dtype=torch.float64).to(device) for _ in range(2))
        yield case, relative_error(kernel(mu1, s1, mu2, s2, "eigh"),
                                   fid_reference.reference_frechet_distance(mu1, s1, mu2, s2, "eigh"))


# op -> (check, dtypes, tolerance or None for the dtype's)
CHECKS: dict[str, tuple[Callable, tuple[torch.dtype, ...], float | None]] = {
    "d_loss": (_check_d_loss, LOSS_DTYPES, None),
    "g_loss": (_check_g_loss, LOSS_DTYPES, None),
    "d_loss_step": (_check_d_loss_step, LOSS_DTYPES, None),
    "g_loss_step": (_check_g_loss_step, LOSS_DTYPES, None),
    "feature_moments_update_": (_check_moments_update, LOSS_DTYPES, 1e-11),
    "feature_moments_merge_": (_check_moments_merge, (torch.float64,), None),
    "ns_polar_step_": (_check_ns_polar_step, (torch.float64,), None),
    "sum_squared_difference": (_check_sum_squared_difference, (torch.float64,), None),
    "symmetrize_checked": (_check_symmetrize, (torch.float64,), None),
    "trace_sqrt_product": (_check_trace, (torch.float64,), TRACE_TOLERANCE),
    "trace_sqrt_product_lowrank": (_check_trace_lowrank, (torch.float64,), TRACE_TOLERANCE),
    "frechet_distance": (_check_frechet, (torch.float64,), TRACE_TOLERANCE),
}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_device(device: str | torch.device, ops: tuple[str, ...] | None = None) -> list[Check]:
    """Run the self-test of `ops` (default: all of CHECKS) on `device`; return one Check per op and dtype.

    Compares KERNELS (the extension) with the reference; a kernel that raises fails its check. Needs the
    extension built (else RuntimeError).
    """
    if load_extension() is None:
        raise RuntimeError("gansvc._C is not built: there are no kernels to self-test (the reference is in use)")
    device = torch.device(device)
    results = []
    for op in ops or tuple(CHECKS):
        check, dtypes, tolerance = CHECKS[op]
        for dtype in dtypes:
            tol = TOLERANCE[dtype] if tolerance is None else tolerance
            try:
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    error, where = _worst(check(KERNELS[op], device, dtype))
            except Exception as failure:  # noqa: BLE001 - a kernel that raises on valid input fails its check
                error, where = math.inf, f"raised {type(failure).__name__}: {failure}"
            passed = error <= tol
            results.append(Check(str(device), op, _dtype_name(dtype), passed, error, tol, "" if passed else where))
    return results


# --- first use in a process ----------------------------------------------------------------------------------

_LOCK = threading.Lock()
_RESULTS: dict[torch.device, list[Check]] = {}  # devices self-tested in this process
_TRUSTED: dict[torch.device, bool] = {}
_FALLBACK_MESSAGE: list[str] = []  # the warning of the fallback, once it happened
_CHECK_CPU = False  # GANSVC_SELFTEST=all
_ENABLED = True  # not GANSVC_SELFTEST=off


def configure() -> None:
    """(Re)read GANSVC_SELFTEST and forget which devices were checked (the tests' reset)."""
    global _CHECK_CPU, _ENABLED
    mode = os.environ.get("GANSVC_SELFTEST", "").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"GANSVC_SELFTEST must be one of {', '.join(MODES)}, got {mode!r}")
    _CHECK_CPU, _ENABLED = mode == "all", mode != "off"
    with _LOCK:
        _RESULTS.clear()
        _TRUSTED.clear()
        _FALLBACK_MESSAGE.clear()


def kernels_for(tensor: torch.Tensor) -> bool:
    """Return whether the extension serves an op on `tensor`'s device.

    That is use_extension(), and on a device that gets a self-test (not the CPU, unless
    GANSVC_SELFTEST=all), the self-test run on the first call passed.
    """
    if not use_extension():
        return False
    device = tensor.device
    if device.type == "cpu" and not _CHECK_CPU:
        return True
    trusted = _TRUSTED.get(device)
    if trusted is None:
        trusted = _first_use(device)
    return trusted and use_extension()


@torch.compiler.disable
def _first_use(device: torch.device) -> bool:
    if not _ENABLED:
        return True
    with _LOCK:
        if device in _TRUSTED:
            return _TRUSTED[device]
        results = check_device(device)
        failures = [c for c in results if not c.passed]
        _RESULTS[device] = results
        _TRUSTED[device] = not failures
        if not failures:
            LOGGER.info("gansvc kernels passed their self-test on %s (%d checks)", device, len(results))
            return True
        message = (
            f"gansvc's kernels failed their self-test on {device}: {_summary(failures)}; this process uses the "
            "pure-PyTorch reference kernels from now on (GANSVC_KERNELS=ref; run `gansvc doctor` for the table)"
        )
        os.environ["GANSVC_KERNELS"] = "ref"
        _FALLBACK_MESSAGE[:] = [message]
    LOGGER.warning("%s", message)
    warnings.warn(message, RuntimeWarning, stacklevel=4)
    return False


def _summary(failures: list[Check]) -> str:
    shown = [f"{c.op} {c.dtype} (error {c.max_error:.2g} > {c.tolerance:.0e}{'; ' + c.detail if c.detail else ''})"
             for c in failures[:3]]
    more = f" and {len(failures) - 3} more" if len(failures) > 3 else ""
    return ", ".join(shown) + more


def failure_message() -> str | None:
    """Return the warning of a self-test failure in this process (None while none failed)."""
    return _FALLBACK_MESSAGE[0] if _FALLBACK_MESSAGE else None


def status() -> dict:
    """Return this process's kernel state as a JSON-able dict.

    {"kernels": "ext" | "ref" | "invalid GANSVC_KERNELS", "extension_built", "cuda_compiled",
    "selftest": "not run" | "passed" | "failed", "devices": {device: {"passed", "checks", "failures"}},
    "message": the fallback warning or ""}.
    """
    try:
        kernels = "ext" if use_extension() else "ref"
    except ValueError:
        kernels = "invalid GANSVC_KERNELS"
    with _LOCK:
        devices = {
            str(device): {
                "passed": all(c.passed for c in results),
                "checks": len(results),
                "failures": [asdict(c) for c in results if not c.passed],
            }
            for device, results in _RESULTS.items()
        }
        message = _FALLBACK_MESSAGE[0] if _FALLBACK_MESSAGE else ""
    state = "not run" if not devices else ("passed" if all(d["passed"] for d in devices.values()) else "failed")
    return {
        "kernels": kernels,
        "extension_built": load_extension() is not None,
        "cuda_compiled": cuda_compiled(),
        "selftest": state,
        "devices": devices,
        "message": message,
    }


configure()
