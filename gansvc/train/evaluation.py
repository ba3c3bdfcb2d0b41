"""Sampling and evaluation during training: the sample grids, FID / IS / KID of the sampling model, the ring
metric of point data, and the mode-collapse checks on them. A part of the Trainer.

Which network scores a run is chosen once (`training_scoring`) and said in the run's events at the
start: the spec's `eval_extractor`, by default fmnist-cnn for 28x28 grey images and the FID
Inception-v3 for every other image data set, its weights from the file the operator configured
($GANSVC_INCEPTION_WEIGHTS, set by `gansvc serve|train --inception-weights`). When no extractor fits
(no weights configured, images of the wrong shape) the run says so with an `eval_unavailable` warning
and reports no FID; a data set scored with a classifier trained on another small data set (MNIST with
fmnist-cnn) gets an `extractor_mismatch` warning. The real side is the data set's test split (a folder or
a ZIP archive: itself) at the training resolution; its statistics are computed once per (data set, split,
extractor, weights) and cached (gansvc.metrics.reference), streamed through the training loader when the set
is larger than the memory budget.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from gansvc.atomic import atomic_write_bytes
from gansvc.runtime import registry
from gansvc.runtime.events import Log, Metrics, Samples
from gansvc.train.batches import to_unit_range
from gansvc.train.ddp import without_sync_batchnorm
from gansvc.train.monitor import plot_points
from gansvc.train.sampling import generate, sampling_model
from gansvc.train.sharded_eval import evaluate_sharded
from gansvc.train.world import shard_bounds

FIXED_NOISE = 64  # samples in the grid drawn from fixed noise
COLLAPSE_CHECKS_FROM = 1000  # generator steps before the mode-collapse checks (diversity, class coverage) start
POINT_SAMPLES = 2500  # samples in a gaussian-mixture scatter plot and its ring metric (PacGAN's count)

# The data set each shipped feature extractor was trained on (for FID's meaning: features of a network
# trained on the data set itself separate its images best; another small classifier's features compare
# runs with each other only). Inception-v3's ImageNet features are the standard FID of every data set.
EXTRACTOR_TRAINED_ON = {"fmnist-cnn": "fashion-mnist", "inception-v3": "imagenet"}
GENERAL_EXTRACTORS = frozenset({"inception-v3"})  # published FIDs of any data set use these
GREY_28 = (1, 28, 28)  # the image shape whose default extractor is fmnist-cnn


@dataclass(frozen=True)
class Scoring:
    """How a run is scored during training: the extractor (None: no FID / IS) and what the run's events say."""

    extractor: str | None
    message: str  # the Log line naming the extractor, or why there is none
    mismatch: str = ""  # an extractor_mismatch warning: the extractor was trained on another data set
    unavailable: str = ""  # an eval_unavailable warning: image data with no FID / IS during training
    real: str = ""  # the real side: DATASET:test, or folder:PATH / zip:PATH itself
    inception_weights: str | None = None  # the weights file of inception-v3


def default_extractor(data_shape) -> str:
    """Return the extractor that scores images of `data_shape` (C, H, W) when the spec names none."""
    return "fmnist-cnn" if tuple(int(s) for s in data_shape) == GREY_28 else "inception-v3"


def reference_split(dataset: str) -> str:
    """Return the real set a training run on `dataset` is scored against: its test split (a folder or archive:
    itself, which has no splits: 'zip:PATH:test' would name the file 'PATH:test')."""
    if registry.is_folder_dataset(dataset) or registry.is_zip_dataset(dataset):
        return dataset
    info = registry.dataset_info(dataset)
    split = "test" if info is None or not info.sizes or "test" in info.sizes else "train"
    return f"{dataset}:{split}"


