"""Fused GAN-loss op vs the eager PyTorch reference, as a trainer computes a D step.

Both sides do the same work: the D loss forward, its backward to the logits, and the D statistics
(mean D(x), mean D(G(z)), accuracy) as Python floats. Prints the median of each and their ratio.

    python bench/losses.py [--kinds bce,hinge] [--sizes 64,1024,65536,4194304] [--threads N]
                           [--builds default,avx2,avx512]   # the fused side on each CPU kernel build too
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gansvc import ops  # noqa: E402


def eager_d_step(real: torch.Tensor, fake: torch.Tensor, kind: str):
    """The usual eager formulation: loss with autograd, statistics in separate no-grad ops."""
    if kind == "bce":
        loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + \
            F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        with torch.no_grad():
            mean_real, mean_fake = torch.sigmoid(real).mean(), torch.sigmoid(fake).mean()
    elif kind == "hinge":
        loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        with torch.no_grad():
            mean_real, mean_fake = real.mean(), fake.mean()
    else:
        loss = fake.mean() - real.mean()
        with torch.no_grad():
            mean_real, mean_fake = real.mean(), fake.mean()
    with torch.no_grad():
        accuracy = ((real > 0).sum() + (fake < 0).sum()) / (real.numel() + fake.numel())
    loss.backward()
    return loss.item(), mean_real.item(), mean_fake.item(), accuracy.item()


def fused_d_step(real: torch.Tensor, fake: torch.Tensor, kind: str):
    """gansvc's fused step: one pass for loss, gradient and statistics, the gradient added to the logits'
    .grad without an autograd node, one output read with one host sync."""
    return tuple(ops.d_loss_step(real, fake, kind).tolist())


def fused_autograd_d_step(real: torch.Tensor, fake: torch.Tensor, kind: str):
    """gansvc's differentiable fused op through autograd: `loss.backward()` as with the eager loss."""
    loss, stats = ops.d_loss(real, fake, kind)
    loss.backward()
    return (loss.item(), *stats.tolist())


def median_seconds(step, real, fake, kind, budget_s: float, device) -> float:
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 2000):
        real.grad = fake.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(real, fake, kind)  # .item() synchronises
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def format_time(seconds: float) -> str:
    return f"{seconds * 1e6:9.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:9.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="bce,hinge,wasserstein")
    parser.add_argument("--sizes", default="64,1024,65536,4194304")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per measurement")
    parser.add_argument("--path", choices=("step", "autograd"), default="step",
                        help="fused side: ops.d_loss_step (default) or ops.d_loss + loss.backward()")
    parser.add_argument("--builds", default="",
                        help="CPU: also time the fused side with each of these kernel builds (comma-separated of "
                        "default, avx2, avx512), in the same run; one column each")
    args = parser.parse_args()
    if not ops.use_extension():
        print("gansvc._C is not built: run scripts/setup.sh", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fused_step = fused_d_step if args.path == "step" else fused_autograd_d_step
    ext = ops.load_extension()
    builds = [b.strip() for b in args.builds.split(",") if b.strip()] if device.type == "cpu" else []
    chosen = ops.cpu_capability()
    for build in builds:
        try:
            ext._set_cpu_capability(build)
        except ValueError as error:
            print(f"--builds: {error}", file=sys.stderr)
            return 2
    ext._set_cpu_capability(chosen)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU kernels "
          f"{ops.cpu_capability()}, fused path {args.path}; median of forward + backward + statistics per D step")
    extra = "".join(f"{build:>14}" for build in builds)
    print(f"{'kind':<12}{'N per side':>12}{'eager':>14}{'fused':>14}{'speed-up':>10}{extra}")
    for kind in args.kinds.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            gen = torch.Generator().manual_seed(n)
            real = (torch.randn(n, generator=gen) * 3).to(device).requires_grad_()
            fake = (torch.randn(n, generator=gen) * 3).to(device).requires_grad_()
            # Same answers first: a fast wrong kernel is not a result.
            want = eager_d_step(real, fake, kind)
            want_grads = real.grad.clone(), fake.grad.clone()
            real.grad = fake.grad = None
            got = fused_step(real, fake, kind)
            assert all(abs(a - b) <= 1e-4 * max(1.0, abs(a)) for a, b in zip(want, got)), (want, got)
            for w, g in zip(want_grads, (real.grad, fake.grad)):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-9)
            eager = median_seconds(eager_d_step, real, fake, kind, args.seconds, device)
            fused = median_seconds(fused_step, real, fake, kind, args.seconds, device)
            columns = ""
            for build in builds:  # the same op on another kernel build, in this process
                ext._set_cpu_capability(build)
                try:
                    columns += f"{format_time(median_seconds(fused_step, real, fake, kind, args.seconds, device)):>14}"
                finally:
                    ext._set_cpu_capability(chosen)
            print(f"{kind:<12}{n:>12,}{format_time(eager):>14}{format_time(fused):>14}{eager / fused:>9.1f}×{columns}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
