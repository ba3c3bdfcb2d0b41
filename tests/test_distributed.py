"""Training on several processes (torch.distributed under torchrun, gloo on this CPU): the sharding helpers, the
collectives, 2 ranks against 1 rank, resuming across world sizes, a failing rank, and two "nodes" on 127.0.0.1.

Tolerance for "2 ranks equal 1 rank": every logged statistic agrees within atol 1e-4 + rtol 1e-4 at every step.
The two runs compute the same global batch from the same data and noise, so they differ only by float32 rounding:
DDP adds two half-batch gradients where one process sums the whole batch in another order (~1e-7 relative), and
Adam's first steps turn near-zero gradient components (rounding noise) into lr-sized steps, which moves the
losses by ~1e-5: measured at most 3.3e-5 over 12 steps of RECIPE, flat after step 2. The smallest real mistake,
two ranks reading the same shard of each batch, moves the D loss by 7e-3 at the first step, 70x the tolerance.
A Wasserstein critic with a gradient penalty amplifies rounding much faster (1e-7 relative noise injected into
one process's gradients moves its statistics by 1e-3 within 5 steps; 2 ranks against 1 process moved G's loss by
1.6e-4 within 3 steps, with spectral norm), so that recipe is compared against one process that computes the same
arithmetic: the global batch's gradient as the sum of two half-batch gradients (accumulate = 2, the penalty's
mixing weights drawn for the whole batch and sliced, as the ranks slice them). Spectral norm is off there, since
under accumulation its power iteration runs once per micro-batch forward (a different sigma, by design), and the
two runs agree within 4.5e-8 over 8 steps, where ranks reading the same rows of the mixing weights differ by 4e-2
(test_gradient_penalty_recipe_matches_its_two_half_batches).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from gansvc.runtime import events as ev
from gansvc.train import TrainSpec, Trainer
from gansvc.train import distributed
from gansvc.train.batches import DeviceBatches
from gansvc.train.errors import DistributedRunFailed, FailureKind, TrainingDiverged, failure_kind
from gansvc.train.launch import LaunchConfig, LaunchResult, RankFailure, launch
from gansvc.train.spec import SpecError

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ATOL = RTOL = 1e-4
# spectral norm (power iterations on every rank), two D steps per G step (the shared noise stream) and EMA;
# the optimiser is pinned (the tolerance was measured with it), not left to the trainer's defaults
RECIPE = {
    "model": "mlp", "loss": "hinge", "spectral_norm": True, "n_critic": 2, "ema_decay": 0.99, "batch_size": 16,
    "mlp_hidden": 64, "z_dim": 16, "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5, "beta2": 0.999, "log_every": 1,
    "sample_every": 0, "eval_samples": 0, "checkpoint_every": 0, "tensorboard": False, "threads": 1,
}  # fmt: skip
# spectral norm off: see the module docstring
GP_RECIPE = {**RECIPE, "loss": "wasserstein", "gradient_penalty": 10.0, "spectral_norm": False}
STATS = ("d_loss", "g_loss", "d_real", "d_fake", "d_accuracy", "g_grad_norm", "d_grad_norm")


def rank_env(**extra) -> dict[str, str]:
    """The ranks' environment: one thread each, this checkout and the tests folder importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GANSVC_KERNELS=os.environ.get("GANSVC_KERNELS", "ref"))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def train_args(run_dir: Path, steps: int, recipe=RECIPE) -> list[str]:
    """`gansvc train` options for `recipe` and `steps` into run_dir."""
    args = []
    for key, value in recipe.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args + ["--steps", str(steps), "--out", str(run_dir), "--quiet"]


