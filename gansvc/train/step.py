"""One training step: n_critic discriminator steps, then one generator step (a part of the Trainer).

The generator runs forward once per D step; the last fake batch is reused for the G step (G's weights
have not changed since it was produced, so the graph through G is still the right one; D is re-run
with its updated weights, exactly as a second G forward would give).
"""

from __future__ import annotations

import contextlib

import torch

from gansvc.losses import discriminator_loss, generator_loss
from gansvc.train.regularisers import gradient_penalty, r1_penalty


class TrainerStep:
    """The Trainer's step (a part of gansvc.train.trainer.Trainer)."""

    def _autocast(self):
        """Return a fresh autocast context: bf16 for precision 'bf16', a no-op for fp32."""
        if self.spec.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_step(self) -> torch.Tensor:
        """Run n_critic D steps and one G step; return this step's statistics as one tensor."""
        spec = self.spec
        d_stats = None
        for i in range(spec.n_critic):
            real = self.batches.next()
            # the global batch's noise from the shared stream, this rank's rows of it: N ranks draw what one would
            z = torch.randn(spec.batch_size, spec.z_dim, device=self.device, generator=self.noise)
            z = z[self.batch_lo : self.batch_hi]
            last = i == spec.n_critic - 1
            with self._autocast(), torch.set_grad_enabled(last):
                fake = self.G_train(z)
            stats = self._d_step(real, fake.detach())
            d_stats = stats if d_stats is None else d_stats + stats
        d_stats = d_stats / spec.n_critic
        g_loss = self._g_step(fake)
        # order: d_loss, g_loss, d_real, d_fake, d_accuracy, [gp], [r1]
        return torch.cat([d_stats[:1], g_loss.reshape(1), d_stats[1:]])

    def _d_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        self.opt_d.zero_grad(set_to_none=True)
        if spec.r1_gamma > 0:
            real.requires_grad_(True)
        with self._autocast():
            if self.joint_d:
                real_logits, fake_logits = self.D_train(torch.cat([real, fake])).split(real.shape[0])
            else:
                real_logits, fake_logits = self.D_train(real), self.D_train(fake)
        out = discriminator_loss(real_logits.float(), fake_logits.float(), spec.loss, spec.real_label)
        loss = out.loss
        extras = []
        if spec.gradient_penalty > 0:
            with self._autocast():
                # the plain D: its weight gradients join the DDP forward's in the one backward below
                penalty = gradient_penalty(
                    self.D, real, fake, spec.gradient_penalty, self.noise, spec.batch_size, self.batch_lo
                )
            loss = loss + penalty
            extras.append(penalty.detach().reshape(1))
        if spec.r1_gamma > 0:
            penalty = r1_penalty(real_logits, real, spec.r1_gamma)
            loss = loss + penalty
            extras.append(penalty.detach().reshape(1))
        loss.backward()
        self.opt_d.step()
        parts = [out.loss.detach().reshape(1), out.mean_real.reshape(1), out.mean_fake.reshape(1), out.accuracy.reshape(1)]
        return torch.cat([p.double() for p in parts + extras])

    def _g_step(self, fake: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        self.opt_g.zero_grad(set_to_none=True)
        # no weight gradients for D in the G step: only dD/dx is needed. The plain D (not its DDP
        # wrapper) runs here, so no gradient synchronisation of D is started.
        self.D.requires_grad_(False)
        try:
            with self._autocast():
                logits = self.D(fake)
            out = generator_loss(logits.float(), spec.loss, spec.g_saturating)
            out.loss.backward()
        finally:
            self.D.requires_grad_(True)
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update(self.G)
        return out.loss.detach().double()