def training_scoring(
    dataset: str, data_shape, points: bool, extractor: str = "", inception_weights: str | None = None
) -> Scoring:
    """Return how a run on `dataset` is scored during training.

    `data_shape`: one sample's; `points`: 2-D point data; `extractor`: the spec's eval_extractor ('' = the
    default for the shape); `inception_weights`: the configured weights file (None = none configured).
    """
    if points:
        return Scoring(None, "evaluation: samples are scored with the ring metric (modes covered, high-quality "
                             "fraction); no feature extractor")  # fmt: skip
    chosen = extractor or default_extractor(data_shape)
    shape = list(data_shape)
    why = ""
    try:
        from gansvc.metrics.features import extractor_fits
    except ImportError as error:
        why = f"gansvc.metrics is not available ({error})"
    else:
        try:
            fits = extractor_fits(chosen, data_shape)
        except ValueError:  # a plugin's extractor: its own check runs at the first evaluation
            fits = True
        if not fits:
            why = f"the {chosen} extractor cannot take {dataset}'s {shape} images" + (
                " (it takes 1x28x28); leave eval_extractor empty for inception-v3" if chosen == "fmnist-cnn" else ""
            )
    if not why and chosen == "inception-v3" and not inception_weights:
        why = (
            f"{dataset} {shape} is scored with inception-v3, and no Inception weights are configured (the operator "
            f"sets them once: gansvc serve --inception-weights FILE, gansvc train --inception-weights FILE or "
            f"${registry.INCEPTION_WEIGHTS_ENV})"
        )
    if why:
        return Scoring(None, f"evaluation: FID / IS skipped: {why}", unavailable=f"FID / IS skipped: {why}")
    real = reference_split(dataset)
    trained_on = EXTRACTOR_TRAINED_ON.get(chosen, "")
    weights = f", weights {os.path.basename(inception_weights)}" if chosen == "inception-v3" else ""
    origin = f"trained on {trained_on}" if trained_on else "a plugin"
    message = f"evaluation: FID / IS / KID with the {chosen} extractor ({origin}{weights}) against {real}"
    mismatch = ""
    if trained_on and chosen not in GENERAL_EXTRACTORS and trained_on != dataset:
        mismatch = (
            f"{dataset} is scored with {chosen}, a network trained on {trained_on}, not on {dataset}: its FID / "
            f"IS / KID compare runs on {dataset} with each other, not with published {dataset} scores"
        )
    return Scoring(chosen, message, mismatch=mismatch, real=real,
                   inception_weights=inception_weights if chosen == "inception-v3" else None)  # fmt: skip


