"""The kernels' self-test (gansvc.ops.selftest) and `gansvc doctor`: the extension against the reference on
awkward inputs, and a deliberately broken kernel that must be caught and make the process fall back."""

from __future__ import annotations

import math
import os

import pytest
import torch

from gansvc import cli, ops
from gansvc.ops import fid as fid_ops
from gansvc.ops import selftest

needs_extension = pytest.mark.skipif(ops.load_extension() is None, reason="gansvc._C is not built")


@pytest.fixture
def fresh_selftest(monkeypatch):
    """A process state as after start-up, with the environment restored (GANSVC_KERNELS included) after."""
    monkeypatch.delenv("GANSVC_KERNELS", raising=False)
    monkeypatch.delenv("GANSVC_SELFTEST", raising=False)
    selftest.configure()
    yield monkeypatch
    monkeypatch.undo()
    selftest.configure()


def _wrong_loss(*args):
    # A plausible bug: the loss is right to 3 digits only (e.g. a float16 accumulator).
    loss, stats = torch.ops.gansvc.d_loss(*args)
    return loss * (1 + 1e-3), stats


def _wrong_gradient(*args):
    # Right values, gradients wrong for the last element of odd-sized inputs (a vector-tail bug).
    real, fake = args[0], args[1]

    class Tail(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            grad = grad.clone()
            if grad.numel() % 2:
                grad[-1] = 0
            return grad

    return torch.ops.gansvc.d_loss(Tail.apply(real), Tail.apply(fake), *args[2:])


def test_relative_error_compares_values_and_non_finite_patterns():
    assert selftest.relative_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == 0.0
    assert selftest.relative_error(torch.tensor([1.0, 2.2]), torch.tensor([1.0, 2.0])) == pytest.approx(0.1)
    assert selftest.relative_error(torch.tensor([math.nan]), torch.tensor([math.nan])) == 0.0
    assert selftest.relative_error(torch.tensor([math.inf, 1.0]), torch.tensor([math.inf, 1.0])) == 0.0
    assert selftest.relative_error(torch.tensor([-math.inf]), torch.tensor([math.inf])) == math.inf
    assert selftest.relative_error(torch.tensor([1.0]), torch.tensor([math.nan])) == math.inf
    assert selftest.relative_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0])) == math.inf
    # Near-zero results of cancelling inputs are measured against the inputs' scale.
    assert selftest.relative_error(1e-6, 0.0, floor=100.0) == pytest.approx(1e-8)


@needs_extension
def test_every_kernel_matches_the_reference_on_the_cpu():
    checks = selftest.check_device("cpu")
    assert {c.op for c in checks} == set(selftest.CHECKS) == set(selftest.KERNELS)
    assert {c.dtype for c in checks if c.op == "d_loss"} == {"float16", "bfloat16", "float32", "float64"}
    failed = [c for c in checks if not c.passed]
    assert not failed, failed
    assert all(0 <= c.max_error <= c.tolerance for c in checks)


@needs_extension
@pytest.mark.parametrize("broken", [_wrong_loss, _wrong_gradient])
def test_a_broken_kernel_fails_its_check_and_only_its_check(broken, monkeypatch):
    monkeypatch.setitem(selftest.KERNELS, "d_loss", broken)
    checks = selftest.check_device("cpu", ("d_loss", "g_loss"))
    failed = {(c.op, c.dtype) for c in checks if not c.passed}
    assert {op for op, _ in failed} == {"d_loss"}
    if broken is _wrong_loss:  # float16 / bfloat16 gradients are too coarse to see a 1e-3 error in the loss
        assert {"float32", "float64"} <= {dtype for _, dtype in failed}
    assert all(c.max_error > c.tolerance and c.detail for c in checks if not c.passed)


@needs_extension
def test_a_kernel_that_raises_fails_its_check(monkeypatch):
    def raises(*args):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setitem(selftest.KERNELS, "trace_sqrt_product", raises)
    (check,) = selftest.check_device("cpu", ("trace_sqrt_product",))
    assert not check.passed and check.max_error == math.inf and "no kernel image" in check.detail


