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

For longer runs (issue 21): the learning rates follow the spec's schedule (gansvc.train.schedule), set
before each step from the step count. With `accumulate` = k, each batch is split into k equal
micro-batches whose losses, each divided by k, add their gradients up to the whole batch's before the
one optimiser step (with several ranks, averaged once, at the last); the G step then runs G again on
each micro-batch instead of keeping the whole batch's graph. What sees a batch, not a sample, sees
micro-batches: BatchNorm normalises each with its own statistics, and spectral norm's power iteration
runs once per micro-batch forward. A step is never split by a checkpoint, so no accumulation position
needs saving. Lazy R1 adds R1, weighted r1_gamma * r1_every, to every r1_every-th D step's loss (the
others take the fused path). fp16 scales each loss by its optimiser's GradScaler
(gansvc.train.precision) and takes the autograd path.

The auxiliary classifier (AC-GAN; conditional runs with `ac_weight` > 0) adds ac_weight times the cross-entropy
of D's class logits to two losses: D's, on the real images' labels (D learns to classify real data), and G's, on
its sampled labels (G is pushed towards images D classifies as the class asked for). D is not trained to classify
fakes: an early G's images would teach it wrong classes. Both losses then take the autograd path.

The class-entropy term (CatGAN; unconditional DCGAN runs with `class_entropy` > 0, labelled data) uses the same
classifier head without conditioning anything: D learns the real images' labels (cross-entropy, weight 1), and
G's loss adds class_entropy times the mean entropy of D's prediction on its fakes less the entropy of the batch's
mean prediction (class_entropy_term). Those runs take the autograd path too.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F

from gansvc import ops
from gansvc.losses import discriminator_loss, generator_kind, generator_loss, relativistic_logits
from gansvc.train.ddp import sync_gradients
from gansvc.train.precision import autocast, backward, optimiser_step
from gansvc.train.regularisers import gradient_penalty, mixing_weights, r1_penalty
from gansvc.train.schedule import lr_factor, set_learning_rates



def class_entropy_term(class_logits: torch.Tensor) -> torch.Tensor:
    """Return CatGAN's G term on D's class logits [N, K] for G's fakes: the mean entropy of each fake's class
    prediction (low: each fake looks like one class) less the entropy of the batch's mean prediction (high: the
    classes equally common). In nats; between -log K and log K."""
    log_p = F.log_softmax(class_logits, dim=1)
    p = log_p.exp()
    per_sample = -(p * log_p).sum(1).mean()
    mean_p = p.mean(0)
    marginal = -(mean_p * torch.log(mean_p.clamp_min(torch.finfo(mean_p.dtype).tiny))).sum()
    return per_sample - marginal