def gansvc(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the gansvc command line in a subprocess; return it finished."""
    return subprocess.run(
        [sys.executable, "-m", "gansvc", *args], env=rank_env(), capture_output=True, text=True, timeout=timeout
    )


def train_records(run_dir: Path) -> dict[int, dict]:
    """Return metrics.jsonl's train records by step."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if r["kind"] == "train"}


def assert_same_training(ours: dict[int, dict], reference: dict[int, dict], steps, stats=STATS) -> None:
    """Assert that the logged statistics of `steps` agree within the stated tolerance."""
    for step in steps:
        got = torch.tensor([ours[step][k] for k in stats], dtype=torch.float64)
        want = torch.tensor([reference[step][k] for k in stats], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m: f"step {step}: {m} ({stats})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Return whether pid is a live (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def single_rank_reference(tmp_path_factory) -> dict[int, dict]:
    """12 steps of RECIPE in one process (this one), logged every step."""
    run_dir = tmp_path_factory.mktemp("one-rank")
    Trainer(TrainSpec.from_dict({**RECIPE, "steps": 12}), run_dir).run()
    return train_records(run_dir)


# ---------------------------------------------------------------------- helpers, in this process
@pytest.mark.parametrize("total", [0, 1, 7, 64, 1001])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shard_bounds_split_everything_once_and_evenly(total, world):
    bounds = [distributed.shard_bounds(total, rank, world) for rank in range(world)]
    covered = [i for start, stop in bounds for i in range(start, stop)]
    assert covered == list(range(total))  # contiguous, in rank order, nothing twice
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_local_batch_size_names_the_setting_when_uneven():
    assert distributed.local_batch_size(64, 4) == 16
    with pytest.raises(SpecError, match=r"batch_size: the global batch 30 does not divide among 4"):
        distributed.local_batch_size(30, 4)


def test_world_from_torchrun_environment():
    assert distributed.world_from_env({}) == distributed.WorldInfo()
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"}
    world = distributed.world_from_env(env)
    assert (world.rank, world.world_size, world.local_rank, world.local_world_size, world.node_rank) == (3, 4, 1, 2, 1)
    assert world.distributed and not world.is_main
    with pytest.raises(SpecError, match="nproc: torchrun's environment is inconsistent: RANK=4 and WORLD_SIZE=4"):
        distributed.world_from_env({**env, "RANK": "4"})
    with pytest.raises(SpecError, match="LOCAL_RANK='x'"):
        distributed.world_from_env({**env, "LOCAL_RANK": "x"})


def test_device_per_rank():
    two = distributed.WorldInfo(rank=1, world_size=2, local_rank=1, local_world_size=2)
    assert distributed.device_for_rank("cpu", two) == torch.device("cpu")
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for(torch.device("cuda", 1)) == "nccl"
    with pytest.raises(SpecError, match=r"device: 'cuda:1' names one GPU, but 2 ranks run on this node"):
        distributed.device_for_rank("cuda:1", two)
    if torch.cuda.is_available():
        assert distributed.device_for_rank("auto", two) == torch.device("cuda", 1)
    else:
        assert distributed.device_for_rank("auto", two) == torch.device("cpu")
        with pytest.raises(SpecError, match="device: 'cuda' asked for, but no CUDA device"):
            distributed.device_for_rank("cuda", two)


@pytest.mark.parametrize("world", [2, 4])
def test_rank_shards_of_batches_are_the_single_process_batches(world):
    data = torch.arange(40 * 3, dtype=torch.uint8).reshape(40, 1, 3)
    single = DeviceBatches(data, 8, seed=5, device=torch.device("cpu"))
    ranks = [DeviceBatches(data, 8, seed=5, device=torch.device("cpu"), rank=r, world_size=world) for r in range(world)]
    for _ in range(12):  # across two epoch boundaries (5 batches per epoch)
        whole = single.next()
        parts = [r.next() for r in ranks]
        assert all(p.shape[0] == 8 // world for p in parts)
        assert torch.equal(torch.cat(parts), whole)
    # the state is world-size independent: a 2-rank state continues a 1-rank reader exactly
    resumed = DeviceBatches(data, 8, seed=0, device=torch.device("cpu"))
    resumed.load_state_dict(ranks[0].state_dict())
    assert torch.equal(resumed.next(), single.next())
    with pytest.raises(SpecError, match="batch_size: the global batch 8 does not divide among 3"):
        DeviceBatches(data, 8, seed=0, device=torch.device("cpu"), rank=0, world_size=3)


def test_generate_part_is_that_slice_of_the_whole():
    from gansvc.models.mlp import MLPGenerator
    from gansvc.train.sampling import generate

    torch.manual_seed(0)
    generator = MLPGenerator(8, (1, 4, 4), 16)
    whole = generate(generator, 23, seed=3, batch_size=5)
    parts = [generate(generator, 23, seed=3, batch_size=5, part=distributed.shard_bounds(23, r, 3)) for r in range(3)]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="part must be"):
        generate(generator, 23, part=(5, 30))


def test_gradient_penalty_of_rank_slices_averages_to_the_global_one():
    from gansvc.train.regularisers import gradient_penalty

    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    real, fake = torch.randn(6, 3, 4, dtype=torch.float64), torch.randn(6, 3, 4, dtype=torch.float64)
    critic = critic.double()
    whole = gradient_penalty(critic, real, fake, 10.0, torch.Generator().manual_seed(9))
    halves = [
        gradient_penalty(critic, real[i : i + 3], fake[i : i + 3], 10.0, torch.Generator().manual_seed(9), 6, i)
        for i in (0, 3)
    ]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole, rtol=1e-12, atol=0)


def test_spec_takes_nproc_and_wants_a_global_batch_that_divides():
    assert TrainSpec.from_dict({"steps": 4, "nproc": 4, "batch_size": 64}).nproc == 4
    with pytest.raises(SpecError, match=r"batch_size: the global batch 30 does not divide among nproc=4"):
        TrainSpec.from_dict({"steps": 4, "nproc": 4, "batch_size": 30})
    with pytest.raises(SpecError, match=r"device: 'cuda:1' names one GPU, but nproc=2 processes need one each"):
        TrainSpec.from_dict({"steps": 4, "nproc": 2, "device": "cuda:1"})


def test_trainer_outside_torchrun_refuses_several_processes(tmp_path):
    with pytest.raises(SpecError, match=r"nproc: 2 processes asked for, but this process was not started by torchrun"):
        Trainer(TrainSpec.from_dict({**RECIPE, "steps": 2, "nproc": 2}), tmp_path).run()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_sampling_copy_drops_sync_batchnorm_and_keeps_the_function():
    from gansvc.models.dcgan import DCGANGenerator

    torch.manual_seed(0)
    plain = DCGANGenerator(8, 1, 28, 8)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(DCGANGenerator(8, 1, 28, 8))
    synced.load_state_dict(plain.state_dict())
    copy = distributed.without_sync_batchnorm(synced)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in copy.modules())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())  # the original is untouched
    z = torch.randn(16, 8)
    torch.testing.assert_close(copy.train()(z), plain.train()(z))  # batch statistics, one process
    torch.testing.assert_close(copy.eval()(z), plain.eval()(z))


