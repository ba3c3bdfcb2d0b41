"""Inception Score: exp(E_x KL(p(y|x) || p(y))) from a classifier's logits, over splits."""

from __future__ import annotations

import numpy as np
import torch


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """Return (mean, std) of the Inception Score over `splits` consecutive parts of the samples.

    Each part's score is exp(mean_x KL(p(y|x) || p(y))) with p(y) the part's mean prediction; the std
    is the population std over the parts (as in the original implementation). Logits, not
    probabilities: log p(y|x) comes from log_softmax, so confident predictions do not underflow.
    """
    scores = inception_score_per_split(logits, splits)
    return float(np.mean(scores)), float(np.std(scores))


def inception_score_per_split(logits, splits: int = 10) -> np.ndarray:
    """Return the Inception Score of each of `splits` consecutive parts of the samples (float64)."""
    logits = logits if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [N, classes] with at least 2 classes, got shape {list(logits.shape)}")
    n = logits.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be between 1 and the number of samples ({n}), got {splits}")
    log_p = torch.log_softmax(logits.detach().to(torch.float64), dim=1)
    if not bool(torch.isfinite(log_p).all()):
        raise ValueError("logits contain NaN or Inf")
    scores = []
    for k in range(splits):
        part = log_p[k * n // splits : (k + 1) * n // splits]
        log_marginal = torch.logsumexp(part, dim=0) - np.log(part.shape[0])  # log of the mean of p(y|x)
        kl = (part.exp() * (part - log_marginal)).sum(dim=1)
        scores.append(float(torch.exp(kl.mean())))
    return np.asarray(scores)
