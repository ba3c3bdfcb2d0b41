"""Setting a training run up: the process group, the data, the models and their optimisers, noise, and resume."""

from __future__ import annotations

import json
import os

import torch

from gansvc.atomic import atomic_write_text
from gansvc.runtime import registry
from gansvc.runtime.plugins import PluginArgumentError
from gansvc.runtime.rundir import clean_leftovers
from gansvc.runtime.events import Log
from gansvc.train import checkpoints, distributed
from gansvc.train.ddp import wrap_for_ranks
from gansvc.train.devices import cpu_threads, system_load, threads_for_load
from gansvc.train.ema import EMA
from gansvc.train.evaluation import FIXED_NOISE, POINT_SAMPLES, training_scoring
from gansvc.train.monitor import FailureWatch, MetricsLog, TensorBoard
from gansvc.train.optim import FusedAdam
from gansvc.train.precision import grad_scaler
from gansvc.train.reporting import NoLog, stat_names
from gansvc.train.selection import SelectionState
from gansvc.train.schedule import is_scheduled, keep_full_rates
from gansvc.train.spec import SpecError, check_precision_device
from gansvc.train.step import channels_last_on_cpu
from gansvc.train.world import local_batch_size


class TrainerSetup:
    """The Trainer's set-up (a part of gansvc.train.trainer.Trainer)."""

    # the device types precision fp16 trains on (the tests add "cpu" to run its scaler's path on this machine)
    _fp16_device_types: tuple[str, ...] = ("cuda",)

    def _setup(self) -> None:
        from gansvc.data.streaming import make_batches, sample_shape
        from gansvc.models import build_models, has_aux_classifier, has_batchnorm

        self.dist = self._join_ranks()
        self._startup_logs: list[Log] = []  # said once the loop starts, before its first progress event
        spec = self.spec
        world = self.dist.world
        self.is_main = world.is_main
        self.device = self.dist.device
        check_precision_device(spec.precision, self.device.type, self._fp16_device_types)  # device "auto" resolved
        # ranks on one node share its cores; threads = 0 on the CPU takes the cores that are free at start
        cores = max(1, cpu_threads() // world.local_world_size)
        self.threads = spec.threads or cores
        self.start_load: float | None = None  # cores in use when threads = 0 chose the count
        if self.device.type == "cpu":
            if not spec.threads:
                load = self.start_load = system_load()
                self.threads = threads_for_load(cores, load / world.local_world_size if load is not None else None)
                if self.threads < cores:
                    self._startup_logs.append(Log(message=(
                        f"threads: {self.threads} of {cores} cores (the CPU was busy at start: {load:.1f} cores in use); "
                        "--threads N fixes the count")))  # fmt: skip
            torch.set_num_threads(self.threads)
        data = self._load_data()  # in memory, or streamed from disk when larger than the memory budget
        self.points = hasattr(data, "points")
        self.data_info = data
        if len(data) < spec.batch_size:
            raise SpecError("batch_size", f"{spec.batch_size} is larger than the data set ({len(data)} samples)")
        self.data_shape = sample_shape(data)
        if spec.model in ("dcgan", "resnet"):
            from gansvc.models.dcgan import layout

            try:
                layout(self.data_shape[-1])
            except ValueError as error:
                raise SpecError("image_size", f"{error} (the data set's images are {self.data_shape[-1]} px)") from None
        self.scoring = training_scoring(
            spec.dataset, self.data_shape, self.points, spec.eval_extractor,
            os.environ.get(registry.INCEPTION_WEIGHTS_ENV) or None,
        )  # fmt: skip
        self._scoring_checked = False
        class_labels = self._setup_classes(data)

        torch.manual_seed(spec.seed)  # model initialisation and spectral-norm vectors (the same on every rank)
        if spec.model == "resnet" and spec.attention:
            from gansvc.models.resnet import attention_resolutions

            allowed = attention_resolutions(self.data_shape[-1])
            if spec.attention not in allowed:
                raise SpecError("attention", f"got {spec.attention}: the residual networks for "
                                f"{self.data_shape[-1]} px images take it at {', '.join(map(str, allowed))}")  # fmt: skip
        # class_entropy: the data's classes for an unconditional D's classifier (SpecError for unlabelled data)
        self.label_classes = self._label_classes(data) if spec.class_entropy > 0 else 0
        self.G, self.D = (m.to(self.device) for m in _spec_errors(build_models, spec, self.data_shape, self.num_classes,
                                                                  self.label_classes))
        self.G, self.D = (channels_last_on_cpu(m, self.device) for m in (self.G, self.D))
        self._freeze_d()  # FreezeD (issue 21): before DDP and the optimiser see D's parameters
        # Without BatchNorm in D, real and fake go through D as one batch (one forward instead of two).
        self.joint_d = not has_batchnorm(self.D)
        # AC-GAN's classifier term in both losses; or with class_entropy D's on the reals and G's entropy term
        self.ac_term = has_aux_classifier(spec, self.num_classes) or self.label_classes > 0
        # self.G / self.D are the plain modules (state, EMA, samples); the steps run G_train / D_train,
        # their DistributedDataParallel wrappers when several ranks take part.
        self.G_train = wrap_for_ranks(self.G, self.device, world.distributed)
        self.D_train = wrap_for_ranks(self.D, self.device, world.distributed)
        betas = (spec.beta1, spec.beta2)
        self.opt_g = FusedAdam(self.G.parameters(), lr=spec.lr_g, betas=betas)
        self.opt_d = FusedAdam([p for p in self.D.parameters() if p.requires_grad], lr=spec.lr_d, betas=betas)
        keep_full_rates((self.opt_g, self.opt_d))  # what the schedule scales (and a rollback lowers)
        self.lr_scheduled = is_scheduled(spec.lr_schedule, spec.lr_warmup_steps)
        self.scaler_g = grad_scaler(spec.precision, self.device)  # fp16 only: one per optimiser
        self.scaler_d = grad_scaler(spec.precision, self.device)
        self.ema = EMA(self.G, spec.ema_decay) if spec.ema_decay > 0 else None
        self.batches = make_batches(data, spec.batch_size, spec.seed, self.device, world.rank, world.world_size,
                                    balance_labels=class_labels if spec.balanced_classes else None)  # fmt: skip
        self.augmenter = None
        if spec.augment:
            from gansvc.train.augment import Augmenter

            # ADA starts from p = 0 and adapts; otherwise the fixed augment_p
            self.augmenter = Augmenter(spec.augment, 0.0 if spec.ada_target else spec.augment_p,
                                       ada_target=spec.ada_target, seed=spec.seed, device=self.device)  # fmt: skip
        if self.batches.local_batch_size % spec.accumulate:  # the spec knows this node's processes, not all nodes'
            raise SpecError("accumulate", f"this rank's batch of {self.batches.local_batch_size} (batch_size "
                            f"{spec.batch_size} over {world.world_size} processes) does not split into accumulate="
                            f"{spec.accumulate} equal micro-batches")  # fmt: skip
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
        spec.check_warmup(self.total_steps)
        self.watch = FailureWatch(spec.loss)
        self.step = 0
        self.wall_before = 0.0  # wall-clock seconds of earlier sessions of this run
        self.train_seconds = 0.0  # seconds inside training steps, all sessions
        self.train_cpu_seconds = 0.0  # CPU seconds (all threads) inside training steps, this session
        self._reset_window()
        self.last_train: dict = {}
        self.last_eval: dict = {}
        self.checkpointed_step = -1
        self.selection = SelectionState(metric=spec.keep_best)  # the best checkpoint, rollbacks (issue 13)
        self._sampler_cache: tuple[int, torch.nn.Module] | None = None
        self._eval_unavailable_warned = False

        # Rank 0 reads the checkpoint and hands it to the others: their nodes need not share its disk.
        resume_from = checkpoints.latest_checkpoint(self.run_dir) if self.is_main else None
        state = checkpoints.load_checkpoint(resume_from, map_location="cpu") if resume_from is not None else None
        resume_from, state = self.dist.broadcast_object((resume_from, state))
        if state is not None:
            self._resume(resume_from, state)
        elif spec.init_from:  # a fresh run that starts from another run's weights (issue 21); a resume ignores it
            self._init_from(*self.dist.broadcast_object(self._read_init() if self.is_main else None))
        self.resumed_from = self.step if resume_from is not None else None
        if self.resumed_from is not None:
            self._startup_logs.append(Log(
                message=f"resumed from the checkpoint at step {self.resumed_from}", resume_step=self.resumed_from
            ))  # fmt: skip
        self._train_seconds_at_start = self.train_seconds
        if self.is_main:  # only rank 0 writes to the run directory
            # writes a killed process left half-done (it was the last to write here: nothing writes now)
            removed = clean_leftovers(self.run_dir) if self.run_dir.is_dir() else []
            if removed:
                names = ", ".join(str(p.relative_to(self.run_dir)) for p in removed)
                self._startup_logs.append(Log(message=f"removed {len(removed)} unfinished file(s) an interrupted "
                                                      f"run left behind: {names}"))  # fmt: skip
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "spec.json", json.dumps(spec.to_dict(), indent=2) + "\n")
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", self.resumed_from or 0)
            self.warning_log = MetricsLog(self.run_dir / "warnings.jsonl", self.resumed_from or 0)
        else:
            self.metrics = self.warning_log = NoLog()
        self.warnings = [r for r in self.warning_log.records]
        self.tensorboard = TensorBoard(self.run_dir / "tensorboard", spec.tensorboard and self.is_main, self.step + 1)

    def _setup_classes(self, data):
        """Set num_classes, class_names and label_probs (conditional runs); return the labels for the batches."""
        self.num_classes, self.class_names, self.label_probs = 0, None, None
        if not self.spec.conditional:
            return None
        from gansvc.train.conditional import data_classes, label_probabilities

        labels, self.num_classes, self.class_names = data_classes(data, self.spec.dataset)
        self.label_probs = label_probabilities(labels, self.num_classes, self.spec.label_sampling)
        return labels

    def _label_classes(self, data) -> int:
        """Return the data's class count (class_entropy's classifier); SpecError('class_entropy') without labels."""
        from gansvc.train.conditional import data_classes

        try:
            return data_classes(data, self.spec.dataset)[1]
        except SpecError as error:
            raise SpecError("class_entropy", error.message) from None

    def _join_ranks(self) -> distributed.DistributedContext:
        """Join the process group when torchrun started several ranks; adopt its size as the spec's nproc.

        Raises SpecError naming the setting (device, nproc, batch_size) this process cannot run with.
        """
        context = distributed.init(self.spec.device)
        world = context.world
        try:
            if world.distributed:
                if self.spec.nproc != world.local_world_size:
                    self.spec = self.spec.with_overrides(nproc=world.local_world_size)
                local_batch_size(self.spec.batch_size, world.world_size)
            elif self.spec.nproc > 1:
                raise SpecError(
                    "nproc",
                    f"{self.spec.nproc} processes asked for, but this process was not started by torchrun; run "
                    f"`gansvc train --nproc-per-node {self.spec.nproc} ...` or "
                    f"`torchrun --nproc-per-node {self.spec.nproc} -m gansvc.train ...`",
                )
        except BaseException:
            context.close()
            raise
        return context

    def _load_data(self):
        """Return the training data; with a download, one rank per node fetches it while the others wait."""
        from gansvc.data.streaming import open_training_data

        spec = self.spec
        dataset_args = getattr(spec, "dataset_args", None) or {}  # a spec field from the plugins work (issue 11)
        load = lambda download: open_training_data(  # noqa: E731
            spec.dataset, "train", spec.data_root or None, spec.image_size, download, dataset_args
        )
        if not (self.download and self.dist.distributed):
            return load(self.download)
        data = load(True) if self.dist.world.local_rank == 0 else None
        self.dist.barrier()
        return data if data is not None else load(False)

    def _reset_window(self) -> None:
        width = len(stat_names(self.spec))
        self.window_sum = torch.zeros(width, device=getattr(self, "device", "cpu"), dtype=torch.float64)
        self.window_steps = 0
        self.window_seconds = 0.0


def _spec_errors(function, *args):
    """Call `function`; a plugin refusing its model_args / dataset_args becomes a SpecError naming the argument."""
    try:
        return function(*args)
    except PluginArgumentError as error:
        raise SpecError(error.field, error.message) from None