def test_launch_config_checks_and_torchrun_options():
    assert "--standalone" in LaunchConfig(2).torchrun_args()
    multi = LaunchConfig(1, nnodes="2", rdzv_endpoint="10.0.0.1:29400", rdzv_id="run7").validate().torchrun_args()
    assert {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29400", "--rdzv-id=run7"} <= set(multi)
    # a static rendezvous (the Ray backend): node 1 of 2, node 0 hosts the store and global rank 0
    static = LaunchConfig(1, nnodes="2", rdzv_endpoint="10.0.0.1:29400", node_rank=1).validate().torchrun_args()
    assert {"--nnodes=2", "--rdzv-backend=static", "--node-rank=1", "--master-addr=10.0.0.1",
            "--master-port=29400"} <= set(static)  # fmt: skip
    for config, named in [
        (LaunchConfig(1, nnodes="2", rdzv_endpoint="h:1", node_rank=2), "--node-rank"),
        (LaunchConfig(1, nnodes="1:2", rdzv_endpoint="h:1", node_rank=0), "--node-rank"),
        (LaunchConfig(0), "--nproc-per-node"),
        (LaunchConfig(2, nnodes="3:2", rdzv_endpoint="h:1"), "--nnodes"),
        (LaunchConfig(2, nnodes="2"), "--rdzv-endpoint"),
        (LaunchConfig(2, nnodes="2", rdzv_endpoint="nohost"), "--rdzv-endpoint"),
    ]:
        with pytest.raises(ValueError, match=named):
            config.validate()
    assert RankFailure(1, 2, "UsageError", "--dataset: not found").describe() == (
        "rank 1 failed (exit code 2): UsageError: --dataset: not found"
    )
    assert RankFailure(0, -9).describe() == "rank 0 was killed by SIGKILL"


def test_the_cause_of_a_failed_run_is_not_the_error_it_provoked_in_other_ranks(tmp_path):
    from gansvc.train.launch import _first_failure

    (tmp_path / "failures").mkdir()

    def record(rank, when, message, error="RuntimeError", code=1, kind="error"):
        kind = "peer_lost" if distributed.is_peer_failure(None, message) else kind
        record = {"rank": rank, "time": when, "message": message, "error": error, "exit_code": code, "kind": kind}
        (tmp_path / "failures" / f"rank_{rank}.json").write_text(json.dumps(record))

    # rank 2 was killed (no record); rank 0 then lost its peer, rank 1 was terminated by torchrun's teardown
    # (in the same whole second torchrun stamps its failures with): the cause is rank 2
    record(0, 100.0, "[pair.cc:561] Connection closed by peer [127.0.0.1]:15249")
    (tmp_path / "agent.json").write_text(json.dumps({"failures": [
        {"rank": 0, "exit_code": 1, "time": 100, "message": ""},
        {"rank": 1, "exit_code": -15, "time": 100, "message": ""},
        {"rank": 2, "exit_code": -9, "time": 100, "message": "most likely the out-of-memory killer"}]}))  # fmt: skip
    cause = _first_failure(tmp_path)
    assert (cause.rank, cause.exit_code) == (2, -9)
    assert cause.describe() == "rank 2 was killed by SIGKILL: most likely the out-of-memory killer"
    # a rank's own error beats both, even when recorded later than a lost-peer error
    record(3, 101.0, "CUDA out of memory", error="OutOfMemoryError", kind="gpu_out_of_memory")
    assert (_first_failure(tmp_path).rank, _first_failure(tmp_path).kind) == (3, FailureKind.GPU_OUT_OF_MEMORY)
    # the earliest of several causes
    record(1, 100.5, "--dataset: no such folder", error="UsageError", code=2)
    assert (_first_failure(tmp_path).rank, _first_failure(tmp_path).exit_code) == (1, 2)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--nproc-per-node", "2", "--nproc", "4"], "--nproc-per-node: 2 contradicts --nproc 4"),
        (["--nproc-per-node", "2", "--batch-size", "15"], "--batch-size: the global batch 15 does not divide"),
        (["--nproc-per-node", "0"], "--nproc-per-node: got 0"),
        (["--nproc-per-node", "1", "--nnodes", "2"], "--rdzv-endpoint"),
    ],
)
def test_cli_refuses_bad_launches_before_starting_anything(tmp_path, capsys, argv, named):
    from gansvc.cli import main

    assert main(["train", "--model", "mlp", "--steps", "2", "--out", str(tmp_path / "run"), *argv]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- several processes (torchrun, gloo)
def test_collectives_against_one_process_references(tmp_path, monkeypatch):
    out = tmp_path / "checks.json"
    scratch = tmp_path / "tmp"  # the temp directory of this process, torchrun and the ranks
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = launch(LaunchConfig(2), ["collectives", str(out)], module="distributed_programs",
                    env=rank_env(GANSVC_CACHE_DIR=str(tmp_path / "cache"), TMPDIR=str(scratch)))  # fmt: skip
    assert result.exit_code == 0, result
    assert list(scratch.iterdir()) == []  # the launch's control folder and torchrun's log folders are gone
    checks = json.loads(out.read_text())
    assert checks["backend"] == "gloo"
    for case in ("uneven", "empty_rank", "large_mean"):  # vs NumPy float64 over all rows
        merged = checks[case]
        assert merged["count"] == merged["expected_count"] and merged["local_count_kept"]
        scale = 1e4 if case == "large_mean" else 1.0
        assert merged["mean_error"] <= 1e-12 * scale and merged["cov_error"] <= 1e-12 * scale, (case, merged)
    assert checks["mean"] == [1.5, 5.0]
    assert checks["stop"] == [distributed.STOP_REQUESTED, distributed.STOP_BUDGET, distributed.STOP_NONE]
    assert checks["broadcast"] == 0
    assert checks["gathered"] == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    sharded, whole = checks["sharded"], checks["whole"]
    assert sharded["n_fake"] == whole["n_fake"] == 400
    for key in ("fid", "is_mean", "is_std", "kid_mean", "kid_std"):  # torch-fidelity's 1e-6 relative
        assert sharded[key] == pytest.approx(whole[key], rel=1e-6), key


def test_two_ranks_match_one_and_checkpoints_move_between_world_sizes(tmp_path, single_rank_reference):
    """1 rank for 4 steps, then `gansvc train --nproc-per-node 2` resumes to 8, then 1 rank resumes to 12: every
    step matches 12 steps on 1 rank."""
    run_dir = tmp_path / "run"
    Trainer(TrainSpec.from_dict({**RECIPE, "steps": 4}), run_dir).run()
    two = gansvc("train", "--nproc-per-node", "2", *train_args(run_dir, 8))
    assert two.returncode == 0, two.stderr[-3000:]
    spec = json.loads((run_dir / "spec.json").read_text())
    assert spec["nproc"] == 2 and spec["batch_size"] == 16  # the global batch
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["world_size"], summary["resumed_from"], summary["step"]) == (2, 4, 8)
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert state["world_size"] == 2 and not any(k.startswith("module.") for k in state["G"])
    # only rank 0 wrote: one record per step, one checkpoint event's worth of files
    assert sorted(train_records(run_dir)) == list(range(1, 9))
    Trainer(TrainSpec.from_dict({**RECIPE, "steps": 12}), run_dir).run()
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from"] == 8
    assert_same_training(train_records(run_dir), single_rank_reference, range(1, 13))


