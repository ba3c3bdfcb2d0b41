"""Learning-rate schedules: the factor on both optimisers' learning rates at each generator step.

The factor is a pure function of the step (and the run's length), so a resumed run continues the
schedule exactly with nothing but the step count in its checkpoint. At step s (0-based) of T, with W
warm-up steps:

- warm-up, s < W: (s + 1) / W (the rate rises linearly; the first step already trains);
- then, with t = (s - W) / (T - W): constant 1; cosine (1 + cos(pi t)) / 2; linear-decay 1 - t.

These are torch.optim.lr_scheduler's LinearLR(1/W -> 1 over W - 1 steps) followed by CosineAnnealingLR
(T_max = T - W, eta_min = 0) or LinearLR(1 -> 0 over T - W steps) (tests/test_schedules.py compares the two).
The full rate each optimiser scales is its param group's "initial_lr" (torch's name for it): a rollback on
divergence scales that, and the optimiser's state_dict carries it into the checkpoint.
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine", "linear-decay")


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Return the factor on the full learning rate at 0-based generator step `step` of `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear-decay":
        return 1.0 - t
    raise ValueError(f"unknown learning-rate schedule {schedule!r} (known: {', '.join(LR_SCHEDULES)})")


def is_scheduled(schedule: str, warmup_steps: int) -> bool:
    """Return whether the learning rates change during a run (a schedule other than constant, or a warm-up)."""
    return schedule != "constant" or warmup_steps > 0


def keep_full_rates(optimisers) -> None:
    """Record each param group's learning rate as its full rate ("initial_lr"), where none is recorded yet."""
    for optimiser in optimisers:
        for group in optimiser.param_groups:
            group.setdefault("initial_lr", group["lr"])


def set_learning_rates(optimisers, factor: float) -> None:
    """Set every param group's learning rate to its full rate times `factor`."""
    for optimiser in optimisers:
        for group in optimiser.param_groups:
            group["lr"] = group["initial_lr"] * factor


def full_rate(optimiser) -> float:
    """Return the full learning rate of `optimiser` (its first param group's)."""
    group = optimiser.param_groups[0]
    return group.get("initial_lr", group["lr"])


def set_full_rates(optimisers, rates) -> None:
    """Make each rate of `rates` its optimiser's full (and, until a scheduled step sets it, current) learning rate."""
    for optimiser, rate in zip(optimisers, rates, strict=True):
        for group in optimiser.param_groups:
            group["initial_lr"] = group["lr"] = rate
