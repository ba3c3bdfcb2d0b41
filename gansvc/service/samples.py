"""GetSamples: the trainer's own grid of a step, or fresh images generated from a checkpoint.

Generation runs in the server process on the CPU, a few requests at a time and on few threads, so
that it never competes with the training workers for long; loaded generators are cached per file
version.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from gansvc.runtime.rundir import LATEST_SAMPLES, SAMPLES, latest_samples_path, sample_grid_steps
from gansvc.service.artifacts import best_file, checkpoint_file, latest_checkpoint_step
from gansvc.service.errors import InvalidField, MissingReference, WrongState
from gansvc.service.messages import pb

DEFAULT_COUNT = 64
MAX_COUNT = 1024
DEFAULT_FRAMES = 16  # an interpolation's frames when the request leaves them 0
MAX_FRAMES = 256
_CACHE_SIZE = 4


class SampleRenderer:
    """Turns GetSamples requests into PNG grids (and raw tensors)."""

    def __init__(self, max_message_bytes: int, concurrency: int = 2, threads: int = 2):
        self.max_message_bytes = max_message_bytes
        self._slots = threading.BoundedSemaphore(concurrency)
        self._threads = threads
        self._cache: OrderedDict[tuple, object] = OrderedDict()
        self._cache_lock = threading.Lock()

    def render(self, run_dir: Path, request: pb.GetSamplesRequest) -> pb.Samples:
        """Return the Samples answer for a training job's run directory."""
        if request.nrow < 0:
            raise InvalidField("nrow", f"got {request.nrow}, expected 0 (square grid) or more")
        if request.step < 0:
            raise InvalidField("step", f"got {request.step}, expected 0 (latest) or a step")
        if request.best and request.step:
            raise InvalidField("step", f"got {request.step} with best: name the best checkpoint or a step, not both")
        # the best checkpoint has no stored grid: its images are always generated
        generate = (request.HasField("seed") or request.HasField("count") or request.include_tensor or request.best
                    or request.HasField("class_label") or by_seed(request) or request.HasField("truncation"))  # fmt: skip
        if not generate:
            return self._stored_grid(run_dir, request.step)
        return self._generated(run_dir, request)

    def _stored_grid(self, run_dir: Path, step: int) -> pb.Samples:
        grids = sample_grid_steps(run_dir)
        if step == 0:
            latest = latest_samples_path(run_dir)
            if not latest.is_file():
                raise MissingReference("job_id", f"job {run_dir.name} has drawn no samples yet")
            return pb.Samples(png=latest.read_bytes(), step=max(grids, default=0), source=f"{SAMPLES}/{LATEST_SAMPLES}")
        if step not in grids:
            known = ", ".join(map(str, sorted(grids))) or "none yet"
            raise MissingReference("step", f"job {run_dir.name} has no sample grid at step {step} (steps: {known})")
        return pb.Samples(png=grids[step].read_bytes(), step=step, source=f"{SAMPLES}/{grids[step].name}")

    def _generated(self, run_dir: Path, request: pb.GetSamplesRequest) -> pb.Samples:
        from gansvc.images import encode_png
        from gansvc.train.sampling import generate

        plan = SeedRequest.read(request) if by_seed(request) else None
        truncation = _truncation(request)
        if plan is None:
            count = request.count if request.HasField("count") else DEFAULT_COUNT
            if not 1 <= count <= MAX_COUNT:
                raise InvalidField("count", f"got {count}, expected 1..{MAX_COUNT}")
            seed = request.seed if request.HasField("seed") else 0
            if seed < 0:
                raise InvalidField("seed", f"got {seed}, expected >= 0")
        path = best_file(run_dir) if request.best else checkpoint_file(run_dir, request.step, field="step")
        generator = self._generator(path)
        drawn = None
        if plan is not None:
            with self._slots:
                drawn = plan.draw(generator, truncation)
            images, count = drawn.images, len(drawn.images)
        else:
            labels = _labels(generator, request, count)
            with self._slots:
                images = generate(generator, count, seed, "cpu", labels=labels, truncation=truncation)
        if images.dim() != 4:
            raise WrongState(f"job {run_dir.name} generates 2-D points, not images (see its samples/latest.png)")
        answer = pb.Samples(
            png=encode_png(images, request.nrow or (drawn.nrow if drawn is not None else None)),
            step=request.step or (_file_step(path) if request.best else latest_checkpoint_step(run_dir) or 0),
            source=path.relative_to(run_dir).as_posix(),
            count=count,
        )
        if drawn is not None:
            plan.fill(answer, drawn)
        if request.include_tensor:
            size = images.numel() * 4
            if size + len(answer.png) + len(answer.animation) > self.max_message_bytes - 4096:
                field = "count" if plan is None else "seeds" if plan.seeds is not None else "interpolate.frames"
                raise InvalidField(
                    field, f"{count} images are {size} bytes as float32, over the message limit "
                    f"({self.max_message_bytes} bytes): ask for fewer"
                )  # fmt: skip
            answer.tensor.CopyFrom(
                pb.Tensor(shape=list(images.shape), dtype=pb.DTYPE_FLOAT32, data=images.contiguous().numpy().tobytes())
            )
        return answer

    def _generator(self, path: Path):
        import torch

        from gansvc.train.sampling import load_generator

        try:
            stat = path.stat()
        except FileNotFoundError:  # pruned by the trainer (keep_checkpoints) since it was listed
            raise MissingReference("step", f"{path.name} was removed meanwhile; ask again") from None
        key = (str(path), stat.st_ino, stat.st_mtime_ns)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        with self._slots:
            if torch.get_num_threads() > self._threads:
                torch.set_num_threads(max(1, min(self._threads, os.cpu_count() or 1)))
            try:
                generator, _ = load_generator(path, "cpu")
            except FileNotFoundError:
                raise MissingReference("step", f"{path.name} was removed meanwhile; ask again") from None
            except ValueError as error:  # a damaged file: the job's state, not the request, is at fault
                raise WrongState(str(error)) from None
        with self._cache_lock:
            self._cache[key] = generator
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return generator