@pytest.mark.slow
def test_two_ranks_accumulating_micro_batches_match_one_on_a_schedule(tmp_path):
    """Issue 21: each rank splits its rows into `accumulate` micro-batches and the ranks average the gradients
    once, at the last; the learning rates follow the schedule on every rank alike. Without spectral norm: its power
    iteration runs once per micro-batch forward, so rows share a sigma with other rows on 1 rank than on 2 (measured:
    grad norms 1e-3 apart from the first step with it, 3e-7 without)."""
    recipe = {**RECIPE, "accumulate": 2, "lr_schedule": "cosine", "lr_warmup_steps": 2, "spectral_norm": False}
    Trainer(TrainSpec.from_dict({**recipe, "steps": 6}), tmp_path / "one").run()
    two = gansvc("train", "--nproc-per-node", "2", *train_args(tmp_path / "two", 6, recipe))
    assert two.returncode == 0, two.stderr[-3000:]
    ours, reference = train_records(tmp_path / "two"), train_records(tmp_path / "one")
    assert_same_training(ours, reference, range(1, 7), STATS + ("lr_g", "lr_d"))


def test_a_failing_rank_fails_the_run_with_its_error_and_leaves_no_process(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    started = time.monotonic()
    events = []
    result = launch(
        LaunchConfig(2), ["fail", "1", "3", "--", *train_args(tmp_path / "run", 500)], module="distributed_programs",
        env=rank_env(TEST_PID_DIR=str(pids)), on_event=events.append,
    )  # fmt: skip
    assert result.exit_code == 1
    assert (result.failure.rank, result.failure.error, result.failure.kind) == (1, "RuntimeError", FailureKind.ERROR)
    assert failure_kind(DistributedRunFailed(result)) is FailureKind.ERROR
    # rank 0's events came over the side channel decoded to the typed events it sent: it started at step 0
    assert events and all(isinstance(e, ev.Event) for e in events) and result.events == len(events)
    assert [e.step for e in events if isinstance(e, ev.Progress)][0] == 0
    assert result.failure.message == "injected failure on rank 1 at step 3"
    assert "failing_step" in result.failure.traceback
    # rank 0 was blocked in the step's all-reduce: torchrun tore it down, nothing was left to sweep
    assert time.monotonic() - started < 120
    rank_pids = [int(p.name) for p in pids.iterdir()]
    assert len(rank_pids) == 2 and not any(alive(pid) for pid in rank_pids)
    assert not (tmp_path / "run" / "checkpoints").exists()  # no checkpoint of a half-done step


@pytest.mark.slow
def test_two_nodes_on_localhost_with_a_c10d_rendezvous(tmp_path, single_rank_reference):
    """Two torchrun processes, one rank each, meet at 127.0.0.1:PORT like two machines would."""
    endpoint = f"127.0.0.1:{free_port()}"
    run_dir = tmp_path / "run"
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "gansvc", "train", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-endpoint",
             endpoint, "--rdzv-id", f"test-{os.getpid()}", "--local-addr", "127.0.0.1",
             *train_args(run_dir if node == 0 else tmp_path / f"node{node}", 6)],
            env=rank_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for node in range(2)
    ]
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    # rank 0 is on whichever node the rendezvous made first; it alone wrote a run directory
    written = [d for d in (run_dir, tmp_path / "node1") if (d / "summary.json").exists()]
    assert len(written) == 1
    assert json.loads((written[0] / "summary.json").read_text())["world_size"] == 2
    assert_same_training(train_records(written[0]), single_rank_reference, range(1, 7))


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_at_one_step_with_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "gansvc", "train", "--nproc-per-node", "2", *train_args(run_dir, 100000)],
        env=rank_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not (run_dir / "metrics.jsonl").exists() or len(train_records(run_dir)) < 3:
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped"
    assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["step"] == summary["step"]
    assert "stopped" in out


