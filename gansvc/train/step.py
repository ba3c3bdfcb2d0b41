"""One training step: n_critic discriminator steps, then one generator step (a part of the Trainer).

The generator runs forward once per D step; the last fake batch is reused for the G step (G's weights
have not changed since it was produced, so the graph through G is still the right one; D is re-run
with its updated weights, exactly as a second G forward would give).

Conditional runs (issue 12) give G the labels of its samples (drawn from the noise stream) and D the
labels of what it judges; with augmentation, everything D sees (real and fake, also in the G step)
goes through the run's Augmenter.
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
            real_labels = self.batches.last_labels if self.num_classes else None
            # the global batch's noise from the shared stream, this rank's rows of it: N ranks draw what one would
            z = torch.randn(spec.batch_size, spec.z_dim, device=self.device, generator=self.noise)
            z = z[self.batch_lo : self.batch_hi]
            fake_labels = self._fake_labels()
            last = i == spec.n_critic - 1
            with self._autocast(), torch.set_grad_enabled(last):
                fake = self.G_train(z, *_given(fake_labels))
            stats = self._d_step(real, fake.detach(), real_labels, fake_labels)
            d_stats = stats if d_stats is None else d_stats + stats
        d_stats = d_stats / spec.n_critic
        g_loss = self._g_step(fake, fake_labels)
        # order: d_loss, g_loss, d_real, d_fake, d_accuracy, [gp], [r1], [augment_p]
        return torch.cat([d_stats[:1], g_loss.reshape(1), d_stats[1:]])

    def _fake_labels(self) -> torch.Tensor | None:
        """Return this rank's labels of the global fake batch (None unless conditional), from the noise stream."""
        if not self.num_classes:
            return None
        from gansvc.train.conditional import draw_labels

        labels = draw_labels(self.spec.batch_size, self.num_classes, self.label_probs, self.noise, self.device)
        return labels[self.batch_lo : self.batch_hi]

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        """Return what D is shown of `images`: augmented when the run augments, else the images themselves."""
        return images if self.augmenter is None else self.augmenter(images)

    def _observe_real(self, real_logits: torch.Tensor) -> None:
        """Feed ADA the signs of D's real logits, summed over all ranks so every rank moves p alike."""
        if self.augmenter is None or not self.augmenter.adaptive:
            return
        signs = torch.stack([torch.sign(real_logits.detach().double()).sum(),
                             torch.tensor(float(real_logits.numel()), dtype=torch.float64, device=real_logits.device)])
        signs = self.dist.all_reduce_sum(signs)  # fmt: skip
        self.augmenter.observe_signs(float(signs[0]), int(signs[1]), self.spec.batch_size)

    def _d_step(self, real: torch.Tensor, fake: torch.Tensor, real_labels=None, fake_labels=None) -> torch.Tensor:
        spec = self.spec
        self.opt_d.zero_grad(set_to_none=True)
        if spec.r1_gamma > 0:
            real.requires_grad_(True)  # before the augmentation: R1 is the gradient at the data, through it
        p_used = None if self.augmenter is None else self.augmenter.p
        seen_real, seen_fake = self._augment(real), self._augment(fake)
        with self._autocast():
            if self.joint_d:
                labels = () if real_labels is None else (torch.cat([real_labels, fake_labels]),)
                real_logits, fake_logits = self.D_train(torch.cat([seen_real, seen_fake]), *labels).split(real.shape[0])
            else:
                real_logits = self.D_train(seen_real, *_given(real_labels))
                fake_logits = self.D_train(seen_fake, *_given(fake_labels))
        out = discriminator_loss(real_logits.float(), fake_logits.float(), spec.loss, spec.real_label)
        loss = out.loss
        extras = []
        if spec.gradient_penalty > 0:
            # the plain D: its weight gradients join the DDP forward's in the one backward below; interpolates
            # carry the real samples' labels (as StudioGAN does)
            critic = self.D if real_labels is None else (lambda x: self.D(x, real_labels))
            with self._autocast():
                penalty = gradient_penalty(
                    critic, seen_real, seen_fake, spec.gradient_penalty, self.noise, spec.batch_size, self.batch_lo
                )
            loss = loss + penalty
            extras.append(penalty.detach().reshape(1))
        if spec.r1_gamma > 0:
            penalty = r1_penalty(real_logits, real, spec.r1_gamma)
            loss = loss + penalty
            extras.append(penalty.detach().reshape(1))
        loss.backward()
        self.opt_d.step()
        self._observe_real(real_logits)
        if p_used is not None:
            extras.append(torch.full((1,), p_used, dtype=torch.float64, device=out.loss.device))
        parts = [out.loss.detach().reshape(1), out.mean_real.reshape(1), out.mean_fake.reshape(1), out.accuracy.reshape(1)]
        return torch.cat([p.double() for p in parts + extras])

    def _g_step(self, fake: torch.Tensor, fake_labels: torch.Tensor | None = None) -> torch.Tensor:
        spec = self.spec
        self.opt_g.zero_grad(set_to_none=True)
        # no weight gradients for D in the G step: only dD/dx is needed. The plain D (not its DDP
        # wrapper) runs here, so no gradient synchronisation of D is started.
        self.D.requires_grad_(False)
        try:
            with self._autocast():
                logits = self.D(self._augment(fake), *_given(fake_labels))
            out = generator_loss(logits.float(), spec.loss, spec.g_saturating)
            out.loss.backward()
        finally:
            self.D.requires_grad_(True)
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update(self.G)
        return out.loss.detach().double()


def _given(labels: torch.Tensor | None) -> tuple:
    """Return the extra arguments of a model call: (labels,) for a conditional model, () otherwise."""
    return () if labels is None else (labels,)
