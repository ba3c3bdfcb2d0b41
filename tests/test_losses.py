"""The fused loss ops against independent PyTorch formulations: values, gradients, statistics.

The oracle is written here from torch.nn.functional (binary_cross_entropy_with_logits, relu) in
float64, not taken from gansvc; gansvc.ops.reference is compared too, since users can switch to it.
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gansvc.losses
from gansvc import ops
from gansvc.ops import reference
from tests.conftest import devices

ext = ops.load_extension()
pytestmark = pytest.mark.skipif(ext is None, reason="gansvc._C is not built (run scripts/setup.sh)")

D_KINDS = ["bce", "hinge", "wasserstein"]
G_KINDS = ["ns", "minimax", "hinge", "wasserstein"]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# Tolerances for values and gradients, by input dtype: float32 accumulation of float32 math; the
# gradients of half types are rounded to half.
TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-15),
    torch.float32: dict(rtol=2e-6, atol=1e-7),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-5),
    torch.float16: dict(rtol=1e-3, atol=1e-7),
}
STAT_TOL = {torch.float64: dict(rtol=1e-12, atol=1e-14)}


def _simd_builds():
    """The SIMD kernel builds this CPU runs ('avx2', 'avx512'): each one that _set_cpu_capability accepts."""
    if ext is None:
        return []
    supported = []
    previous = ext._set_cpu_capability("default")
    try:
        for name in ("avx2", "avx512"):
            try:
                ext._set_cpu_capability(name)
            except ValueError:
                continue
            supported.append(name)
    finally:
        ext._set_cpu_capability(previous)
    return supported


SIMD_BUILDS = _simd_builds()


@pytest.fixture(params=["default", *SIMD_BUILDS])
def cpu_build(request):
    """Each CPU kernel build this CPU runs, in turn (the CUDA kernels ignore it)."""
    previous = ext._set_cpu_capability(request.param)
    yield request.param
    ext._set_cpu_capability(previous)


def oracle_d(real: torch.Tensor, fake: torch.Tensor, kind: str, real_label: float = 1.0):
    """(loss, grad_real, grad_fake, [mean_real, mean_fake, accuracy]) in float64 from torch.nn.functional."""
    r = real.detach().double().reshape(-1).requires_grad_()
    f = fake.detach().double().reshape(-1).requires_grad_()
    if kind == "bce":
        loss = F.binary_cross_entropy_with_logits(r, torch.full_like(r, real_label)) + \
            F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))
        mean_real, mean_fake = torch.sigmoid(r).mean(), torch.sigmoid(f).mean()
    elif kind == "hinge":
        loss = F.relu(1 - r).mean() + F.relu(1 + f).mean()
        mean_real, mean_fake = r.mean(), f.mean()
    else:
        loss = f.mean() - r.mean()
        mean_real, mean_fake = r.mean(), f.mean()
    grad_r, grad_f = torch.autograd.grad(loss, (r, f))
    accuracy = ((r > 0).sum() + (f < 0).sum()).double() / (r.numel() + f.numel())
    stats = torch.stack([mean_real.detach(), mean_fake.detach(), accuracy])
    return loss.detach(), grad_r.view_as(real), grad_f.view_as(fake), stats


def oracle_g(fake: torch.Tensor, kind: str):
    """(loss, grad, [mean_fake]) in float64 from torch.nn.functional."""
    f = fake.detach().double().reshape(-1).requires_grad_()
    if kind == "ns":
        loss, mean_fake = F.binary_cross_entropy_with_logits(f, torch.ones_like(f)), torch.sigmoid(f).mean()
    elif kind == "minimax":
        loss, mean_fake = -F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)), torch.sigmoid(f).mean()
    else:
        loss, mean_fake = -f.mean(), f.mean()
    (grad,) = torch.autograd.grad(loss, f)
    return loss.detach(), grad.view_as(fake), mean_fake.detach().reshape(1)


def run_d(real, fake, kind, real_label=1.0, fn=gansvc.ops.d_loss):
    real = real.detach().requires_grad_()
    fake = fake.detach().requires_grad_()
    loss, stats = fn(real, fake, kind, real_label)
    loss.backward()
    return loss.detach(), real.grad, fake.grad, stats


def run_g(fake, kind, fn=gansvc.ops.g_loss):
    fake = fake.detach().requires_grad_()
    loss, stats = fn(fake, kind)
    loss.backward()
    return loss.detach(), fake.grad, stats


def assert_matches(got, want, dtype):
    tol = TOL[dtype]
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double().cpu(), w.double().cpu(), **tol)


def logits(n, dtype, device, scale=4.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)


def rounded_oracle_grads(want, dtype):
    """The float64 oracle's gradients rounded to the input dtype (what any implementation returns)."""
    loss, *grads, stats = want
    return (loss, *[g.to(dtype) for g in grads], stats)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", D_KINDS)