def _file_step(path: Path) -> int:
    """Return the step a generator or checkpoint file records (0 when it says none)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a file replaced meanwhile: the images came from it all the same
        return 0
    return int(state.get("step", 0)) if isinstance(state, dict) else 0


def _labels(generator, request: pb.GetSamplesRequest, count: int):
    """Return the labels of GetSamples' images: all class_label when set, else None (drawn as in training)."""
    if not request.HasField("class_label"):
        return None
    import torch

    from gansvc.train.conditional import check_class

    try:
        check_class(request.class_label, getattr(generator, "num_classes", 0), "class_label")
    except ValueError as error:
        raise InvalidField("class_label", str(error).removeprefix("class_label: ")) from None
    return torch.full((count,), request.class_label, dtype=torch.int64)


def by_seed(request: pb.GetSamplesRequest) -> bool:
    """Return whether GetSamples names its images by seed (seeds or interpolate; per_class needs seeds)."""
    return bool(request.seeds) or request.HasField("interpolate") or request.per_class


def _truncation(request: pb.GetSamplesRequest) -> float | None:
    """Return the request's truncation ψ (None: unset); InvalidField('truncation') outside (0, 1]."""
    from gansvc.train.latents import SamplingError, check_truncation

    if not request.HasField("truncation"):
        return None
    try:
        check_truncation(request.truncation, "truncation")
    except SamplingError as error:
        raise InvalidField(error.field, error.message) from None
    return request.truncation


class SeedRequest:
    """The by-seed part of a GetSamples request (seeds, per_class, interpolate, class_label), checked."""

    def __init__(self, seeds, ends, frames: int, animation: str, label: int | None, per_class: bool):
        self.seeds, self.ends, self.frames, self.animation = seeds, ends, frames, animation
        self.label, self.per_class = label, per_class

    @classmethod
    def read(cls, request: pb.GetSamplesRequest) -> SeedRequest:
        """Return the checked by-seed request; InvalidField naming the field that is wrong."""
        from gansvc.images import ANIMATION_FORMATS
        from gansvc.train.latents import MAX_SEED, SamplingError, parse_seeds

        for name in ("seed", "count"):
            if request.HasField(name):
                raise InvalidField(name, "seeds / interpolate name their images by seed; leave seed and count unset")
        label = request.class_label if request.HasField("class_label") else None
        if request.seeds and request.HasField("interpolate"):
            raise InvalidField("interpolate", "draws its own frames; give seeds or interpolate, not both")
        if request.seeds:
            try:
                seeds = parse_seeds(request.seeds, "seeds", limit=MAX_COUNT)
            except SamplingError as error:
                raise InvalidField(error.field, error.message) from None
            return cls(seeds, None, 0, "", label, request.per_class)
        if request.per_class:
            raise InvalidField("per_class", "needs seeds (a grid column per seed, a row per class)")
        spec = request.interpolate
        for name in ("seed_a", "seed_b"):
            value = getattr(spec, name)
            if not 0 <= value <= MAX_SEED:
                raise InvalidField(f"interpolate.{name}", f"got {value}, expected 0..{MAX_SEED}")
        frames = spec.frames or DEFAULT_FRAMES
        if not 2 <= frames <= MAX_FRAMES:
            raise InvalidField("interpolate.frames", f"got {frames}, expected 2..{MAX_FRAMES} (0 = {DEFAULT_FRAMES})")
        animation = (spec.animation_format or "gif").lower()
        if animation not in ANIMATION_FORMATS:
            raise InvalidField("interpolate.animation_format",
                               f"got {spec.animation_format!r}, expected {' or '.join(ANIMATION_FORMATS)}")  # fmt: skip
        return cls(None, (spec.seed_a, spec.seed_b), frames, animation, label, False)

    def draw(self, generator, truncation: float | None):
        """Return the images (gansvc.train.sampling.Drawn) this request names, drawn on the CPU."""
        from gansvc.train.latents import SamplingError
        from gansvc.train.sampling import draw_interpolation, draw_seeds

        classes = getattr(generator, "num_classes", 0)
        if self.per_class and classes and len(self.seeds) * classes > MAX_COUNT:
            raise InvalidField("per_class", f"{len(self.seeds)} seeds x {classes} classes are over {MAX_COUNT} "
                                            "images: ask for fewer seeds")  # fmt: skip
        try:
            if self.seeds is not None:
                return draw_seeds(generator, self.seeds, truncation=truncation, label=self.label,
                                  per_class=self.per_class)  # fmt: skip
            return draw_interpolation(generator, *self.ends, self.frames, truncation=truncation, label=self.label)
        except SamplingError as error:
            raise InvalidField("class_label" if error.field == "class" else error.field, error.message) from None

    def fill(self, answer: pb.Samples, drawn) -> None:
        """Add the seeds, labels and (interpolation) animation of `drawn` to the answer."""
        from gansvc.images import encode_animation

        answer.seeds.extend(drawn.seeds)
        if drawn.labels is not None:
            answer.labels.extend(int(k) for k in drawn.labels)
        if self.ends is not None:
            answer.animation = encode_animation(drawn.images, self.animation)
            answer.animation_format = self.animation