@pytest.mark.slow
def test_gradient_penalty_recipe_matches_its_two_half_batches(tmp_path):
    """The penalty's mixing weights are drawn for the global batch and sliced per rank: 2 ranks train as one process
    that sums the same two half-batch gradients (see the module docstring for why that reference)."""
    Trainer(TrainSpec.from_dict({**GP_RECIPE, "accumulate": 2, "steps": 8}), tmp_path / "one").run()
    two = gansvc("train", "--nproc-per-node", "2", *train_args(tmp_path / "two", 8, GP_RECIPE))
    assert two.returncode == 0, two.stderr[-3000:]
    stats = ("d_loss", "g_loss", "d_real", "d_fake", "gradient_penalty", "g_grad_norm", "d_grad_norm")
    assert_same_training(train_records(tmp_path / "two"), train_records(tmp_path / "one"), range(1, 9), stats)


def test_a_rank_failure_crosses_the_process_boundary_as_a_kind_code(tmp_path, monkeypatch):
    """record_failure (a rank) writes a FailureKind code; the launcher reads it back as the same kind, so the
    service tells a diverged or out-of-memory rank apart without the exception's class name."""
    from gansvc.train.launch import _first_failure
    from gansvc.train.sidechannel import ENV_LAUNCH_DIR, record_failure

    monkeypatch.setenv(ENV_LAUNCH_DIR, str(tmp_path))
    cases = [
        (0, TrainingDiverged("training diverged at step 7: d_loss became NaN/Inf"), FailureKind.DIVERGED),
        (1, MemoryError(), FailureKind.HOST_OUT_OF_MEMORY),
        (2, SpecError("dataset", "no such folder"), FailureKind.INVALID_SPEC),
        (3, RuntimeError("[pair.cc:561] Connection closed by peer [127.0.0.1]:1"), FailureKind.PEER_LOST),
    ]
    for rank, error, kind in cases:
        monkeypatch.setenv("WORLD_SIZE", "4")
        monkeypatch.setenv("RANK", str(rank))
        path = record_failure(1, error)
        assert json.loads(path.read_text())["kind"] == kind.value
        assert record_failure(1, ValueError("later")) == path  # the first failure a rank records is kept
    # the earliest cause, not the lost peer; its kind survives the trip
    failure = _first_failure(tmp_path)
    assert (failure.rank, failure.kind, failure.error) == (0, FailureKind.DIVERGED, "TrainingDiverged")
    failed = DistributedRunFailed(LaunchResult(exit_code=1, failure=failure))
    assert failed.kind is failure_kind(failed) is FailureKind.DIVERGED
    assert str(failed).startswith("rank 0 failed (exit code 1): TrainingDiverged: training diverged at step 7")
    assert failure_kind(DistributedRunFailed(LaunchResult(exit_code=1))) is FailureKind.ERROR
    # a rank's own error is the job's failure; a rank (or the agent) killed by a signal is a death, retried
    assert not failed.process_died and not DistributedRunFailed(LaunchResult(exit_code=1)).process_died
    killed = RankFailure(rank=1, exit_code=-signal.SIGKILL, message="most likely the out-of-memory killer")
    assert DistributedRunFailed(LaunchResult(exit_code=1, failure=killed)).process_died
    assert DistributedRunFailed(LaunchResult(exit_code=-signal.SIGKILL)).process_died
    # a code a newer version wrote is read as a plain error, not a crash
    assert FailureKind.parse("some_future_kind") is FailureKind.ERROR