@pytest.mark.parametrize("sizes", [(1, 1), (7, 5), (1023, 64), ((1 << 20) + 3, 1 << 20)])
def test_d_loss_matches_functional(device, dtype, kind, sizes):
    real, fake = logits(sizes[0], dtype, device, seed=1), logits(sizes[1], dtype, device, seed=2)
    got = run_d(real, fake, kind)
    want = rounded_oracle_grads(oracle_d(real, fake, kind), dtype)
    assert got[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert got[1].dtype == dtype and got[1].shape == real.shape
    assert_matches(got, want, dtype)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", G_KINDS)
@pytest.mark.parametrize("n", [1, 7, 1023, (1 << 20) + 3])
def test_g_loss_matches_functional(device, dtype, kind, n):
    fake = logits(n, dtype, device, seed=3)
    got = run_g(fake, kind)
    loss, grad, stats = oracle_g(fake, kind)
    assert_matches(got, (loss, grad.to(dtype), stats), dtype)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("kind", D_KINDS)
def test_d_loss_matches_gansvc_reference(device, kind):
    real, fake = logits(999, torch.float64, device), logits(333, torch.float64, device, seed=5)
    assert_matches(run_d(real, fake, kind), run_d(real, fake, kind, fn=reference.d_loss), torch.float64)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("label", [0.9, 0.75])
def test_one_sided_label_smoothing(device, label):
    real, fake = logits(4099, torch.float64, device), logits(77, torch.float64, device, seed=9)
    assert_matches(run_d(real, fake, "bce", label), oracle_d(real, fake, "bce", label), torch.float64)
    assert_matches(run_d(real, fake, "bce", label, fn=reference.d_loss), oracle_d(real, fake, "bce", label),
                   torch.float64)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_contiguous_and_shaped_inputs(device, dtype):
    base = logits(64 * 6, dtype, device).view(64, 6)
    real = base[:, ::2]  # non-contiguous view, 2-D
    fake = logits(5 * 3 * 2, dtype, device, seed=4).view(5, 3, 2).transpose(0, 2)
    assert not real.is_contiguous() and not fake.is_contiguous()
    for kind in D_KINDS:
        got = run_d(real, fake, kind)
        assert got[1].shape == real.shape and got[2].shape == fake.shape
        assert_matches(got, rounded_oracle_grads(oracle_d(real, fake, kind), dtype), dtype)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_finite_logits_match_functional(device, dtype, cpu_build):
    values = torch.tensor([1e4, -1e4, 88.0, -88.0, 30.0, -30.0, 1e-30, -1e-30, 0.0], dtype=dtype, device=device)
    for kind in D_KINDS:
        got = run_d(values, values.flip(0), kind)
        assert_matches(got, rounded_oracle_grads(oracle_d(values, values.flip(0), kind), dtype), dtype)
    for kind in G_KINDS:
        loss, grad, stats = oracle_g(values, kind)
        assert_matches(run_g(values, kind), (loss, grad.to(dtype), stats), dtype)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_logits_up_to_the_dtype_maximum_match_functional(device, dtype, cpu_build):
    """Every magnitude up to the dtype's largest finite value, in SIMD-width runs and a scalar tail.

    Covers the kernels' exp near its underflow (e^-|s| below FLT_MIN from |s| = 87.3, flushed to 0) and
    the softplus / sigmoid branches on both signs; values, gradients and statistics against float64.
    The softplus family only: hinge and Wasserstein sum the logits themselves in float32, whose rounding
    at |s| ~ 1e38 is beyond any tolerance of a float32 statistic.
    """
    big = torch.finfo(dtype).max
    magnitudes = [0.0, 1e-30, 1e-3, 0.5, 1.0, 3.0, 15.0, 17.0, 30.0, 80.0, 87.0, 87.5, 88.5, 100.0, 104.0, 110.0,
                  1e4, 1e30, big]
    values = torch.tensor(magnitudes + [-m for m in magnitudes], dtype=torch.float64).clamp(-big, big).to(dtype)
    values = values.repeat(3).to(device)  # 114 logits: vector loops and a tail in every build
    for label in (1.0, 0.9):
        want = rounded_oracle_grads(oracle_d(values, values.flip(0), "bce", label), dtype)
        assert_matches(run_d(values, values.flip(0), "bce", label), want, dtype)
    for kind in ("ns", "minimax"):
        loss, grad, stats = oracle_g(values, kind)
        assert_matches(run_g(values, kind), (loss, grad.to(dtype), stats), dtype)


def test_nan_logits_give_nan_loss_and_gradient(cpu_build):
    values = torch.tensor([0.5, math.nan, -2.0] * 11)
    loss, grad_r, grad_f, _ = run_d(values, values, "bce")
    assert math.isnan(loss.item())
    assert torch.isnan(grad_r[1::3]).all() and torch.isnan(grad_f[1::3]).all()
    assert torch.isfinite(grad_r[0::3]).all() and torch.isfinite(grad_f[2::3]).all()


def exact_softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) in float64, right at +-inf too (F.binary_cross_entropy_with_logits gives NaN there)."""
    x = x.double()
    return torch.where(x > 0, x + torch.log1p(torch.exp(-x.abs())), torch.log1p(torch.exp(-x.abs())))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_infinite_logits_give_the_limits_not_nan(device, dtype, cpu_build):
    inf = math.inf
    # 33 and 34 logits: the vector loops of every build and a scalar tail
    real = torch.tensor([inf, 2.0, -3.0] * 11, dtype=dtype, device=device)
    fake = torch.tensor([-inf, 0.5] * 17, dtype=dtype, device=device)
    loss, grad_r, grad_f, stats = run_d(real, fake, "bce")
    want = exact_softplus(-real.cpu()).mean() + exact_softplus(fake.cpu()).mean()
    torch.testing.assert_close(loss.double().cpu(), want, **TOL[dtype])
    assert torch.isfinite(grad_r).all() and torch.isfinite(grad_f).all()
    # saturated and correct: no gradient
    assert (grad_r[0::3] == 0).all() and (grad_f[0::2] == 0).all()
    # A confidently wrong D: the loss is +inf, the gradient still finite.
    loss, grad_r, grad_f, _ = run_d(-real, -fake, "bce")
    assert loss.item() == inf and torch.isfinite(grad_r).all() and torch.isfinite(grad_f).all()
    loss, grad, _ = run_g(torch.tensor([inf, -1.0], dtype=dtype, device=device), "ns")
    torch.testing.assert_close(loss.double().cpu(), exact_softplus(torch.tensor([-inf, 1.0])).mean(), **TOL[dtype])
    loss = run_d(real, fake, "hinge")[0]
    want = F.relu(1 - real.double().cpu()).mean() + F.relu(1 + fake.double().cpu()).mean()
    torch.testing.assert_close(loss.double().cpu(), want, **TOL[dtype])
    # Wasserstein with an infinite critic value is infinite, as the mean is.
    assert math.isinf(run_d(real, fake, "wasserstein")[0].item())


def test_hinge_with_infinities_matches_relu():
    inf = math.inf
    real = torch.tensor([inf, -inf, 0.5], dtype=torch.float64)
    fake = torch.tensor([inf, -inf, 0.5], dtype=torch.float64)
    loss, grad_r, grad_f, _ = run_d(real, fake, "hinge")
    want = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    assert loss.item() == want.item() == inf
    torch.testing.assert_close(grad_r, torch.tensor([0.0, -1 / 3, -1 / 3], dtype=torch.float64))
    torch.testing.assert_close(grad_f, torch.tensor([1 / 3, 0.0, 1 / 3], dtype=torch.float64))


@pytest.mark.parametrize("device", devices())
def test_equilibrium_values_of_the_source_documents(device):
    # D(x) = 1/2 everywhere (logit 0): D loss 2 ln 2, non-saturating G loss ln 2, minimax -ln 2.
    zeros = torch.zeros(128, device=device, dtype=torch.float64)
    d = gansvc.losses.discriminator_loss(zeros, zeros, "bce")
    assert d.loss.item() == pytest.approx(2 * math.log(2), rel=1e-15)
    assert d.mean_real.item() == d.mean_fake.item() == 0.5
    assert gansvc.losses.generator_loss(zeros, "bce").loss.item() == pytest.approx(math.log(2), rel=1e-15)
    minimax = gansvc.losses.generator_loss(zeros, "bce", saturating=True).loss.item()
    assert minimax == pytest.approx(-math.log(2), rel=1e-15)


@pytest.mark.parametrize("device", devices())
def test_statistics(device):
    real = torch.tensor([2.0, -1.0, 3.0, 0.5], device=device)
    fake = torch.tensor([-2.0, 1.0], device=device)
    d = gansvc.losses.discriminator_loss(real, fake, "hinge")
    assert d.accuracy.item() == pytest.approx(4 / 6)
    assert d.mean_real.item() == pytest.approx(real.mean().item())
    d = gansvc.losses.discriminator_loss(real, fake, "bce")
    assert d.mean_fake.item() == pytest.approx(torch.sigmoid(fake).mean().item())


@pytest.mark.parametrize("kind", D_KINDS)
def test_gradcheck_and_gradgradcheck(kind):
    # Hinge kinks at |s| = 1 make numerical derivatives wrong there; keep the points away from them.
    gen = torch.Generator().manual_seed(0)
    real = (torch.rand(6, generator=gen, dtype=torch.float64) * 0.8 + 0.05).requires_grad_()
    fake = (-torch.rand(5, generator=gen, dtype=torch.float64) * 0.8 - 1.5).requires_grad_()
    fn = lambda r, f: torch.ops.gansvc.d_loss(r, f, kind, 1.0)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (real, fake))
    assert torch.autograd.gradgradcheck(fn, (real, fake))


@pytest.mark.parametrize("kind", G_KINDS)
def test_g_gradcheck_and_gradgradcheck(kind):
    fake = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    fn = lambda f: torch.ops.gansvc.g_loss(f, kind)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (fake,))
    assert torch.autograd.gradgradcheck(fn, (fake,))


def test_double_backward_inside_a_gradient_penalty():
    # d/dtheta || d loss / d x ||^2 through the op equals the same with the functional oracle.
    torch.manual_seed(0)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(16, 3, dtype=torch.float64, requires_grad=True)
    fake = torch.randn(16, dtype=torch.float64)

    def penalty(loss_fn):
        real_logits = (x * w).sum(1).tanh() * 3
        loss = loss_fn(real_logits)
        (grad_x,) = torch.autograd.grad(loss, x, create_graph=True)
        return torch.autograd.grad(grad_x.pow(2).sum(), w)[0]

    ours = penalty(lambda r: torch.ops.gansvc.d_loss(r, fake, "bce", 1.0)[0])
    oracle = penalty(lambda r: F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                     + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    torch.testing.assert_close(ours, oracle, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_saved_gradient_is_handed_over_once_and_recomputed_after(device, dtype):
    """The first backward hands over the kernel's saved gradient (scaled in place by grad_loss); a retained
    graph's later backward recomputes it, so what the first receiver did to its gradient cannot leak into it."""
    real, fake = logits(2_000, dtype, device, seed=3), logits(1_500, dtype, device, seed=4)
    want_d = oracle_d(real, fake, "bce")
    want_g = oracle_g(fake, "ns")
    r, f = real.clone().requires_grad_(), fake.clone().requires_grad_()
    loss, _ = gansvc.ops.d_loss(r, f, "bce")
    g_loss, _ = gansvc.ops.g_loss(f, "ns")
    scale = torch.tensor(2.5, dtype=loss.dtype, device=device)
    for turn in range(3):
        grads = torch.autograd.grad(loss, (r, f), grad_outputs=scale if turn == 1 else None, retain_graph=True)
        factor = 2.5 if turn == 1 else 1.0
        assert_matches([grads[0] / factor, grads[1] / factor], want_d[1:3], dtype)
        for grad in grads:
            grad.mul_(-7.0)  # a receiver free to change what it got
        (g_grad,) = torch.autograd.grad(g_loss, f, retain_graph=True)
        assert_matches([g_grad], want_g[1:2], dtype)
        g_grad.zero_()
    # loss.backward() into leaves, twice: the second adds the recomputed gradient to the first
    loss.backward(retain_graph=True)
    loss.backward()
    assert_matches([r.grad / 2, f.grad / 2], want_d[1:3], dtype)