class TrainerEvaluation:
    """The Trainer's sampling and evaluation (a part of gansvc.train.trainer.Trainer)."""

    def _announce_scoring(self) -> None:
        """Say which network scores this run (and warn when it was trained on another data set)."""
        spec = self.spec
        if not (spec.eval_samples or spec.eval_every):
            return
        self._event(Log(message=self.scoring.message))
        said = {w["code"] for w in self.warnings}  # a resumed run said it already
        if self.scoring.mismatch and "extractor_mismatch" not in said:
            self._warn("extractor_mismatch", self.scoring.mismatch)
        if self.scoring.unavailable and not self._eval_unavailable_warned:
            self._eval_unavailable_warned = True
            if "eval_unavailable" not in said:
                self._warn("eval_unavailable", self.scoring.unavailable)

    def _sampler(self) -> torch.nn.Module:
        """Return the model samples come from: EMA of G where kept, with BatchNorm statistics for its weights."""
        if self._sampler_cache is None or self._sampler_cache[0] != self.step:
            source = self.ema.model if self.ema is not None else self.G
            # SyncBatchNorm (several GPUs) would wait for the other ranks: sample with plain BatchNorm
            model = sampling_model(without_sync_batchnorm(source), self.spec, self.device)
            if self.num_classes:  # samples drawn outside the step take their labels as training does
                from gansvc.train.sampling import attach_classes

                attach_classes(model, self.class_names, self.label_probs)
            self._sampler_cache = (self.step, model)
        return self._sampler_cache[1]

    @torch.no_grad()
    def _samples(self) -> None:
        from gansvc.images import make_grid, save_grid

        sampler = self._sampler()
        nrow = None
        with self._autocast():
            if self.num_classes:  # one row per class, the same noise in every row
                from gansvc.train.conditional import grid_inputs

                noise, labels = grid_inputs(self.fixed_noise, self.num_classes)
                samples = sampler(noise, labels).float()
                nrow = noise.shape[0] // self.num_classes
            else:
                samples = sampler(self.fixed_noise).float()
        name = f"samples/step_{self.step:07d}.png"
        if self.points:
            from gansvc.data.mixture import ring_centers

            data = plot_points(samples, self.run_dir / name, ring_centers(), f"step {self.step}")
            atomic_write_bytes(self.run_dir / "samples" / "latest.png", data)
        else:
            samples = samples.clamp(-1, 1)
            save_grid(samples, self.run_dir / name, nrow)
            save_grid(samples, self.run_dir / "samples" / "latest.png", nrow)
            self.tensorboard.image("samples", make_grid(samples, nrow), self.step)
            if self.step >= COLLAPSE_CHECKS_FROM:  # early samples are alike anyway: no signal before this
                for code, message in self.watch.check_diversity(_diversity_ratio(samples, self._real_reference())):
                    self._warn(code, message)
        self.tensorboard.flush()
        self._event(Samples(step=self.step, path=name))

    def _real_reference(self) -> torch.Tensor:
        if not hasattr(self, "_real_batch"):
            generator = torch.Generator().manual_seed(12345)
            index = torch.randperm(self.batches.num_samples, generator=generator)[:FIXED_NOISE]
            self._real_batch = to_unit_range(self.batches.images_at(index))
        return self._real_batch

    @torch.no_grad()
    def _evaluate(self) -> None:
        """Score samples from the sampling model: FID / IS with the run's extractor (see training_scoring), the ring
        metric for points."""
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
        self._evaluated_step = self.step
        if not values:
            return
        self.last_eval = values
        self.metrics.append({"step": self.step, "kind": "eval", **values})
        self.tensorboard.scalars("eval", values, self.step)
        self._event(Metrics(step=self.step, values=dict(values)))
        self._select(values)  # the best checkpoint and early stopping (gansvc.train.selection)

    def _image_scores(self, sampler, seed: int) -> dict:
        spec = self.spec
        if not self._scoring_ready():
            return {}
        extractor, real = self.scoring.extractor, self.scoring.real
        from gansvc.metrics import evaluate

        if self.dist.distributed:
            # each rank scores its share of the same samples; FID statistics are merged across the ranks
            world = self.dist.world
            part = shard_bounds(spec.eval_samples, world.rank, world.world_size)
            fake = generate(sampler, spec.eval_samples, seed, self.device, part=part)
            result = evaluate_sharded(
                fake, self.dist, real=real, extractor=extractor, data_root=spec.data_root or None,
                device=str(self.device), image_size=spec.image_size,
            )  # fmt: skip
            result = self.dist.broadcast_object(result)
        else:
            fake = generate(sampler, spec.eval_samples, seed, self.device)
            result = evaluate(
                fake, real=real, extractor=extractor, data_root=spec.data_root or None, device=str(self.device),
                inception_weights=self.scoring.inception_weights, image_size=spec.image_size,
            )  # fmt: skip
        values = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and k not in ("n_real", "n_fake")}
        # the classifier's classes are Fashion-MNIST's: class coverage means nothing for another data set
        coverage = self._class_coverage(fake) if EXTRACTOR_TRAINED_ON.get(extractor) == spec.dataset else None
        if self.num_classes and EXTRACTOR_TRAINED_ON.get(extractor) == spec.dataset:
            values.update(self._class_agreement(sampler, fake, seed))
        if coverage is not None:
            covered, total = coverage
            values["classes_covered"] = float(covered)
            if self.step >= COLLAPSE_CHECKS_FROM:  # untrained generators make one grey blob: no signal yet
                for code, message in self.watch.check_coverage(covered, total, "classes"):
                    self._warn(code, message)
        return values

    def _scoring_ready(self) -> bool:
        """Load the run's extractor and the real statistics once (computed or read from the cache); when either
        fails (a weights file of another layout, missing test data, a plugin that does not load), say so with an
        eval_unavailable warning and score nothing from then on. Every rank learns rank 0's answer."""
        if self.scoring.extractor is None:
            return False
        if self._scoring_checked:
            return True
        self._scoring_checked = True
        spec, problem = self.spec, ""
        try:
            from gansvc.metrics.evaluate import get_extractor
            from gansvc.metrics.reference import real_reference
            from gansvc.runtime.plugins import PluginError

            failures = (FileNotFoundError, ValueError, RuntimeError, PluginError)
        except ImportError as error:
            problem = f"gansvc.metrics is not available ({error})"
        if not problem:
            try:
                net = get_extractor(self.scoring.extractor, self.device, self.scoring.inception_weights)
                if self.is_main:
                    real_reference(self.scoring.real, net, spec.data_root or None, image_size=spec.image_size)
            except failures as error:
                problem = f"{self.scoring.extractor} against {self.scoring.real}: {error}"
        problem = self.dist.broadcast_object(problem) if self.dist.distributed else problem
        if problem:
            self.scoring = dataclasses.replace(self.scoring, extractor=None)
            if not self._eval_unavailable_warned:
                self._eval_unavailable_warned = True
                self._warn("eval_unavailable", f"FID / IS skipped: {problem}")
            return False
        return True

    def _class_agreement(self, sampler, fake: torch.Tensor, seed: int) -> dict:
        """Return {class_agreement}: the share of the samples (all ranks' together) that the shipped classifier
        assigns to the class they were drawn for."""
        from gansvc.metrics.per_class import class_agreement
        from gansvc.train.conditional import sample_labels

        labels = sample_labels(sampler, self.spec.eval_samples, seed)  # what generate() drew the samples with
        if self.dist.distributed:
            world = self.dist.world
            lo, hi = shard_bounds(self.spec.eval_samples, world.rank, world.world_size)
            labels = labels[lo:hi]
        share, _ = class_agreement(fake, labels, self.device)
        hits = self.dist.all_reduce_sum(torch.tensor([share * fake.shape[0], fake.shape[0]], dtype=torch.float64,
                                                     device=self.device))  # fmt: skip
        return {"class_agreement": float(hits[0] / hits[1].clamp_min(1))}

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


def _diversity_ratio(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Return the mean pairwise distance of generated samples over that of real samples (1 = as varied)."""
    fake_spread = torch.pdist(fake.flatten(1).float()).mean()
    real_spread = torch.pdist(real.flatten(1).float()).mean()
    return float(fake_spread / real_spread.clamp_min(1e-12))
