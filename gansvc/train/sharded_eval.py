"""FID feature statistics across ranks: the exact merge of every rank's FeatureStats, and a sharded evaluation
whose scores equal those of one process scoring all the images at once."""

from __future__ import annotations

import torch
import torch.distributed as dist


def merge_feature_stats(stats, context=None):
    """Return a FeatureStats holding every rank's rows (the same on every rank); `stats` is left unchanged.

    `context` is the run's gansvc.train.distributed.DistributedContext (None: the default process group).

    Uses Chan et al.'s pairwise formula as a sum over ranks: the global count and mean come from an
    all-reduce of (count, count * mean); the scatter matrix is Σ_r [M2_r + n_r (μ_r - μ)(μ_r - μ)ᵀ],
    a second all-reduce. That is exact in float64 and never forms Σxxᵀ - nμμᵀ, which loses digits when
    |μ| >> σ. Ranks with no rows take part with zeros.
    """
    from gansvc.metrics.fid import FeatureStats

    if (context is not None and not context.distributed) or (context is None and not _group_active()):
        return FeatureStats.from_state_dict(stats.state_dict(), device=stats.device)
    device = _collective_device()
    local_dim = stats.dim or 0
    meta = torch.tensor([local_dim], dtype=torch.int64, device=device)
    dist.all_reduce(meta, op=dist.ReduceOp.MAX)
    dim = int(meta.item())
    if dim == 0:
        return FeatureStats(device=stats.device)
    if local_dim not in (0, dim):
        raise ValueError(f"feature dimensions differ across ranks: this rank has {local_dim}, another {dim}")
    count = float(stats.count)
    zeros = {"dtype": torch.float64, "device": device}
    mean = stats.state_dict()["mean"].to(device) if stats.count else torch.zeros(dim, **zeros)
    m2 = stats.state_dict()["m2"].to(device) if stats.count else torch.zeros(dim, dim, **zeros)
    first = torch.cat([torch.tensor([count], dtype=torch.float64, device=device), mean * count])
    dist.all_reduce(first, op=dist.ReduceOp.SUM)
    total = first[0].item()
    if total == 0:
        return FeatureStats(dim, device=stats.device)
    global_mean = first[1:] / total
    delta = mean - global_mean
    scatter = m2 + count * torch.outer(delta, delta)
    dist.all_reduce(scatter, op=dist.ReduceOp.SUM)
    state = {"count": int(round(total)), "mean": global_mean, "m2": scatter}
    return FeatureStats.from_state_dict(state, device=stats.device)


def _group_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device() -> torch.device:
    """Return where tensors of the default group's collectives must live (the current GPU for NCCL)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def evaluate_sharded(
    fake: torch.Tensor,
    context,
    real: str = "fashion-mnist:test",
    extractor: str = "fmnist-cnn",
    data_root=None,
    device="cpu",
    *,
    is_splits: int = 10,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    image_size: int = 0,
) -> dict | None:
    """Return gansvc.metrics.evaluate's scores of the images every rank holds a shard of, on rank 0 (None elsewhere).

    `context` is the run's gansvc.train.distributed.DistributedContext.

    Each rank extracts the features of its own images; FID comes from FeatureStats merged across the
    ranks (merge_feature_stats), the Inception Score and KID from the logits and feature rows gathered
    to rank 0 in rank order, so the scores equal those of one process scoring all the images at once.
    """
    from gansvc.metrics.evaluate import get_extractor
    from gansvc.metrics.fid import FeatureStats, frechet_distance
    from gansvc.metrics.inception_score import inception_score
    from gansvc.metrics.kid import kernel_inception_distance
    from gansvc.metrics.reference import real_reference

    net = get_extractor(extractor, device)
    features, logits = net(fake) if fake.shape[0] else _empty_features(net)
    merged = merge_feature_stats(FeatureStats(net.feature_dim).update(features.double()), context)
    all_logits = context.all_gather_rows(logits)
    all_features = context.all_gather_rows(features)
    if not context.is_main:
        return None
    if merged.count < 2:
        raise ValueError(f"FID needs at least 2 generated samples, got {merged.count}")
    reference = real_reference(real, net, data_root, image_size=image_size)
    fid = frechet_distance(reference.stats, merged.statistics())
    is_mean, is_std = inception_score(all_logits, splits=min(is_splits, merged.count))
    kid_mean = kid_std = None
    if reference.kid_features is not None:
        kid_mean, kid_std = kernel_inception_distance(
            reference.kid_features, all_features, kid_subsets, kid_subset_size, seed
        )
    return {
        "fid": fid, "is_mean": is_mean, "is_std": is_std, "kid_mean": kid_mean, "kid_std": kid_std,
        "n_real": reference.count, "n_fake": merged.count, "extractor": extractor,
    }  # fmt: skip


def _empty_features(net) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(0, net.feature_dim), torch.empty(0, net.num_classes)
