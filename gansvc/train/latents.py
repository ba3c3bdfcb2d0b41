"""Latents as practitioners name them: one per seed, truncated, or spherically interpolated between two seeds.

- A seed's latent is drawn from its own CPU generator seeded with it, `torch.randn(z_dim,
  generator=torch.Generator().manual_seed(seed))`, never from a batch draw, so seed 7 gives the same
  image whatever else is drawn with it, in any batch size, on any machine (CPU Mersenne Twister).
- Truncation ψ in (0, 1] keeps the central ψ of each component's standard normal mass: a component
  beyond the threshold τ = Φ⁻¹((1 + ψ) / 2) is resampled from N(0, 1) restricted to [-τ, τ] (by the
  inverse CDF, one draw from the seed's generator), the rest stay as they are. ψ = 1 is τ = ∞: nothing
  changes. τ(0.5) = 0.674, τ(0.68) = 0.994, τ(0.9) = 1.645, τ(0.95) = 1.960. Smaller ψ gives cleaner,
  more typical images and less variety: precision rises and recall falls, so FID against the real
  data rises (gets worse) as ψ shrinks; score FID without truncation.
- Spherical interpolation (slerp, Shoemake 1985; White 2016 for GAN latents) follows the great circle
  between two latents, keeping the norm a Gaussian latent typically has where a straight line would
  pass through the improbable region near the origin.
"""

from __future__ import annotations

import math
import statistics

import torch

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64 bits; seeds stay positive int64 (the proto's)


class SamplingError(ValueError):
    """A bad sampling choice (seeds, truncation, frames, weights); `field` names it, str() says what is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_seeds(text: str, field: str = "seeds", limit: int | None = None) -> list[int]:
    """Return the seeds of a list such as '0-63' or '1,5,9-12' (ranges inclusive, order kept); SamplingError if bad."""
    text = (text or "").strip()
    if not text:
        raise SamplingError(field, "is empty; give seeds such as 0-63 or 1,5,9")
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        low_text, dash, high_text = part.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if dash else low
        except ValueError:
            raise SamplingError(field, f"{part!r} is not a seed or a range (e.g. 0-63 or 1,5,9)") from None
        if not 0 <= low <= MAX_SEED or not 0 <= high <= MAX_SEED:
            raise SamplingError(field, f"{part!r}: seeds lie in 0..{MAX_SEED}")
        if high < low:
            raise SamplingError(field, f"{part} is empty (a range runs low-high)")
        if limit is not None and len(seeds) + high - low + 1 > limit:
            raise SamplingError(field, f"{text!r} names more than {limit} seeds")
        seeds.extend(range(low, high + 1))
    return seeds


def truncation_threshold(psi: float | None) -> float:
    """Return τ = Φ⁻¹((1 + ψ) / 2), the largest |component| truncation ψ keeps (inf for None or ψ = 1)."""
    if psi is None or psi == 1.0:
        return math.inf
    check_truncation(psi)
    return statistics.NormalDist().inv_cdf((1.0 + psi) / 2.0)


def check_truncation(psi: float, field: str = "truncation") -> None:
    """Raise a SamplingError naming `field` unless 0 < psi <= 1."""
    if not (isinstance(psi, (int, float)) and 0.0 < psi <= 1.0):  # NaN fails both comparisons
        raise SamplingError(field, f"must be in (0, 1] (the share of each latent component's normal mass kept; "
                                   f"1 = no truncation), got {psi}")  # fmt: skip


def truncate_(z: torch.Tensor, psi: float | None, generator: torch.Generator) -> torch.Tensor:
    """Resample in place the components of `z` beyond τ(psi) from N(0, 1) on [-τ, τ]; return z.

    The replacements come from `generator` (one uniform draw per replaced component, by the inverse CDF),
    so a seed's truncated latent is as reproducible as its plain one.
    """
    tau = truncation_threshold(psi)
    if math.isinf(tau):
        return z
    outside = z.abs() > tau
    count = int(outside.sum())
    if count:
        u = torch.rand(count, dtype=torch.float64, generator=generator, device=z.device)
        low = statistics.NormalDist().cdf(-tau)  # Φ(-τ); the kept mass [Φ(-τ), Φ(τ)] is ψ wide
        values = torch.special.ndtri(low + u * (1.0 - 2.0 * low))
        z[outside] = values.to(z.dtype)
    return z.clamp_(-tau, tau)  # float32 rounding of a value at τ never leaves [-τ, τ]


def seed_latent(seed: int, z_dim: int, psi: float | None = None) -> torch.Tensor:
    """Return seed's latent [z_dim] (float32, CPU): torch.randn from a generator seeded with it, truncated by psi."""
    generator = torch.Generator().manual_seed(int(seed))
    return truncate_(torch.randn(z_dim, generator=generator), psi, generator)


def seed_latents(seeds, z_dim: int, psi: float | None = None) -> torch.Tensor:
    """Return the latents of `seeds` stacked [len(seeds), z_dim], each from its own seed (see seed_latent)."""
    if not len(seeds):
        return torch.empty(0, z_dim)
    return torch.stack([seed_latent(seed, z_dim, psi) for seed in seeds])


def slerp(a: torch.Tensor, b: torch.Tensor, frames: int) -> torch.Tensor:
    """Return `frames` latents [frames, z_dim] on the great circle from a to b (both ends included), float32.

    The angle is that between the two directions; the norm moves as sin-weighted sums of the two norms.
    Nearly parallel latents (angle < 1e-6) are interpolated linearly, where slerp's formula is 0/0.
    """
    if frames < 2:
        raise SamplingError("frames", f"got {frames}, expected at least 2 (both ends)")
    a64, b64 = a.double().flatten(), b.double().flatten()
    cosine = torch.dot(a64, b64) / (a64.norm() * b64.norm()).clamp_min(1e-300)
    omega = torch.arccos(cosine.clamp(-1.0, 1.0))
    t = torch.linspace(0.0, 1.0, frames, dtype=torch.float64)[:, None]
    if float(omega) < 1e-6:
        path = (1.0 - t) * a64 + t * b64
    else:
        path = (torch.sin((1.0 - t) * omega) * a64 + torch.sin(t * omega) * b64) / torch.sin(omega)
    path[0], path[-1] = a64, b64  # the ends are the seeds' own latents, bit for bit after the cast
    return path.float().reshape(frames, *a.shape)
