"""Adam for the training loop: torch's fused Adam kernel without its per-step Python bookkeeping.

torch.optim.Adam(fused=True) regroups every tensor by device and dtype on every step; for the small
GANs trained on a CPU that bookkeeping costs as much as the kernel itself (about 0.3 ms a step per
optimiser). This subclass lets torch initialise the state on the first step, then keeps the tensor
lists and calls the same fused kernel directly. State, state_dict and results are torch's own
(tests/test_train.py compares the two bit for bit, also under a GradScaler).
"""

from __future__ import annotations

import torch


class FusedAdam(torch.optim.Adam):
    """torch.optim.Adam(fused=True) (no weight decay, no amsgrad) with the tensor lists cached between steps."""

    def __init__(self, params, lr: float, betas: tuple[float, float]):
        super().__init__(params, lr=lr, betas=betas, fused=True)
        self._cached: tuple | None = None

    def load_state_dict(self, state_dict: dict) -> None:
        """Load torch's Adam state (the cached lists are rebuilt on the next step)."""
        super().load_state_dict(state_dict)
        self._cached = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) the gradients; dropping them skips torch's per-call grouping and profiler record."""
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None
        return None

    @torch.no_grad()
    def step(self, closure=None):
        """Update the parameters from their gradients (torch's path for the first step and odd cases)."""
        if closure is not None or len(self.param_groups) != 1:
            self._cached = None
            return super().step(closure)
        if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
            # a GradScaler's step (fp16) hands these to the fused kernel, which unscales and skips an overflowed
            # step: torch's own path does that (the cached lists stay valid, its state is updated in place)
            return super().step()
        group = self.param_groups[0]
        params = group["params"]
        if self._cached is None or any(p.grad is None for p in params):
            result = super().step()
            if all(p.grad is not None and p in self.state for p in params):
                states = [self.state[p] for p in params]
                self._cached = (
                    [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [s["step"] for s in states]
                )  # fmt: skip
            return result
        exp_avgs, exp_avg_sqs, steps = self._cached
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps,
            lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
            amsgrad=False, maximize=False, grad_scale=None, found_inf=None,
        )  # fmt: skip
        return None
