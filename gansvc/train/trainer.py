"""The training loop: `Trainer(spec, run_dir).run()` trains a GAN and writes everything a user watches.

Run directory (see CONTRACT): spec.json, metrics.jsonl, warnings.jsonl, summary.json,
samples/step_NNNNNNN.png + samples/latest.png, checkpoints/step_NNNNNNN.pt + checkpoints/latest.pt,
generator.pt, loss_curve.png, tensorboard/.

One generator step = n_critic discriminator steps, then one generator step. The generator runs
forward once per D step; the last fake batch is reused for the G step (G's weights have not
changed since it was produced, so the graph through G is still the right one; D is re-run with
its updated weights, exactly as a second G forward would give).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch

from gansvc.atomic import atomic_write_bytes, atomic_write_text
from gansvc.losses import discriminator_loss, generator_loss
from gansvc.train import checkpoints, distributed
from gansvc.train.batches import DeviceBatches
from gansvc.train.ema import EMA
from gansvc.train.sampling import sampling_model
from gansvc.train.optim import FusedAdam
from gansvc.train.monitor import FailureWatch, MetricsLog, TensorBoard, plot_loss_curve, plot_points
from gansvc.train.regularisers import gradient_penalty, r1_penalty
from gansvc.train.spec import SpecError, TrainSpec

FIXED_NOISE = 64  # samples in the grid drawn from fixed noise
COLLAPSE_CHECKS_FROM = 1000  # generator steps before the mode-collapse checks (diversity, class coverage) start
POINT_SAMPLES = 2500  # samples in a gaussian-mixture scatter plot and its ring metric (PacGAN's count)
# Settings that may change between a checkpoint and its resume (how long, how often, where);
# any other difference would make the resumed run a different experiment.
RESUMABLE_CHANGES = {
    "epochs", "steps", "max_minutes", "log_every", "sample_every", "eval_every", "eval_samples",
    "checkpoint_every", "keep_checkpoints", "tensorboard", "threads", "device", "data_root",
    "nproc",  # a checkpoint holds no per-rank state: N ranks' checkpoint resumes on M
}  # fmt: skip
_TRAIN_STATS = ("d_loss", "g_loss", "d_real", "d_fake", "d_accuracy")


class TrainingDiverged(RuntimeError):
    """A loss or statistic became NaN or infinite; training stops with no checkpoint of the bad state."""


def resolve_device(name: str) -> torch.device:
    """Return the torch.device for a spec's device setting (auto: CUDA when present, else CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError("device", f"{name!r} asked for, but no CUDA device is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SpecError("device", f"{name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def cpu_threads() -> int:
    """Return the number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Trainer:
    """Trains the GAN `spec` describes into `run_dir`, resuming from run_dir/checkpoints/latest.pt if present."""

    def __init__(
        self,
        spec: TrainSpec,
        run_dir: str | os.PathLike,
        on_event: Callable[[dict], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: bool = False,
        download: bool = False,
    ):
        self.spec = spec.validate()
        self.run_dir = Path(run_dir)
        self.on_event = on_event
        self.should_stop = should_stop
        self.progress = progress
        self.download = download
        self.warnings: list[dict] = []
        self.bar = None

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from gansvc.data import load_dataset
        from gansvc.models import build_discriminator, build_generator, has_batchnorm

        self.dist = self._join_ranks()
        spec = self.spec
        world = self.dist.world
        self.is_main = world.is_main
        self.device = self.dist.device
        # ranks on one node share its cores
        self.threads = spec.threads or max(1, cpu_threads() // world.local_world_size)
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        data = self._load_data(load_dataset)
        self.points = not hasattr(data, "images")
        tensor = data.points if self.points else data.images
        self.data_info = data
        if tensor.shape[0] < spec.batch_size:
            raise SpecError("batch_size", f"{spec.batch_size} is larger than the data set ({tensor.shape[0]} samples)")
        self.data_shape = tuple(tensor.shape[1:])
        if spec.model == "dcgan":
            from gansvc.models.dcgan import layout

            try:
                layout(self.data_shape[-1])
            except ValueError as error:
                raise SpecError("image_size", f"{error} (the data set's images are {self.data_shape[-1]} px)") from None

        torch.manual_seed(spec.seed)  # model initialisation and spectral-norm vectors (the same on every rank)
        self.G = build_generator(spec, self.data_shape).to(self.device)
        self.D = build_discriminator(spec, self.data_shape).to(self.device)
        # Without BatchNorm in D, real and fake go through D as one batch (one forward instead of two).
        self.joint_d = not has_batchnorm(self.D)
        # self.G / self.D are the plain modules (state, EMA, samples); the steps run G_train / D_train,
        # their DistributedDataParallel wrappers when several ranks take part.
        self.G_train, self.D_train = self._wrap(self.G), self._wrap(self.D)
        betas = (spec.beta1, spec.beta2)
        self.opt_g = FusedAdam(self.G.parameters(), lr=spec.lr_g, betas=betas)
        self.opt_d = FusedAdam(self.D.parameters(), lr=spec.lr_d, betas=betas)
        self.ema = EMA(self.G, spec.ema_decay) if spec.ema_decay > 0 else None
        self.batches = DeviceBatches(tensor, spec.batch_size, spec.seed, self.device, world.rank, world.world_size)
        # this rank's rows of every global batch: [batch_lo, batch_hi)
        self.batch_lo = world.rank * self.batches.local_batch_size
        self.batch_hi = self.batch_lo + self.batches.local_batch_size
        self.noise = torch.Generator(device=self.device).manual_seed(spec.seed + 1)
        fixed = torch.Generator().manual_seed(spec.seed + 2)
        count = POINT_SAMPLES if self.points else FIXED_NOISE
        self.fixed_noise = torch.randn(count, spec.z_dim, generator=fixed).to(self.device)
        if spec.steps:
            self.total_steps = spec.steps
        else:
            self.total_steps = max(1, round(spec.epochs * self.batches.batches_per_epoch / spec.n_critic))
        self.watch = FailureWatch(spec.loss)
        self.step = 0
        self.wall_before = 0.0  # wall-clock seconds of earlier sessions of this run
        self.train_seconds = 0.0  # seconds inside training steps, all sessions
        self.train_cpu_seconds = 0.0  # CPU seconds (all threads) inside training steps, this session
        self._reset_window()
        self.last_train: dict = {}
        self.last_eval: dict = {}
        self.checkpointed_step = -1
        self._sampler_cache: tuple[int, torch.nn.Module] | None = None
        self._eval_unavailable_warned = False

        # Rank 0 reads the checkpoint and hands it to the others: their nodes need not share its disk.
        resume_from = checkpoints.latest_checkpoint(self.run_dir) if self.is_main else None
        state = checkpoints.load_checkpoint(resume_from, map_location="cpu") if resume_from is not None else None
        resume_from, state = self.dist.broadcast_object((resume_from, state))
        if state is not None:
            self._resume(resume_from, state)
        self.resumed_from = self.step if resume_from is not None else None
        self._train_seconds_at_start = self.train_seconds
        if self.is_main:  # only rank 0 writes to the run directory
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "spec.json", json.dumps(spec.to_dict(), indent=2) + "\n")
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", self.resumed_from or 0)
            self.warning_log = MetricsLog(self.run_dir / "warnings.jsonl", self.resumed_from or 0)
        else:
            self.metrics = self.warning_log = _NoLog()
        self.warnings = [r for r in self.warning_log.records]
        self.tensorboard = TensorBoard(self.run_dir / "tensorboard", spec.tensorboard and self.is_main, self.step + 1)

    def _join_ranks(self) -> distributed.DistributedContext:
        """Join the process group when torchrun started several ranks; adopt its size as the spec's nproc."""
        try:
            context = distributed.init(self.spec.device)
        except SpecError:
            raise
        except ValueError as error:  # "setting: message" from the environment or the device of this rank
            field, _, message = str(error).partition(": ")
            raise SpecError(field if message else "device", message or str(error)) from None
        world = context.world
        try:
            if world.distributed:
                if self.spec.nproc != world.local_world_size:
                    self.spec = self.spec.with_overrides(nproc=world.local_world_size)
                distributed.local_batch_size(self.spec.batch_size, world.world_size)
            elif self.spec.nproc > 1:
                raise SpecError(
                    "nproc",
                    f"{self.spec.nproc} processes asked for, but this process was not started by torchrun; run "
                    f"`gansvc train --nproc-per-node {self.spec.nproc} ...` or "
                    f"`torchrun --nproc-per-node {self.spec.nproc} -m gansvc.train ...`",
                )
        except ValueError as error:
            context.close()
            if isinstance(error, SpecError):
                raise
            raise SpecError("batch_size", str(error).partition(": ")[2]) from None
        return context

    def _load_data(self, load_dataset):
        """Return the training data; with a download, one rank per node fetches it while the others wait."""
        spec = self.spec
        load = lambda download: load_dataset(  # noqa: E731
            spec.dataset, "train", spec.data_root or None, spec.image_size, download
        )
        if not (self.download and self.dist.distributed):
            return load(self.download)
        data = load(True) if self.dist.world.local_rank == 0 else None
        self.dist.barrier()
        return data if data is not None else load(False)

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Return `model` wrapped in DistributedDataParallel when several ranks take part, else `model`.

        Gradients are averaged over the ranks in backward; buffers (BatchNorm running statistics,
        spectral-norm power-iteration vectors) are sent from rank 0 before every forward. On GPUs,
        BatchNorm layers become SyncBatchNorm, so they normalise with the statistics of the global batch.
        """
        if not self.dist.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        from gansvc.models import has_batchnorm

        if self.device.type == "cuda" and has_batchnorm(model):
            # converts in place: the new layers share the old ones' parameters and buffers
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=True)

    def _autocast(self):
        """Return a fresh autocast context: bf16 for precision 'bf16', a no-op for fp32."""
        if self.spec.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _reset_window(self) -> None:
        width = len(_TRAIN_STATS) + (self.spec.gradient_penalty > 0) + (self.spec.r1_gamma > 0)
        self.window_sum = torch.zeros(width, device=getattr(self, "device", "cpu"), dtype=torch.float64)
        self.window_steps = 0
        self.window_seconds = 0.0

    # ------------------------------------------------------------------ one step
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

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        """Train to the end (or until should_stop / max_minutes); return the summary also written to summary.json."""
        started = time.perf_counter()
        threads_before = torch.get_num_threads()
        try:
            self._setup()
        except BaseException:
            torch.set_num_threads(threads_before)
            if getattr(self, "dist", None) is not None:
                self.dist.close()
            raise
        self.setup_seconds = time.perf_counter() - started  # data decoding, models, resume
        bar = None
        try:
            if self.progress and self.is_main:
                from tqdm import tqdm

                bar = tqdm(
                    total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                    desc=f"{self.spec.model} {self.spec.loss}",
                )  # fmt: skip
            self.bar = bar
            return self._loop()
        finally:
            torch.set_num_threads(threads_before)  # the thread count is process-wide: give it back
            if bar is not None:
                bar.close()
            self.metrics.close()
            self.warning_log.close()
            self.tensorboard.close()
            self.dist.close()

    def _loop(self) -> dict:
        spec = self.spec
        session_start = time.monotonic()
        budget = spec.max_minutes * 60.0
        check_every_step = self.device.type == "cpu"  # a per-step finiteness check costs a GPU sync elsewhere
        ended_by = "completed"
        self._event({"type": "progress", **self._progress_fields(0.0)})
        self._check_cpu_load()
        while self.step < self.total_steps:
            # the step's time includes agreeing on a stop: with several ranks that is a collective too
            started, cpu_started = time.perf_counter(), time.process_time()
            stop = distributed.STOP_NONE
            if self.should_stop is not None and self.should_stop():
                stop = distributed.STOP_REQUESTED
            elif budget and self.wall_before + time.monotonic() - session_start >= budget:
                stop = distributed.STOP_BUDGET
            stop = self.dist.agree_stop(stop)  # every rank stops at the same step
            if stop == distributed.STOP_REQUESTED:
                ended_by = "stopped"
                break
            if stop == distributed.STOP_BUDGET:
                ended_by = "max_minutes"
                break
            stats = self.dist.all_reduce_mean(self._train_step())  # the global batch's statistics
            self.window_sum += stats
            elapsed = time.perf_counter() - started
            self.window_seconds += elapsed
            self.train_seconds += elapsed
            self.train_cpu_seconds += time.process_time() - cpu_started
            self.window_steps += 1
            self.step += 1
            if check_every_step:
                self._check_finite()
            if self.bar is not None:
                self.bar.update(1)
            step = self.step
            if step % spec.log_every == 0 or step == self.total_steps:
                self._log(session_start)
            if spec.sample_every and step % spec.sample_every == 0 and self.is_main:
                self._samples()
            if spec.eval_every and step % spec.eval_every == 0 and step != self.total_steps:
                self._evaluate()
            if spec.checkpoint_every and step % spec.checkpoint_every == 0 and self.is_main:
                self._checkpoint(session_start)

        if ended_by == "stopped":
            if self.checkpointed_step != self.step and self.is_main:
                self._checkpoint(session_start)
        else:
            if self.window_steps:
                self._log(session_start)
            if (not (spec.sample_every and self.step % spec.sample_every == 0) or self.step == 0) and self.is_main:
                self._samples()
            if spec.eval_samples:
                self._evaluate()
            if self.checkpointed_step != self.step and self.is_main:
                self._checkpoint(session_start)
        if self.is_main:
            plot_loss_curve(self.metrics.records, self.run_dir / "loss_curve.png", f"{spec.model} / {spec.loss}")
        return self._summary(ended_by, session_start)

    def _check_cpu_load(self) -> None:
        """Warn when other processes already keep the cores busy: then each of torch's parallel regions waits
        for a descheduled thread, and training with several threads can be many times slower than with one."""
        if self.device.type != "cpu" or self.threads < 2 or not hasattr(os, "getloadavg"):
            return
        load, cores = os.getloadavg()[0], cpu_threads()
        if load + self.threads > cores + 0.5:
            self._warn(
                "cpu_oversubscribed",
                f"the CPU is busy (load {load:.1f} on {cores} cores) and training uses {self.threads} threads; "
                "threads=1 (--threads 1) may be much faster here (results are bit-identical only between runs "
                "with the same thread count)",
            )

    def _check_finite(self) -> None:
        if not bool(torch.isfinite(self.window_sum).all()):
            names = self._stat_names()
            bad = [n for n, v in zip(names, self.window_sum.tolist()) if not math.isfinite(v)]
            message = (
                f"training diverged at step {self.step}: {', '.join(bad)} became NaN/Inf; try lower learning "
                "rates, spectral_norm or a gradient penalty"
            )
            self._warn("diverged", message)
            raise TrainingDiverged(message)

    def _stat_names(self) -> list[str]:
        names = list(_TRAIN_STATS)
        if self.spec.gradient_penalty > 0:
            names.append("gradient_penalty")
        if self.spec.r1_gamma > 0:
            names.append("r1_penalty")
        return names

    # ------------------------------------------------------------------ what the user watches
    def _event(self, event: dict) -> None:
        if self.on_event is not None and self.is_main:
            self.on_event(event)

    def _warn(self, code: str, message: str) -> None:
        record = {"step": self.step, "code": code, "message": message}
        self.warnings.append(record)
        self.warning_log.append(record)
        self._event({"type": "warning", **record})
        if self.bar is not None:
            self.bar.write(f"warning [{code}] step {self.step}: {message}")

    def _progress_fields(self, images_per_sec: float) -> dict:
        done_this_session = self.step - (self.resumed_from or 0)
        per_step = self.train_seconds_session / done_this_session if done_this_session else 0.0
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.batches.epoch,
            "images_per_sec": images_per_sec,
            "eta_seconds": per_step * (self.total_steps - self.step),
            "d_loss": self.last_train.get("d_loss", float("nan")),
            "g_loss": self.last_train.get("g_loss", float("nan")),
        }

    @property
    def train_seconds_session(self) -> float:
        return self.train_seconds - self._train_seconds_at_start

    def _log(self, session_start: float) -> None:
        self._check_finite()
        spec = self.spec
        means = (self.window_sum / max(1, self.window_steps)).tolist()
        values = dict(zip(self._stat_names(), means))
        images = self.window_steps * spec.batch_size * spec.n_critic
        values["images_per_sec"] = images / self.window_seconds if self.window_seconds > 0 else 0.0
        values["g_grad_norm"] = _grad_norm(self.G)
        values["d_grad_norm"] = _grad_norm(self.D)
        self.last_train = values
        record = {
            "step": self.step, "kind": "train", "epoch": round(self.batches.epoch, 4),
            "time": round(self.wall_before + time.monotonic() - session_start, 3), **values,
        }  # fmt: skip
        self.metrics.append(record)
        self.tensorboard.scalars("train", values, self.step)
        self._event({"type": "metrics", "step": self.step, "values": dict(values)})
        self._event({"type": "progress", **self._progress_fields(values["images_per_sec"])})
        if self.bar is not None:
            self.bar.set_postfix(
                d=f"{values['d_loss']:.3f}", g=f"{values['g_loss']:.3f}", img_s=f"{values['images_per_sec']:.0f}",
                refresh=False,
            )  # fmt: skip
        for code, message in self.watch.check_train(values):
            self._warn(code, message)
        self._reset_window()

    def _sampler(self) -> torch.nn.Module:
        """Return the model samples come from: EMA of G where kept, with BatchNorm statistics for its weights."""
        if self._sampler_cache is None or self._sampler_cache[0] != self.step:
            source = self.ema.model if self.ema is not None else self.G
            # SyncBatchNorm (several GPUs) would wait for the other ranks: sample with plain BatchNorm
            model = sampling_model(distributed.without_sync_batchnorm(source), self.spec, self.device)
            self._sampler_cache = (self.step, model)
        return self._sampler_cache[1]

    @torch.no_grad()
    def _samples(self) -> None:
        from gansvc.images import make_grid, save_grid

        sampler = self._sampler()
        with self._autocast():
            samples = sampler(self.fixed_noise).float()
        name = f"samples/step_{self.step:07d}.png"
        if self.points:
            from gansvc.data.mixture import ring_centers

            data = plot_points(samples, self.run_dir / name, ring_centers(), f"step {self.step}")
            atomic_write_bytes(self.run_dir / "samples" / "latest.png", data)
        else:
            samples = samples.clamp(-1, 1)
            save_grid(samples, self.run_dir / name)
            save_grid(samples, self.run_dir / "samples" / "latest.png")
            self.tensorboard.image("samples", make_grid(samples), self.step)
            if self.step >= COLLAPSE_CHECKS_FROM:  # early samples are alike anyway: no signal before this
                for code, message in self.watch.check_diversity(_diversity_ratio(samples, self._real_reference())):
                    self._warn(code, message)
        self.tensorboard.flush()
        self._event({"type": "samples", "step": self.step, "path": name})

    def _real_reference(self) -> torch.Tensor:
        if not hasattr(self, "_real_batch"):
            generator = torch.Generator().manual_seed(12345)
            index = torch.randperm(self.batches.data.shape[0], generator=generator)[:FIXED_NOISE].to(self.device)
            self._real_batch = self.batches.data.index_select(0, index).float().mul_(2 / 255).sub_(1)
        return self._real_batch

    @torch.no_grad()
    def _evaluate(self) -> None:
        """Score samples from the sampling model: FID / IS with fmnist-cnn where it fits, the ring metric for points."""
        from gansvc.train.sampling import generate

        spec = self.spec
        sampler = self._sampler()
        seed = spec.seed + 4  # the same noise at every evaluation, so scores are comparable across steps
        values: dict = {}
        if self.points:
            from gansvc.data.mixture import NUM_MODES, ring_quality

            quality = ring_quality(generate(sampler, POINT_SAMPLES, seed, self.device))
            values = {"modes_covered": float(quality["modes_covered"]),
                      "high_quality_fraction": quality["high_quality_fraction"]}  # fmt: skip
            if quality["high_quality_fraction"] > 0.5:
                for code, message in self.watch.check_coverage(quality["modes_covered"], NUM_MODES, "modes"):
                    self._warn(code, message)
        else:
            values = self._image_scores(sampler, seed)
        if not values:
            return
        self.last_eval = values
        self.metrics.append({"step": self.step, "kind": "eval", **values})
        self.tensorboard.scalars("eval", values, self.step)
        self._event({"type": "metrics", "step": self.step, "values": dict(values)})

    def _image_scores(self, sampler, seed: int) -> dict:
        spec = self.spec
        try:
            from gansvc.metrics import evaluate
            from gansvc.metrics.features import extractor_fits
        except ImportError as error:
            if not self._eval_unavailable_warned:
                self._eval_unavailable_warned = True
                self._warn("eval_unavailable", f"FID / IS skipped: gansvc.metrics is not available ({error})")
            return {}
        dataset = spec.dataset
        if dataset not in ("fashion-mnist", "mnist") or not extractor_fits("fmnist-cnn", self.data_shape):
            if not self._eval_unavailable_warned:
                self._eval_unavailable_warned = True
                self._warn(
                    "eval_unavailable",
                    f"FID / IS skipped: no shipped feature extractor fits {dataset} {list(self.data_shape)} "
                    "(fmnist-cnn takes 1x28x28 Fashion-MNIST/MNIST; score generator.pt with `gansvc eval`)",
                )
            return {}
        from gansvc.train.sampling import generate

        if self.dist.distributed:
            # each rank scores its share of the same samples; FID statistics are merged across the ranks
            world = self.dist.world
            part = distributed.shard_bounds(spec.eval_samples, world.rank, world.world_size)
            fake = generate(sampler, spec.eval_samples, seed, self.device, part=part)
            result = distributed.evaluate_sharded(
                fake, self.dist, real=f"{dataset}:test", extractor="fmnist-cnn", data_root=spec.data_root or None,
                device=str(self.device),
            )  # fmt: skip
            result = self.dist.broadcast_object(result)
        else:
            fake = generate(sampler, spec.eval_samples, seed, self.device)
            result = evaluate(
                fake, real=f"{dataset}:test", extractor="fmnist-cnn", data_root=spec.data_root or None,
                device=str(self.device),
            )  # fmt: skip
        values = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and k not in ("n_real", "n_fake")}
        coverage = self._class_coverage(fake) if dataset == "fashion-mnist" else None
        if coverage is not None:
            covered, total = coverage
            values["classes_covered"] = float(covered)
            if self.step >= COLLAPSE_CHECKS_FROM:  # untrained generators make one grey blob: no signal yet
                for code, message in self.watch.check_coverage(covered, total, "classes"):
                    self._warn(code, message)
        return values

    def _class_coverage(self, fake: torch.Tensor) -> tuple[int, int] | None:
        """Return (classes covered, classes) by the shipped classifier's predictions, or None if unavailable.

        A class is covered when at least a fifth of its fair share (1 / classes) of the samples is predicted as it.
        """
        try:
            from gansvc.metrics.fmnist_cnn import NUM_CLASSES, load_classifier
        except ImportError:
            return None
        if getattr(self, "_classifier", None) is None:
            try:
                self._classifier = load_classifier(device=self.device).eval()
            except (FileNotFoundError, RuntimeError, ValueError):
                return None
        predictions = torch.cat([
            self._classifier(chunk.to(self.device)).argmax(1).cpu() for chunk in fake.split(1000)
        ] or [torch.empty(0, dtype=torch.int64)])  # fmt: skip
        counts = self.dist.all_reduce_sum(torch.bincount(predictions, minlength=NUM_CLASSES).double())
        shares = counts / counts.sum().clamp_min(1)
        return int((shares >= 0.2 / NUM_CLASSES).sum()), NUM_CLASSES

    def _checkpoint(self, session_start: float) -> None:
        from gansvc.train.sampling import export_generator

        self._check_finite()
        state = {
            "format": "gansvc-checkpoint",
            "version": 1,
            "step": self.step,
            "spec": self.spec.to_dict(),
            "data_shape": list(self.data_shape),
            "world_size": self.dist.world.world_size,  # for the record: nothing below depends on it
            "G": self.G.state_dict(),  # the plain modules: no DDP "module." prefixes
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "batches": self.batches.state_dict(),
            "rng": {
                "noise": self.noise.get_state(),
                "torch": torch.get_rng_state(),
                # this rank's device only: a resume may see a different number of GPUs
                "cuda": [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else [],
            },
            "window": {"sum": self.window_sum.cpu(), "steps": self.window_steps, "seconds": self.window_seconds},
            "watch": {"history": list(self.watch.history), "active": sorted(self.watch.active)},
            "wall_seconds": self.wall_before + time.monotonic() - session_start,
            "train_seconds": self.train_seconds,
            "last_train": self.last_train,
            "last_eval": self.last_eval,
        }
        path = checkpoints.save_checkpoint(state, self.run_dir, self.step, self.spec.keep_checkpoints)
        export_generator(
            self._sampler(), self.spec, self.data_shape, self.step, self.ema is not None, self.run_dir / "generator.pt"
        )
        self.checkpointed_step = self.step
        self._event({"type": "checkpoint", "step": self.step, "path": str(path.relative_to(self.run_dir))})

    def _resume(self, path: Path, state: dict) -> None:
        saved = state["spec"]
        for name, value in self.spec.to_dict().items():
            if name not in RESUMABLE_CHANGES and name in saved and saved[name] != value:
                raise SpecError(
                    name,
                    f"{value!r} differs from {saved[name]!r} in the checkpoint {path} being resumed; use a new "
                    "run directory for a different experiment",
                )
        if tuple(state["data_shape"]) != self.data_shape:
            raise SpecError("dataset", f"data shape {self.data_shape} differs from the checkpoint's {state['data_shape']}")
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.batches.load_state_dict(state["batches"])
        try:
            self.noise.set_state(state["rng"]["noise"])
        except RuntimeError:  # saved on another kind of device: continue reproducibly, if not bit-exactly
            self.noise.manual_seed(spec_seed_for_step(self.spec.seed, state["step"]))
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"][0], self.device)
        self.window_sum = state["window"]["sum"].to(self.device)
        self.window_steps = state["window"]["steps"]
        self.window_seconds = state["window"]["seconds"]
        self.watch.history.extend(state["watch"]["history"])
        self.watch.active = set(state["watch"]["active"])
        self.step = state["step"]
        self.wall_before = state["wall_seconds"]
        self.train_seconds = state["train_seconds"]
        self.last_train = state["last_train"]
        self.last_eval = state["last_eval"]
        self.checkpointed_step = self.step

    def _summary(self, ended_by: str, session_start: float) -> dict:
        session_steps = self.step - (self.resumed_from or 0)
        images = session_steps * self.spec.batch_size * self.spec.n_critic
        summary = {
            "status": ended_by,  # completed | max_minutes | stopped
            "stopped": ended_by == "stopped",
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": round(self.batches.epoch, 4),
            "elapsed_seconds": round(self.wall_before + time.monotonic() - session_start, 3),
            "train_seconds": round(self.train_seconds, 3),
            "train_cpu_seconds": round(self.train_cpu_seconds, 3),  # this session's
            "images_per_sec": images / self.train_seconds_session if self.train_seconds_session > 0 else 0.0,
            "resumed_from": self.resumed_from,
            "final": self.last_train,
            "eval": self.last_eval,
            "warnings": [w["code"] for w in self.warnings],
            "device": str(self.device),
            "world_size": self.dist.world.world_size,  # processes; images_per_sec counts all of them
            "threads": self.threads if self.device.type == "cpu" else None,
            "generator": "generator.pt",
            "run_dir": str(self.run_dir),
        }
        if self.is_main:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def spec_seed_for_step(seed: int, step: int) -> int:
    """Return the noise seed used when a run resumes on a device whose RNG state cannot be restored."""
    return (seed * 1_000_003 + step) % 2**63


def _grad_norm(model: torch.nn.Module) -> float:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))


def _diversity_ratio(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Return the mean pairwise distance of generated samples over that of real samples (1 = as varied)."""
    fake_spread = torch.pdist(fake.flatten(1).float()).mean()
    real_spread = torch.pdist(real.flatten(1).float()).mean()
    return float(fake_spread / real_spread.clamp_min(1e-12))


class _NoLog:
    """Stands in for a MetricsLog on ranks other than 0, which write nothing."""

    records: list = []

    def append(self, record: dict) -> None:
        """Drop the record."""

    def close(self) -> None:
        """Nothing to close."""