@needs_extension
def test_first_use_with_a_broken_kernel_falls_back_to_the_reference(fresh_selftest):
    fresh_selftest.setenv("GANSVC_SELFTEST", "all")  # the CPU gets the first-use self-test a GPU gets
    selftest.configure()
    fresh_selftest.setitem(selftest.KERNELS, "d_loss", _wrong_loss)
    assert selftest.status()["selftest"] == "not run" and selftest.failure_message() is None
    real = torch.linspace(-3, 3, 101, dtype=torch.float64)
    fake = torch.linspace(-2, 4, 37, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="failed their self-test on cpu: d_loss"):
        loss, stats = ops.d_loss(real, fake, "bce")
    expected_loss, expected_stats = ops.reference.d_loss(real, fake, "bce")
    assert float(loss) == float(expected_loss) and torch.equal(stats, expected_stats)
    # The whole process (and what it starts) now uses the reference: losses and FID ops alike.
    assert os.environ["GANSVC_KERNELS"] == "ref" and not ops.use_extension()
    sigma = torch.eye(5, dtype=torch.float64)
    assert fid_ops.trace_sqrt_product_details(sigma, sigma).value == pytest.approx(5.0)
    status = selftest.status()
    assert status["selftest"] == "failed" and status["kernels"] == "ref"
    failures = status["devices"]["cpu"]["failures"]
    assert failures and {f["op"] for f in failures} == {"d_loss"}
    assert "d_loss" in status["message"] == selftest.failure_message()


@needs_extension
def test_first_use_with_good_kernels_keeps_the_extension(fresh_selftest):
    fresh_selftest.setenv("GANSVC_SELFTEST", "all")
    selftest.configure()
    real = torch.randn(33, dtype=torch.float32)
    loss, _ = ops.d_loss(real, -real, "hinge")
    assert ops.use_extension() and selftest.status()["selftest"] == "passed"
    assert selftest.status()["devices"]["cpu"]["checks"] == len(selftest.check_device("cpu"))
    loss2, _ = torch.ops.gansvc.d_loss(real, -real, "hinge")
    assert float(loss) == float(loss2)


@needs_extension
@pytest.mark.parametrize("mode", ["auto", "off"])
def test_no_self_test_on_the_cpu_by_default_or_when_off(mode, fresh_selftest):
    fresh_selftest.setenv("GANSVC_SELFTEST", mode)
    fresh_selftest.setitem(selftest.KERNELS, "d_loss", _wrong_loss)
    selftest.configure()
    ops.d_loss(torch.randn(9), torch.randn(9), "bce")
    assert selftest.status()["selftest"] == "not run" and ops.use_extension()


def test_bad_mode_is_refused(fresh_selftest):
    fresh_selftest.setenv("GANSVC_SELFTEST", "sometimes")
    with pytest.raises(ValueError, match="GANSVC_SELFTEST must be one of auto, all, off"):
        selftest.configure()


@needs_extension
def test_doctor_prints_a_table_and_exits_0(capsys):
    assert cli.main(["doctor", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["device", "op", "dtype", "status", "max", "error"]
    rows = [line.split() for line in out.splitlines()[1:] if line.startswith("cpu ")]
    assert {(r[1], r[2]) for r in rows} == {(c.op, c.dtype) for c in selftest.check_device("cpu")}
    assert all(r[3] == "ok" for r in rows)


@needs_extension
def test_doctor_reports_a_mismatch_and_exits_1(capsys, monkeypatch):
    monkeypatch.setitem(selftest.KERNELS, "g_loss_step", lambda logits, kind: torch.zeros(2))
    assert cli.main(["doctor", "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    mismatched = [line.split()[1] for line in captured.out.splitlines() if "MISMATCH" in line]
    assert set(mismatched) == {"g_loss_step"} and "MISMATCH on cpu" in captured.err


def test_doctor_refuses_a_device_it_cannot_test(capsys):
    assert cli.main(["doctor", "--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and ops.cuda_compiled()), reason="needs a CUDA device and kernels")
def test_every_kernel_matches_the_reference_on_each_gpu():
    for index in range(torch.cuda.device_count()):
        failed = [c for c in selftest.check_device(f"cuda:{index}") if not c.passed]
        assert not failed, failed


@needs_extension
def test_a_training_job_reports_the_fallback_in_its_events(fresh_selftest, tmp_path):
    from gansvc.runtime import events as ev
    from gansvc.train import Trainer, TrainSpec

    fresh_selftest.setenv("GANSVC_SELFTEST", "all")
    selftest.configure()
    fresh_selftest.setitem(selftest.KERNELS, "d_loss_step", lambda *args: torch.zeros(4))
    spec = TrainSpec.from_dict({"dataset": "gaussian-mixture", "model": "mlp", "width": 8, "batch_size": 16,
                                "steps": 3, "log_every": 1, "sample_every": 0, "checkpoint_every": 0,
                                "eval_samples": 0, "tensorboard": False, "threads": 1})
    events = []
    with pytest.warns(RuntimeWarning, match="d_loss_step"):
        Trainer(spec, tmp_path, on_event=events.append).run()
    warnings = [e for e in events if isinstance(e, ev.Warning) and e.code == "kernel_selftest_failed"]
    assert len(warnings) == 1 and "d_loss_step" in warnings[0].message and "reference" in warnings[0].message
