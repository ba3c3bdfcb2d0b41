"""Programs the distributed tests run on every rank under torchrun: `python -m distributed_programs NAME ARGS`.

collectives OUT.json      the collectives of gansvc.train.distributed against one-process references
fail RANK STEP -- ARGS    `gansvc train ARGS`, where rank RANK raises inside training step STEP
Each rank leaves its pid in $TEST_PID_DIR (if set), so a test can check that none outlives the run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _leave_pid() -> None:
    folder = os.environ.get("TEST_PID_DIR")
    if folder:
        Path(folder, str(os.getpid())).write_text(os.environ.get("RANK", "?"))


def collectives(out: str) -> int:
    import numpy
    import torch

    from gansvc.metrics import evaluate
    from gansvc.metrics.fid import FeatureStats
    from gansvc.train import distributed

    context = distributed.init("cpu")
    rank, world = context.world.rank, context.world.world_size
    assert world == 2, world
    checks: dict = {"backend": context.backend}

    # FeatureStats: uneven shares (including an empty one), and features with |mean| >> spread
    for name, sizes, offset in (("uneven", (3, 250), 0.0), ("empty_rank", (0, 40), 0.0), ("large_mean", (70, 90), 1e4)):
        rows = torch.randn(sum(sizes), 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64) + offset
        start = sum(sizes[:rank])
        mine = FeatureStats(6).update(rows[start : start + sizes[rank]])
        merged = distributed.merge_feature_stats(mine, context)
        whole = rows.numpy()
        checks[name] = {
            "count": merged.count,
            "expected_count": len(whole),
            "mean_error": float(abs(merged.mean().numpy() - whole.mean(0)).max()),
            "cov_error": float(abs(merged.covariance().numpy() - numpy.cov(whole, rowvar=False)).max()),
            "local_count_kept": mine.count == sizes[rank],
        }

    # statistics and control messages
    stats = torch.tensor([1.0 + rank, 10.0 * rank], dtype=torch.float64)
    checks["mean"] = context.all_reduce_mean(stats).tolist()
    checks["stop"] = [context.agree_stop(distributed.STOP_REQUESTED if rank == 1 else distributed.STOP_NONE),
                      context.agree_stop(distributed.STOP_BUDGET if rank == 0 else distributed.STOP_NONE),
                      context.agree_stop(distributed.STOP_NONE)]  # fmt: skip
    checks["broadcast"] = context.broadcast_object({"from": rank, "tensor": torch.arange(3) * (rank + 1)})["from"]
    checks["gathered"] = context.all_gather_rows(torch.full((rank + 1, 2), float(rank))).tolist()

    # FID / IS / KID from shards equal one process scoring all images
    images = torch.rand(400, 1, 28, 28, generator=torch.Generator().manual_seed(3)) * 2 - 1
    start, stop = distributed.shard_bounds(images.shape[0], rank, world)
    sharded = distributed.evaluate_sharded(images[start:stop], context, kid_subsets=10, kid_subset_size=100)
    if rank == 0:
        checks["sharded"] = sharded
        checks["whole"] = evaluate(images, kid_subsets=10, kid_subset_size=100)
        Path(out).write_text(json.dumps(checks))
    else:
        assert sharded is None
    context.barrier()
    context.close()
    return 0


def fail(fail_rank: int, fail_step: int, train_args: list[str]) -> int:
    from gansvc.train import distributed
    from gansvc.train.__main__ import main
    from gansvc.train.trainer import Trainer

    if distributed.world_from_env().rank == fail_rank:
        original = Trainer._train_step

        def failing_step(self):
            if self.step + 1 == fail_step:
                raise RuntimeError(f"injected failure on rank {fail_rank} at step {fail_step}")
            return original(self)

        Trainer._train_step = failing_step
    return main(train_args)


if __name__ == "__main__":
    _leave_pid()
    name, *rest = sys.argv[1:]
    if name == "collectives":
        sys.exit(collectives(rest[0]))
    if name == "fail":
        sys.exit(fail(int(rest[0]), int(rest[1]), rest[3:]))
    sys.exit(f"unknown program {name!r}")