@pytest.mark.parametrize("device", devices())
def test_opcheck(device):
    real = torch.randn(33, device=device, requires_grad=True)
    fake = torch.randn(17, device=device, requires_grad=True)
    for kind in D_KINDS:
        torch.library.opcheck(torch.ops.gansvc.d_loss.default, (real, fake, kind, 0.9 if kind == "bce" else 1.0))
        torch.library.opcheck(torch.ops.gansvc.d_loss_fused.default, (real.detach(), fake.detach(), kind, 1.0))
    for kind in G_KINDS:
        torch.library.opcheck(torch.ops.gansvc.g_loss.default, (fake, kind))
        torch.library.opcheck(torch.ops.gansvc.g_loss_fused.default, (fake.detach(), kind))


def test_torch_compile_traces_through_the_ops():
    torch._dynamo.reset()

    def step(real, fake):
        d = gansvc.losses.discriminator_loss(real * 2, fake * 2, "bce")
        g = gansvc.losses.generator_loss(fake * 2, "bce")
        return d.loss + g.loss

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    real, fake = torch.randn(50, requires_grad=True), torch.randn(40, requires_grad=True)
    out = compiled(real, fake)
    out.backward()
    got = (out.detach(), real.grad.clone(), fake.grad.clone())
    real.grad = fake.grad = None
    want = step(real, fake)
    want.backward()
    torch.testing.assert_close(got, (want.detach(), real.grad, fake.grad))


