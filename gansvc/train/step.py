"""One training step: n_critic discriminator steps, then one generator step (a part of the Trainer).

The generator runs forward once per D step; the last fake batch is reused for the G step (G's weights
have not changed since it was produced, so the graph through G is still the right one; D is re-run
with its updated weights, exactly as a second G forward would give).

Conditional runs (issue 12) give G the labels of its samples (drawn from the noise stream) and D the
labels of what it judges; with augmentation, everything D sees (real and fake, also in the G step)
goes through the run's Augmenter.

Without a gradient penalty or R1 (both need the loss inside the autograd graph), the losses run as
gansvc.ops.d_loss_step / g_loss_step: the fused kernel adds d loss / d logits straight into the logits'
graph (one autograd-engine call, no autograd node) and returns the detached statistics, the same
numbers `discriminator_loss` + `loss.backward()` give to float rounding (tests/test_fused_step.py).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from gansvc import ops
from gansvc.losses import discriminator_loss, generator_kind, generator_loss
from gansvc.train.regularisers import gradient_penalty, r1_penalty


class TrainerStep:
    """The Trainer's step (a part of gansvc.train.trainer.Trainer)."""

    # False forces the differentiable loss + loss.backward() path everywhere (the tests compare the two)
    _fused_loss_steps = True

    def _fused_losses(self) -> bool:
        """Return whether the losses run as fused steps: nothing else (gradient penalty, R1) joins D's loss."""
        spec = self.spec
        return self._fused_loss_steps and spec.gradient_penalty == 0 and spec.r1_gamma == 0

    def _autocast(self):
        """Return a fresh autocast context: bf16 for precision 'bf16', a no-op for fp32."""
        if self.spec.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_step(self) -> torch.Tensor:
        """Run n_critic D steps and one G step; return this step's statistics as one tensor."""
        spec = self.spec
        fused = self._fused_losses()
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
            stats = self._d_step(real, fake.detach(), real_labels, fake_labels, fused)
            d_stats = stats if d_stats is None else d_stats + stats
        if spec.n_critic > 1:
            d_stats = d_stats / spec.n_critic
        g_loss = self._g_step(fake, fake_labels, fused)
        # order: d_loss, g_loss, d_real, d_fake, d_accuracy, [gp], [r1], [augment_p]
        return torch.cat((d_stats[:1], g_loss, d_stats[1:]))

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

    def _d_step(self, real: torch.Tensor, fake: torch.Tensor, real_labels=None, fake_labels=None,
                fused: bool = False) -> torch.Tensor:  # fmt: skip
        """Run one D step; return float64 [d_loss, d_real, d_fake, d_accuracy, [gp], [r1], [augment_p]]."""
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
        if fused:
            # [loss, mean D(x), mean D(G(z)), accuracy], D's weight gradients accumulated (one backward)
            values = ops.d_loss_step(real_logits.float(), fake_logits.float(), spec.loss, spec.real_label)
            self.opt_d.step()
            self._observe_real(real_logits)
            if p_used is None:
                return values.double()
            return torch.cat((values.double(), torch.full((1,), p_used, dtype=torch.float64, device=values.device)))
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

    def _g_step(self, fake: torch.Tensor, fake_labels: torch.Tensor | None = None, fused: bool = False) -> torch.Tensor:
        """Run the G step on the D step's last fake batch; return float64 [g_loss]."""
        spec = self.spec
        self.opt_g.zero_grad(set_to_none=True)
        # no weight gradients for D in the G step: only dD/dx is needed. The plain D (not its DDP
        # wrapper) runs here, so no gradient synchronisation of D is started.
        d_params = self._d_parameters()
        for p in d_params:
            p.requires_grad_(False)
        try:
            with self._autocast():
                logits = self.D(self._augment(fake), *_given(fake_labels))
            if fused:
                g_loss = ops.g_loss_step(logits.float(), generator_kind(spec.loss, spec.g_saturating))[:1]
            else:
                g_loss = generator_loss(logits.float(), spec.loss, spec.g_saturating).loss
                g_loss.backward()
        finally:
            for p in d_params:
                p.requires_grad_(True)
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update(self.G)
        return g_loss.detach().double().reshape(1)

    def _d_parameters(self) -> list[torch.Tensor]:
        """Return D's parameters (listed once: the G step switches their gradients off and on every step)."""
        cached = getattr(self, "_d_params_cache", None)
        if cached is None or cached[0] is not self.D:
            cached = self._d_params_cache = (self.D, list(self.D.parameters()))
        return cached[1]


def channels_last_on_cpu(model: nn.Module, device: torch.device) -> nn.Module:
    """Return `model` (changed in place) with its 4-D weights in channels_last when it is a conv net on a CPU.

    oneDNN's CPU convolutions work in NHWC: with NCHW weights every convolution and its backward reorders
    its operands (the default DCGAN step takes ~15% longer). The values are the same to float rounding;
    the outputs of a conv net are then channels_last tensors (same shape, other strides).
    """
    if device.type == "cpu" and any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model


def _given(labels: torch.Tensor | None) -> tuple:
    """Return the extra arguments of a model call: (labels,) for a conditional model, () otherwise."""
    return () if labels is None else (labels,)
