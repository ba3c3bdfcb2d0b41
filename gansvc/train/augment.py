"""Differentiable augmentation of everything D sees (DiffAugment, Zhao et al. 2020) with ADA's
adaptive probability (Karras et al. 2020).

Every image D is shown, real or generated, goes through the same random transforms, so D cannot
tell the two apart by them and G is not pushed to produce augmented-looking images; the transforms
are differentiable, so G's gradient flows through them. Each transform is applied to each image with
probability p. A fixed p is DiffAugment (p = 1); with `ada_target`, p follows ADA's overfitting
heuristic r_t = E[sign(D(x_real))]: every `interval` steps p moves up when r_t exceeds the target
and down when it is below, by as much as reaches 1 from 0 in `ada_images` images.

The random draws come from the augmenter's own generator, so a run with the same seed augments the
same way, and the generator's state, p and the heuristic's accumulators are saved in checkpoints
(state_dict) so a resumed run continues exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("translation", "cutout", "color")
TRANSLATION_RATIO = 0.125  # shift by up to 1/8 of the image size (DiffAugment's value)
CUTOUT_RATIO = 0.5  # erase a square of half the image size


def parse_policy(text: str) -> tuple[str, ...]:
    """Return the transforms named in 'translation,cutout,color' (a ValueError names an unknown one)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}: expected some of {', '.join(POLICIES)}")
    return names


def _color(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Brightness, saturation and contrast jitter; r holds three uniform draws per image."""
    brightness, saturation, contrast = (r[:, i].view(-1, 1, 1, 1) for i in range(3))
    x = x + (brightness - 0.5)
    if x.shape[1] > 1:
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (saturation * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (contrast + 0.5) + mean


def _translation(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Shift each image by whole pixels (up to TRANSLATION_RATIO of its size), filling with zeros."""
    n, _, h, w = x.shape
    sh, sw = max(1, int(h * TRANSLATION_RATIO + 0.5)), max(1, int(w * TRANSLATION_RATIO + 0.5))
    dy = (r[:, 0] * (2 * sh + 1)).long().clamp_(max=2 * sh) - sh
    dx = (r[:, 1] * (2 * sw + 1)).long().clamp_(max=2 * sw) - sw
    rows = (torch.arange(h, device=x.device).view(1, h) - dy.view(n, 1) + sh)  # index into the padded image
    cols = (torch.arange(w, device=x.device).view(1, w) - dx.view(n, 1) + sw)
    padded = F.pad(x, [sw, sw, sh, sh])
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Zero a square of CUTOUT_RATIO of the image size at a random place (it may cross the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    cy = (r[:, 0] * (h + 1 - ch % 2)).long()
    cx = (r[:, 1] * (w + 1 - cw % 2)).long()
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    oy = ys - (cy.view(n, 1, 1) - ch // 2)  # position inside the square, rows
    ox = xs - (cx.view(n, 1, 1) - cw // 2)
    inside = (oy >= 0) & (oy < ch) & (ox >= 0) & (ox < cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_TRANSFORMS = {"color": (_color, 3), "translation": (_translation, 2), "cutout": (_cutout, 2)}


class Augmenter:
    """Applies the policy's transforms, each with probability p per image, from its own seeded generator."""

    def __init__(self, policy: tuple[str, ...] | str, p: float = 1.0, *, ada_target: float = 0.0,
                 interval: int = 4, ada_images: int = 500_000, seed: int = 0, device="cpu"):  # fmt: skip
        self.policy = parse_policy(policy) if isinstance(policy, str) else tuple(policy)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augment probability must be in [0, 1], got {p}")
        self.p = float(p)
        self.ada_target = float(ada_target)
        self.interval = int(interval)
        self.ada_images = int(ada_images)
        self.generator = torch.Generator(device=device).manual_seed(seed + 0x5EED)
        self._sign_sum = 0.0
        self._sign_count = 0
        self._steps = 0

    @property
    def adaptive(self) -> bool:
        """Whether p follows the ADA heuristic."""
        return self.ada_target > 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Return x augmented (differentiable with respect to x); x itself when p is 0 or no policy."""
        if self.p <= 0.0 or not self.policy:
            return x
        n = x.shape[0]
        for name in self.policy:
            transform, draws = _TRANSFORMS[name]
            r = torch.rand(n, draws + 1, generator=self.generator, device=self.generator.device).to(x.device)
            out = transform(x, r[:, 1:].to(x.dtype))
            if self.p >= 1.0:
                x = out
            else:
                x = torch.where((r[:, 0] < self.p).view(n, 1, 1, 1), out, x)
        return x

    def observe(self, real_logits: torch.Tensor, batch_images: int) -> None:
        """Feed D's logits on real images; every `interval` calls adjust p toward ada_target (ADA)."""
        if not self.adaptive:
            return
        self.observe_signs(float(torch.sign(real_logits.detach().float()).sum()), real_logits.numel(), batch_images)

    def observe_signs(self, sign_sum: float, count: int, batch_images: int) -> None:
        """observe() from the sum of signs of `count` real logits (with several ranks: summed over all of them)."""
        if not self.adaptive:
            return
        self._sign_sum += sign_sum
        self._sign_count += count
        self._steps += 1
        if self._steps % self.interval == 0 and self._sign_count:
            r_t = self._sign_sum / self._sign_count
            step = batch_images * self.interval / self.ada_images
            self.p = min(1.0, max(0.0, self.p + (step if r_t > self.ada_target else -step)))
            self._sign_sum, self._sign_count = 0.0, 0

    def state_dict(self) -> dict:
        """Return what a checkpoint needs to continue exactly: p, the heuristic's sums, the generator."""
        return {"p": self.p, "sign_sum": self._sign_sum, "sign_count": self._sign_count, "steps": self._steps,
                "generator": self.generator.get_state()}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict()."""
        self.p = float(state["p"])
        self._sign_sum, self._sign_count, self._steps = float(state["sign_sum"]), int(state["sign_count"]), int(state["steps"])
        self.generator.set_state(state["generator"])