def test_inference_mode_gives_the_same_loss():
    real, fake = torch.randn(100), torch.randn(80)
    with torch.inference_mode():
        loss, stats = torch.ops.gansvc.d_loss(real, fake, "hinge", 1.0)
    want, _, _, want_stats = oracle_d(real, fake, "hinge")
    torch.testing.assert_close(loss.double(), want, **TOL[torch.float32])
    torch.testing.assert_close(stats.double(), want_stats, **TOL[torch.float32])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    real=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=40),
    fake=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=40),
    kind=st.sampled_from(D_KINDS),
    label=st.sampled_from([1.0, 0.9]),
)
def test_property_d_loss_equals_functional(real, fake, kind, label):
    real_t, fake_t = torch.tensor(real, dtype=torch.float64), torch.tensor(fake, dtype=torch.float64)
    label = label if kind == "bce" else 1.0
    got = run_d(real_t, fake_t, kind, label)
    want = oracle_d(real_t, fake_t, kind, label)
    # Hinge: at exactly |s| = 1 both sides define the derivative as 0, so the comparison holds.
    assert_matches(got, want, torch.float64)


@settings(max_examples=60, deadline=None)
@given(fake=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=40), kind=st.sampled_from(G_KINDS))
def test_property_g_loss_equals_functional(fake, kind):
    fake_t = torch.tensor(fake, dtype=torch.float64)
    assert_matches(run_g(fake_t, kind), oracle_g(fake_t, kind), torch.float64)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=300))