class TrainerStep:
    """The Trainer's step (a part of gansvc.train.trainer.Trainer)."""

    # False forces the differentiable loss + loss.backward() path everywhere (the tests compare the two)
    _fused_loss_steps = True

    def _fused_losses(self, r1: bool) -> bool:
        """Return whether a loss runs as a fused step: nothing joins it in the graph (a gradient penalty, R1 when
        `r1`) and nothing scales its gradient (accumulation's 1 / accumulate, fp16's loss scale)."""
        spec = self.spec
        return (self._fused_loss_steps and spec.gradient_penalty == 0 and not r1 and spec.accumulate == 1
                and self.scaler_d is None and not self.ac_term)  # fmt: skip

    def _autocast(self):
        """Return a fresh autocast context for the spec's precision (a no-op for fp32)."""
        return autocast(self.spec.precision, self.device.type)

    def _train_step(self) -> torch.Tensor:
        """Run n_critic D steps and one G step; return this step's statistics as one tensor."""
        spec = self.spec
        if self.lr_scheduled:  # a function of the step count alone: a resumed run continues the schedule exactly
            factor = lr_factor(spec.lr_schedule, self.step, self.total_steps, spec.lr_warmup_steps)
            set_learning_rates((self.opt_g, self.opt_d), factor)
        d_stats = None
        for i in range(spec.n_critic):
            real = self.batches.next()
            real_labels = self.batches.last_labels if self.num_classes else None
            # class_entropy: the labels D's classifier learns from (the GAN itself stays unconditional)
            self._class_targets = self.batches.last_labels if self.label_classes else None
            # the global batch's noise from the shared stream, this rank's rows of it: N ranks draw what one would
            z = torch.randn(spec.batch_size, spec.z_dim, device=self.device, generator=self.noise)
            z = z[self.batch_lo : self.batch_hi]
            fake_labels = self._fake_labels()
            # the G step reuses the last fake batch's graph; with accumulation it runs G again per micro-batch
            keep_graph = i == spec.n_critic - 1 and spec.accumulate == 1
            fake = self._generate(z, fake_labels, keep_graph)
            # lazy R1 (StyleGAN2): on every r1_every-th D step of the run, counted from its first
            r1 = spec.r1_gamma > 0 and (self.step * spec.n_critic + i) % spec.r1_every == 0
            stats = self._d_step(real, fake.detach(), real_labels, fake_labels, r1)
            d_stats = stats if d_stats is None else d_stats + stats
        if spec.n_critic > 1:
            d_stats = d_stats / spec.n_critic
        if spec.accumulate == 1:
            # R1 runs keep G's loss on the autograd path too, as they did before lazy R1 (their results unchanged)
            g_loss = self._g_step(fake, fake_labels, self._fused_losses(r1=spec.r1_gamma > 0))
        else:
            g_loss = self._g_step_accumulated(z, fake_labels)
        # order: d_loss, g_loss, d_real, d_fake, d_accuracy, [gp], [r1], [ac_loss], [augment_p]
        return torch.cat((d_stats[:1], g_loss, d_stats[1:]))

    def _generate(self, z: torch.Tensor, labels: torch.Tensor | None, keep_graph: bool) -> torch.Tensor:
        """Return G's fake batch for noise `z` (with its graph when `keep_graph`); with accumulation one micro-batch
        at a time, so BatchNorm in G normalises each micro-batch as it does when the G step runs them again."""
        k = self.spec.accumulate
        with self._autocast(), torch.set_grad_enabled(keep_graph):
            if k == 1:
                return self.G_train(z, *_given(labels))
            return torch.cat([self.G_train(z_j, *_given(l_j)) for z_j, l_j in zip(z.chunk(k), _chunks(labels, k))])

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
                r1: bool = False) -> torch.Tensor:  # fmt: skip
        """Run one D step (R1 in its loss when `r1`) over `accumulate` micro-batches; return float64
        [d_loss, d_real, d_fake, d_accuracy, [gp], [r1], [ac_loss], [augment_p]] of the whole batch."""
        spec = self.spec
        k = spec.accumulate
        self.opt_d.zero_grad(set_to_none=True)
        p_used = None if self.augmenter is None else self.augmenter.p
        alphas = [None] * k
        if spec.gradient_penalty > 0 and k > 1:  # drawn for the whole batch at once, as without accumulation
            alphas = mixing_weights(real, self.noise, spec.batch_size, self.batch_lo).chunk(k)
        parts = zip(_chunks(real, k), _chunks(fake, k), _chunks(real_labels, k), _chunks(fake_labels, k), alphas)
        values, real_logits = [], []
        for j, (real_j, fake_j, real_labels_j, fake_labels_j, alpha_j) in enumerate(parts):
            with sync_gradients(self.D_train, j == k - 1):  # the ranks average the gradients once, at the last
                stats, logits = self._d_micro_step(real_j, fake_j, real_labels_j, fake_labels_j, r1, alpha_j)
            values.append(stats)
            real_logits.append(logits)
        optimiser_step(self.opt_d, self.scaler_d)
        real_logits = real_logits[0] if k == 1 else torch.cat(real_logits)
        self._observe_real(real_logits)
        # the relativistic G loss compares G's fakes with this step's real logits (D before its update: no second
        # forward of the real batch)
        self.last_real_logits = real_logits.detach()
        # equal micro-batches: the mean of their means is the batch's mean
        stats = values[0] if k == 1 else torch.stack(values).mean(0)
        if p_used is None:
            return stats
        return torch.cat((stats, torch.full((1,), p_used, dtype=torch.float64, device=stats.device)))

    def _d_micro_step(self, real: torch.Tensor, fake: torch.Tensor, real_labels, fake_labels, r1: bool,
                      alpha: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Add one micro-batch's share of D's gradients (the whole batch's without accumulation); return (float64
        [d_loss, d_real, d_fake, d_accuracy, [gp], [r1], [ac_loss]] of the micro-batch, D's logits of its real
        samples)."""
        spec = self.spec
        if r1:  # before the augmentation: R1 is the gradient at the data, through it
            real = real.detach().requires_grad_(True)
        seen_real, seen_fake = self._augment(real), self._augment(fake)
        classes = {"classes": True} if self.ac_term else {}  # D also returns its class logits
        class_logits = None
        with self._autocast():
            if self.joint_d:
                labels = () if real_labels is None else (torch.cat([real_labels, fake_labels]),)
                out = self.D_train(torch.cat([seen_real, seen_fake]), *labels, **classes)
                if self.ac_term:
                    out, class_logits = out
                    class_logits = class_logits[: real.shape[0]]
                # one logit per sample, or per pack of samples (PacGAN): the reals come first, as many as the fakes
                real_logits, fake_logits = out.split(out.shape[0] * real.shape[0] // (real.shape[0] + fake.shape[0]))
            else:
                real_logits = self.D_train(seen_real, *_given(real_labels), **classes)
                if self.ac_term:
                    real_logits, class_logits = real_logits
                fake_logits = self.D_train(seen_fake, *_given(fake_labels))
        # lazy R1's steps without it report a zero penalty: the column's mean over steps is the penalty per step
        no_r1 = [torch.zeros(1, dtype=torch.float64, device=real_logits.device)] if spec.r1_gamma > 0 else []
        # what D's loss scores: the logits, or with the relativistic loss each side less the other's mean (the
        # statistics D(x), D(G(z)) and accuracy are then of the relative logits)
        scored_real, scored_fake = real_logits.float(), fake_logits.float()
        if spec.relativistic:
            scored_real, scored_fake = relativistic_logits(scored_real, scored_fake)
        if self._fused_losses(r1):
            # [loss, mean D(x), mean D(G(z)), accuracy], D's weight gradients accumulated (one backward)
            values = ops.d_loss_step(scored_real, scored_fake, spec.loss, spec.real_label)
            return torch.cat([values.double(), *no_r1]), real_logits
        out = discriminator_loss(scored_real, scored_fake, spec.loss, spec.real_label)
        loss = out.loss
        extras = []
        if spec.gradient_penalty > 0:
            # the plain D: its weight gradients join the DDP forward's in the one backward below; interpolates
            # carry the real samples' labels (as StudioGAN does)
            critic = self.D if real_labels is None else (lambda x: self.D(x, real_labels))
            with self._autocast():
                penalty = gradient_penalty(critic, seen_real, seen_fake, spec.gradient_penalty, self.noise,
                                           spec.batch_size, self.batch_lo, alpha=alpha)  # fmt: skip
            loss = loss + penalty
            extras.append(penalty.detach().reshape(1))
        if r1:
            # The input gradient is taken unscaled under fp16 too: it is of a sum of logits (no 1 / batch factor
            # to underflow), as StyleGAN2-ADA takes it; the loss it joins is scaled below.
            penalty = r1_penalty(real_logits, real, spec.r1_gamma * spec.r1_every)
            loss = loss + penalty
            extras.append(penalty.detach().reshape(1))
        else:
            extras += no_r1
        if self.ac_term:
            targets = real_labels if real_labels is not None else self._class_targets
            ac_loss = F.cross_entropy(class_logits.float(), targets)
            # class_entropy's D learns the classes at full weight: they are its task, not a term traded against G's
            loss = loss + (spec.ac_weight if real_labels is not None else 1.0) * ac_loss
            extras.append(ac_loss.detach().reshape(1))
        backward(loss if spec.accumulate == 1 else loss / spec.accumulate, self.scaler_d)
        parts = [out.loss.detach(), out.mean_real, out.mean_fake, out.accuracy]
        return torch.cat([p.double().reshape(1) for p in parts + extras]), real_logits

    def _g_step(self, fake: torch.Tensor, fake_labels: torch.Tensor | None = None, fused: bool = False) -> torch.Tensor:
        """Run the G step on the D step's last fake batch; return float64 [g_loss]."""
        spec = self.spec
        self.opt_g.zero_grad(set_to_none=True)
        with self._d_frozen():
            with self._autocast():
                logits = self.D(self._augment(fake), *_given(fake_labels), **self._classes())
            if fused and spec.relativistic:
                # D's loss with the roles swapped: the fakes scored as real, the reals as fake
                fake_rel, real_rel = relativistic_logits(logits.float(), self.last_real_logits.float())
                g_loss = ops.d_loss_step(fake_rel, real_rel, spec.loss)[:1]
            elif fused:
                g_loss = ops.g_loss_step(logits.float(), generator_kind(spec.loss, spec.g_saturating))[:1]
            else:
                g_loss = self._g_loss(logits, fake_labels)
                backward(g_loss, self.scaler_g)
        optimiser_step(self.opt_g, self.scaler_g)
        if self.ema is not None:
            self.ema.update(self.G)
        return g_loss.detach().double().reshape(1)

    def _g_step_accumulated(self, z: torch.Tensor, fake_labels: torch.Tensor | None) -> torch.Tensor:
        """Run the G step over `accumulate` micro-batches of the last D step's noise, G run again on each (only one
        micro-batch's activations are held at a time); return float64 [g_loss] of the whole batch."""
        spec = self.spec
        k = spec.accumulate
        self.opt_g.zero_grad(set_to_none=True)
        losses = []
        # the D step's forward of these micro-batches already moved G's BatchNorm running statistics: once is all
        with self._d_frozen(), _buffers_kept(self.G):
            for j, (z_j, labels_j) in enumerate(zip(z.chunk(k), _chunks(fake_labels, k))):
                with sync_gradients(self.G_train, j == k - 1):
                    with self._autocast():
                        fake = self.G_train(z_j, *_given(labels_j))
                        logits = self.D(self._augment(fake), *_given(labels_j), **self._classes())
                    g_loss = self._g_loss(logits, labels_j)
                    backward(g_loss / k, self.scaler_g)
                losses.append(g_loss.detach())
        optimiser_step(self.opt_g, self.scaler_g)
        if self.ema is not None:
            self.ema.update(self.G)
        return torch.stack(losses).double().mean().reshape(1)

    def _classes(self) -> dict:
        """Return the keyword that makes D return its class logits too (the auxiliary classifier's term), or none."""
        return {"classes": True} if self.ac_term else {}

    def _g_loss(self, out, fake_labels: torch.Tensor | None) -> torch.Tensor:
        """Return G's loss from D's output on its fakes: the adversarial loss, plus with the auxiliary classifier
        ac_weight times the cross-entropy of D's class logits against the labels G was asked for."""
        spec = self.spec
        logits, class_logits = out if self.ac_term else (out, None)
        if spec.relativistic:  # D's loss with the roles swapped (the D step's real logits, see _d_step)
            fake_rel, real_rel = relativistic_logits(logits.float(), self.last_real_logits.float())
            loss = discriminator_loss(fake_rel, real_rel, spec.loss).loss
        else:
            loss = generator_loss(logits.float(), spec.loss, spec.g_saturating).loss
        if self.label_classes:
            loss = loss + spec.class_entropy * class_entropy_term(class_logits.float())
        elif self.ac_term:
            loss = loss + spec.ac_weight * F.cross_entropy(class_logits.float(), fake_labels)
        return loss

    @contextlib.contextmanager
    def _d_frozen(self):
        """Switch D's weight gradients off for the G step, which needs only dD/dx. The plain D (not its DDP
        wrapper) runs there, so no gradient synchronisation of D is started."""
        d_params = self._d_parameters()
        for p in d_params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in d_params:
                p.requires_grad_(True)

    def _d_parameters(self) -> list[torch.Tensor]:
        """Return D's parameters (listed once: the G step switches their gradients off and on every step)."""
        cached = getattr(self, "_d_params_cache", None)
        if cached is None or cached[0] is not self.D:
            cached = self._d_params_cache = (self.D, list(self.D.parameters()))
        return cached[1]


@contextlib.contextmanager
def _buffers_kept(module: nn.Module):
    """Put `module`'s buffers (BatchNorm running statistics, spectral-norm vectors) back as they were on exit."""
    saved = [b.clone() for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(module.buffers(), saved):
                buffer.copy_(value)


def _chunks(tensor: torch.Tensor | None, k: int) -> list:
    """Return `tensor` split into k equal micro-batches along its first dimension ([tensor] for k = 1; None k times)."""
    if tensor is None:
        return [None] * k
    return [tensor] if k == 1 else list(tensor.chunk(k))


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