def test_property_float32_accumulation_is_accurate(values):
    fake = torch.tensor(values, dtype=torch.float32)
    loss, _, _ = run_g(fake, "ns")
    want = exact_softplus(-fake.double()).mean()
    assert abs(loss.item() - want.item()) <= 4e-7 * max(1.0, abs(want.item()))


@pytest.mark.parametrize("fn", [gansvc.ops.d_loss, reference.d_loss], ids=["ext", "ref"])
def test_bad_inputs_raise_naming_the_argument(fn):
    good = torch.randn(4)
    cases = [
        ((torch.empty(0), good, "bce"), "real_logits is empty"),
        ((good, torch.empty(0), "bce"), "fake_logits is empty"),
        ((torch.ones(4, dtype=torch.int64), good, "bce"), "real_logits must be a floating-point"),
        ((good, torch.ones(4, dtype=torch.int32), "bce"), "fake_logits must be a floating-point"),
        ((good, good, "softmax"), "kind must be one of"),
        ((good, good.double(), "bce"), "same dtype"),
        ((good, torch.randn(4, device="meta"), "bce"), "same device"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            fn(*args)
    with pytest.raises(ValueError, match="real_label must be in"):
        fn(good, good, "bce", 1.5)


@pytest.mark.parametrize("fn", [gansvc.ops.g_loss, reference.g_loss], ids=["ext", "ref"])
def test_bad_g_inputs_raise(fn):
    with pytest.raises(ValueError, match="kind must be one of"):
        fn(torch.randn(3), "bce")
    with pytest.raises(ValueError, match="fake_logits is empty"):
        fn(torch.empty(0), "ns")


def test_family_names_of_gansvc_losses():
    with pytest.raises(ValueError, match="saturating=True applies to the bce family only"):
        gansvc.losses.generator_loss(torch.randn(3), "hinge", saturating=True)


def test_kernel_switch_selects_the_reference(monkeypatch):
    real, fake = torch.randn(10), torch.randn(10)
    monkeypatch.setenv("GANSVC_KERNELS", "ref")
    assert not ops.use_extension()
    monkeypatch.setenv("GANSVC_KERNELS", "ext")
    assert ops.use_extension()
    torch.testing.assert_close(ops.d_loss(real, fake, "bce")[0], reference.d_loss(real, fake, "bce")[0])
    monkeypatch.setenv("GANSVC_KERNELS", "fast")
    with pytest.raises(ValueError, match="GANSVC_KERNELS"):
        ops.use_extension()


def test_cuda_kernels_were_built_where_they_can_be():
    """nvcc present and a CUDA build of torch: the extension must carry its CUDA kernels."""
    nvcc = os.path.exists("/usr/local/cuda/bin/nvcc") or shutil.which("nvcc")
    expected = bool(nvcc) and torch.version.cuda is not None and os.environ.get("GANSVC_NO_CUDA") != "1"
    assert ops.cuda_compiled() == expected, (
        f"CUDA kernels compiled: {ops.cuda_compiled()}, expected {expected} (nvcc={nvcc}, torch CUDA {torch.version.cuda})"
    )
    if expected:
        assert torch._C._dispatch_has_kernel_for_dispatch_key("gansvc::d_loss_fused", "CUDA")
        assert torch._C._dispatch_has_kernel_for_dispatch_key("gansvc::g_loss_fused", "CUDA")


# ---- the step API (no autograd node) and the CPU kernel builds --------------------------------


def _autograd_step(real, fake, kind, label=1.0):
    """What d_loss_step stands for: the differentiable op and loss.backward()."""
    loss, stats = reference.d_loss(real, fake, kind, label)
    loss.backward()
    return torch.cat([loss.detach().reshape(1), stats])


@pytest.mark.parametrize("kind", reference.D_KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 7, 64, 16385, 70001])
def test_d_loss_step_matches_loss_backward(kind, dtype, n):
    gen = torch.Generator().manual_seed(n)
    base_r, base_f = torch.randn(n, generator=gen) * 4, torch.randn(n, generator=gen) * 4
    r1, f1 = base_r.to(dtype).requires_grad_(), base_f.to(dtype).requires_grad_()
    r2, f2 = base_r.to(dtype).requires_grad_(), base_f.to(dtype).requires_grad_()
    got = ops.d_loss_step(r1, f1, kind, 0.9 if kind == "bce" else 1.0)
    want = _autograd_step(r2, f2, kind, 0.9 if kind == "bce" else 1.0)
    tol = TOL[dtype]
    torch.testing.assert_close(got, want.to(got.dtype), **tol)
    torch.testing.assert_close(r1.grad, r2.grad, **tol)
    torch.testing.assert_close(f1.grad, f2.grad, **tol)
    assert r1.grad.dtype == dtype and r1.grad.shape == r1.shape


def test_d_loss_step_accumulates_and_reaches_non_leaves_and_hooks():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(50, generator=gen, dtype=torch.float64).requires_grad_()
    x = torch.randn(50, generator=gen, dtype=torch.float64)
    real_leaf = torch.randn(50, generator=gen, dtype=torch.float64).requires_grad_()
    real_leaf.grad = torch.ones_like(real_leaf)  # accumulated into, as backward() does
    seen = []
    real_leaf.register_hook(lambda g: seen.append(g.clone()))
    fake = w * x  # non-leaf: the gradient must reach w through the engine
    ops.d_loss_step(real_leaf, fake, "bce")
    w2, r2 = w.detach().clone().requires_grad_(), real_leaf.detach().clone().requires_grad_()
    loss, _ = reference.d_loss(r2, w2 * x, "bce")
    loss.backward()
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(real_leaf.grad, 1 + r2.grad, rtol=1e-12, atol=1e-15)
    assert len(seen) == 1  # the hook ran (the leaf went through the engine)
    torch.testing.assert_close(seen[0], r2.grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", reference.G_KINDS)
def test_g_loss_step_matches_loss_backward(kind):
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(333, generator=gen, dtype=torch.float64) * 3
    f1, f2 = base.clone().requires_grad_(), base.clone().requires_grad_()
    got = ops.g_loss_step(f1, kind)
    loss, stats = reference.g_loss(f2, kind)
    loss.backward()
    torch.testing.assert_close(got, torch.cat([loss.detach().reshape(1), stats]), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(f1.grad, f2.grad, rtol=1e-12, atol=1e-15)


def test_d_loss_step_is_deterministic_whatever_the_thread_count():
    gen = torch.Generator().manual_seed(9)
    real, fake = torch.randn(300_001, generator=gen) * 3, torch.randn(300_001, generator=gen) * 3
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(ops.d_loss_step(real, fake, "bce"))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert torch.equal(results[0], other)


def test_the_kernels_parallel_for_forks_into_the_threads_it_is_given():
    """at::parallel_for is inline ATen code: built without OpenMP it runs every task on the calling thread
    (which is what the kernels did before setup.py passed -fopenmp), and the thread-count tests above would
    pass without a second thread ever running."""
    ext = ops.load_extension()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert ext._parallel_threads(64) == 1
        torch.set_num_threads(2)
        assert ext._parallel_threads(64) == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("sizes", [(300_001, 300_001), (16_384, 16_385), (40_000, 7)])
def test_autograd_ops_are_deterministic_whatever_the_thread_count(sizes):
    """ops.d_loss / g_loss + backward split the batch over threads in fixed blocks above a grain size:
    the same bits (loss, statistics, gradients) with 1, 2 and 3 threads."""
    gen = torch.Generator().manual_seed(12)
    real, fake = torch.randn(sizes[0], generator=gen) * 3, torch.randn(sizes[1], generator=gen) * 3
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            loss, grad_r, grad_f, stats = run_d(real, fake, "bce")
            g_loss, g_grad, g_stats = run_g(fake, "ns")
            results.append((loss, grad_r, grad_f, stats, g_loss, g_grad, g_stats))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
    # and the values are the oracle's
    assert_matches(results[0][:4], oracle_d(real, fake, "bce"), torch.float32)



def test_float32_elements_within_a_few_ulp_of_float64_on_a_dense_grid(cpu_build):
    """Each float32 element of the softplus family against float64, over a dense grid of logits.

    Gradients: one call on every 499th float in [-87, 87] (about 4.5 million logits), each element within 4.5 ulp
    of sigmoid(s) / n in float64 wherever that is a normal float (the exp's ulp, one division, the scaling and a
    few more roundings: every build, libm's exp included, reaches 3.9-4.3 ulp at a few hundred logits, 3 ulp
    at the 99.99th percentile). Losses: the kernels return means, so one call per logit on 32 copies (the
    vector loop; the mean of equal terms is the term), for 2 000 logits, within 4.5 ulp too (3.3-3.8 seen). Catches an exp or log1p polynomial a little off
    where the oracle tests' few points miss it.
    """
    import numpy as np

    top = np.float32(87).view(np.int32)
    magnitudes = np.arange(0, top, 499, dtype=np.int32).view(np.float32)
    s = torch.from_numpy(np.concatenate([-magnitudes, magnitudes]))
    logit = s.clone().requires_grad_()
    ops.g_loss_step(logit, "minimax")  # d/ds of -mean softplus(s): -sigmoid(s) / n
    got = -logit.grad.double()
    want = torch.sigmoid(s.double()) * torch.tensor(1 / s.numel(), dtype=torch.float32).item()
    normal = want >= torch.finfo(torch.float32).tiny
    assert normal.float().mean() > 0.9
    ulp = 2.0 ** (torch.floor(torch.log2(want[normal])) - 23)  # the float32 ulp at each value
    assert ((got[normal] - want[normal]).abs() / ulp).max().item() <= 4.5

    gen = torch.Generator().manual_seed(5)
    points = torch.cat([torch.randn(1000, generator=gen) * 6, torch.rand(1000, generator=gen) * 174 - 87])
    for kind, oracle in (("ns", lambda x: F.softplus(-x)), ("minimax", lambda x: -F.softplus(x))):
        got = torch.tensor([ops.g_loss_step(torch.full((32,), float(x)), kind)[0].item() for x in points],
                           dtype=torch.float64)
        want = oracle(points.double())
        ulp = 2.0 ** (torch.floor(torch.log2(want.abs())) - 23)
        assert ((got - want).abs() / ulp).max().item() <= 4.5, kind


@pytest.mark.skipif(not SIMD_BUILDS, reason="this CPU has neither AVX2 + FMA nor AVX-512")
@pytest.mark.parametrize("kind", reference.D_KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_baseline_and_simd_cpu_kernels_agree(kind, dtype):
    """Every kernel build, forced in turn (as GANSVC_CPU_CAPABILITY does), agrees with the others and the oracle.

    Not bit for bit: the SIMD builds' exp is gansvc's own (float) or Sleef's (double), the baseline's libm's
    (each within 1 ulp), and the builds sum their lanes in different groupings.
    """
    gen = torch.Generator().manual_seed(11)
    real = (torch.randn(40_003, generator=gen) * 5).to(dtype)
    fake = (torch.randn(40_003, generator=gen) * 5).to(dtype)
    results = {}
    previous = ext._set_cpu_capability("default")
    try:
        for capability in ["default", *SIMD_BUILDS]:
            ext._set_cpu_capability(capability)
            assert ops.cpu_capability() == capability
            _, grad_r, grad_f, _ = torch.ops.gansvc.d_loss_fused(real, fake, kind, 1.0)
            results[capability] = (ops.d_loss_step(real, fake, kind), grad_r, grad_f)
    finally:
        ext._set_cpu_capability(previous)
    eps = torch.finfo(dtype).eps
    # Gradients element by element: within 4 ulp. Sums: the builds add their lanes in different groupings (a
    # lane sums up to 16 vectors in the dtype before moving into double), so allow 32 roundings of the
    # mean magnitude (the mean of zero-centred logits is far smaller than its terms).
    sum_tol = dict(rtol=4 * eps, atol=32 * eps * (real.abs().mean() + fake.abs().mean()).item())
    grad_tol = dict(rtol=4 * eps, atol=4 * eps / real.numel())
    for capability in SIMD_BUILDS:
        step, grad_r, grad_f = results[capability]
        torch.testing.assert_close(step, results["default"][0], **sum_tol, msg=lambda m: f"{capability}: {m}")
        torch.testing.assert_close(grad_r, results["default"][1], **grad_tol, msg=lambda m: f"{capability}: {m}")
        torch.testing.assert_close(grad_f, results["default"][2], **grad_tol, msg=lambda m: f"{capability}: {m}")
    want = _autograd_step(real.double().requires_grad_(), fake.double().requires_grad_(), kind)
    for capability, result in results.items():
        torch.testing.assert_close(result[0].double(), want, **TOL[dtype], msg=lambda m: f"{capability}: {m}")


@pytest.mark.skipif(not SIMD_BUILDS, reason="this CPU has neither AVX2 + FMA nor AVX-512")
def test_the_widest_build_the_cpu_runs_is_chosen_by_default():
    import subprocess
    import sys

    code = "from gansvc import ops; ops.load_extension(); print(ops.cpu_capability())"
    env = {k: v for k, v in os.environ.items() if k != "GANSVC_CPU_CAPABILITY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == SIMD_BUILDS[-1]


def test_cpu_capability_env_var_is_honoured_and_checked():
    import subprocess
    import sys

    code = "from gansvc import ops; ops.load_extension(); print(ops.cpu_capability())"
    env = dict(os.environ, GANSVC_CPU_CAPABILITY="default")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "default"
    with pytest.raises(ValueError, match="GANSVC_CPU_CAPABILITY must be"):
        ext._set_cpu_capability("sse9")
