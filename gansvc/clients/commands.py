"""The client commands: `gansvc submit | watch | jobs | samples | cancel | download | upload | health`.

Each takes a connected GanClient and the parsed arguments and returns the exit code; what they print
is composed in gansvc.clients.render.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gansvc.runtime import registry
from gansvc.runtime.console import UsageError
from gansvc.clients import render
from gansvc.api.convert import pb, state_name

STATES = registry.JOB_STATES


# ---------------------------------------------------------------------- submit
def _spec_settings(args) -> dict:
    from gansvc.api.convert import training_spec_fields

    settings: dict = {}
    if args.spec:
        from gansvc.train.spec import SpecError, TrainSpec

        try:
            TrainSpec.from_file(args.spec)  # checked here, so the file's errors name it
            settings = dict(TrainSpec.file_settings(args.spec))
        except SpecError as error:
            raise UsageError(f"--spec {args.spec}: {error}") from None
    for name in training_spec_fields():
        value = getattr(args, f"spec_{name}", None)
        if value is not None:
            settings[name] = value
    return settings


def _load_images(path: Path):
    import numpy as np

    if path.is_dir():
        from gansvc.images import load_png_folder

        try:
            return load_png_folder(path).numpy()
        except ValueError as error:
            raise UsageError(f"--evaluate-images {path}: {error}") from None
    if path.suffix == ".npy" and path.is_file():
        return np.load(path, allow_pickle=False)
    raise UsageError(f"--evaluate-images {path}: expected a folder of images or a .npy file")


def _load_labels(path: Path) -> list[int]:
    """Return the class numbers of an integer .npy file [N] (--sample-labels)."""
    import numpy as np

    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"--sample-labels {path}: not a readable .npy file ({error})") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise UsageError(f"--sample-labels {path}: expected an integer array [N], got {labels.dtype} {labels.shape}")
    return labels.tolist()


def submit(client, args) -> int:
    """Submit a training (or evaluation) job; print its id on stdout; return 0 (or watch's code)."""
    if args.evaluate and args.evaluate_images:
        raise UsageError("--evaluate and --evaluate-images exclude each other")
    evaluating = bool(args.evaluate or args.evaluate_images)
    for flag, given in (("--precision-recall", args.precision_recall), ("--bootstrap", args.bootstrap)):
        if given and not evaluating:
            raise UsageError(f"{flag} scores an evaluation: give --evaluate JOB or --evaluate-images PATH")
    if evaluating:
        job = client.submit_evaluation(
            job_id=args.evaluate, step=args.step,
            samples=_load_images(args.evaluate_images) if args.evaluate_images else None,
            real=args.real, extractor=args.extractor, num_samples=args.num_samples, num_real=args.num_real,
            seed=args.spec_seed, data_root=args.spec_data_root or "", inception_weights=args.inception_weights,
            device=args.spec_device or "", request_id=args.request_id, best=args.best, class_labels=args.classes,
            sample_labels=_load_labels(args.sample_labels) if args.sample_labels else (),
            precision_recall=args.precision_recall, bootstrap=args.bootstrap,
        )  # fmt: skip
        what = "evaluation"
    else:
        try:
            job = client.submit_training(_spec_settings(args), request_id=args.request_id)
        except ValueError as error:
            raise UsageError(str(error)) from None
        spec = job.training
        length = f"{spec.steps} steps" if spec.steps else f"{spec.epochs:g} epochs"
        what = f"training: {spec.model} / {spec.loss} on {spec.dataset}, {length}"
    print(job.id, flush=True)
    print(f"gansvc submit: {job.id} {state_name(job.state)} ({what})", file=sys.stderr)
    if args.watch:
        return follow(client, job.id, 0)
    return 0


# ---------------------------------------------------------------------- watch
def follow(client, job_id: str, after: int, as_json: bool = False) -> int:
    """Follow a job with a progress bar (or JSON lines) until it ends, print a summary; return 0 if it succeeded."""
    from tqdm import tqdm

    bar = None
    try:
        for event in client.watch(job_id, after_sequence=after):
            if as_json:
                print(render.message_json(event), flush=True)
                continue
            if event.WhichOneof("payload") == "progress":
                p = event.progress
                if bar is None and p.total_steps:
                    bar = tqdm(total=p.total_steps, unit="step", dynamic_ncols=True, desc=job_id, file=sys.stderr)
                if bar is not None:
                    bar.total = p.total_steps
                    bar.n = p.step
                    bar.set_postfix_str(render.progress_postfix(p), refresh=True)
                continue
            line = render.event_line(event)
            if line:
                tqdm.write(line)  # stdout, above the bar (which is on stderr)
    finally:
        if bar is not None:
            bar.close()
    job = client.get_job(job_id)
    if not as_json:
        print_summary(client, job)
    return 0 if job.state == pb.JOB_STATE_SUCCEEDED else 1


def print_summary(client, job) -> None:
    """Print a finished job's outcome, final metrics and where its results are."""
    for line in render.summary_lines(job):
        print(line)
    if job.kind == pb.JOB_KIND_TRAINING and job.state == pb.JOB_STATE_SUCCEEDED:
        print(f"results: gansvc samples {job.id} -o grid.png; gansvc download {job.id} generator.pt")


def watch(client, args) -> int:
    """Follow a job; return 0 if it succeeded, else 1."""
    return follow(client, args.job, args.after, args.json)


# ---------------------------------------------------------------------- jobs
def jobs(client, args) -> int:
    """Print the service's jobs as a table (or JSON lines); return 0."""
    if args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    states = [s.upper() for s in args.state]
    for state in states:
        if state not in STATES:
            raise UsageError(f"--state {state.lower()!r}: expected queued, running, succeeded, failed or cancelled")
    rows = []
    for job in client.list_jobs(states, args.kind, page_size=min(args.limit, 500)):
        if len(rows) >= args.limit:
            break
        if args.json:
            print(render.message_json(job))
        rows.append(render.job_row(job))
    if not args.json:
        for line in render.table(rows):
            print(line)
    return 0


# ---------------------------------------------------------------------- samples, download, cancel, health
def samples(client, args) -> int:
    """Write a job's sample grid PNG (and optionally the raw images); return 0."""
    from gansvc.atomic import atomic_write, atomic_write_bytes

    interpolate, animation = _interpolation(args)
    grid = client.samples(
        args.job, step=args.step, seed=args.seed, count=args.count, include_tensor=args.tensor is not None,
        nrow=args.nrow, best=args.best, class_label=args.class_label, seeds=args.seeds, truncation=args.truncation,
        interpolate=interpolate, frames=args.frames, per_class=args.per_class,
        animation_format=animation.suffix.lstrip(".").lower() if animation else "",
    )  # fmt: skip
    atomic_write_bytes(args.output, grid.png)
    print(f"wrote {args.output} (step {grid.step}, from {grid.source})", file=sys.stderr)
    if grid.animation and animation is not None:
        atomic_write_bytes(animation, grid.animation)
        print(f"wrote {animation}", file=sys.stderr)
    if args.tensor is not None:
        import numpy as np

        atomic_write(args.tensor, lambda f: np.save(f, grid.images, allow_pickle=False))
        print(f"wrote {args.tensor} {list(grid.images.shape)} float32", file=sys.stderr)
    return 0


def _interpolation(args) -> tuple[tuple[int, int] | None, Path | None]:
    """Return (seeds A, B) of --interpolate A,B and the animation's path, or (None, None) without it."""
    if not args.interpolate:
        return None, None
    try:
        a, b = (int(part) for part in args.interpolate.split(","))
    except ValueError:
        raise UsageError(f"--interpolate: got {args.interpolate!r}, expected two seeds A,B (e.g. 3,17)") from None
    animation = args.animation or args.output.with_suffix(".gif")
    if animation.suffix.lower() not in (".gif", ".webp"):
        raise UsageError(f"--animation: {str(animation)!r} must end in .gif or .webp")
    return (a, b), animation


def download(client, args) -> int:
    """Download one of a job's artifacts (or list them); return 0."""
    if args.list or not args.name:
        for artifact in client.list_artifacts(args.job):
            print(f"{artifact.size_bytes:>12}  {artifact.name}")
        return 0
    output = args.output or Path(Path(args.name).name)
    client.download(args.job, args.name, output)
    print(f"wrote {output}", file=sys.stderr)
    return 0


def upload(client, args) -> int:
    """Upload a checkpoint for init_from (resuming an interrupted upload); print its upload:SHA256; return 0."""
    if not args.file.is_file():
        raise UsageError(f"{args.file}: no such file")
    if not 0 < args.chunk_mb <= 32:
        raise UsageError(f"--chunk-mb: got {args.chunk_mb:g}, expected 0 < MiB <= 32")
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=args.file.stat().st_size, unit="B", unit_scale=True, desc=args.file.name, file=sys.stderr)

    def progress(sent: int, total: int) -> None:
        if bar is not None:
            bar.n = sent
            bar.refresh()

    try:
        reference = client.upload_checkpoint(args.file, chunk_bytes=int(args.chunk_mb * 2**20), progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(reference, flush=True)
    print(f"gansvc upload: stored; start a run from it with --init-from {reference}", file=sys.stderr)
    return 0


def cancel(client, args) -> int:
    """Cancel a job and (unless --no-wait) wait until it has stopped; return 0 if it ended CANCELLED."""
    from gansvc.clients.python import TERMINAL

    job = client.cancel(args.job)
    if not args.no_wait and job.state not in TERMINAL:
        print(f"gansvc cancel: {job.id}: waiting for it to checkpoint and stop", file=sys.stderr)
        job = client.wait(job.id)
    print(f"job {job.id} {state_name(job.state)}" + (f": {job.message}" if job.message else ""))
    return 0 if job.state in (pb.JOB_STATE_CANCELLED,) or args.no_wait else 1


def health(client, args) -> int:
    """Print the server's health status; return 0 when SERVING, else 1."""
    import grpc

    try:
        status = client.health(args.service, timeout=args.timeout)
    except grpc.RpcError as error:
        print(f"UNREACHABLE: {error.code().name}: {error.details()}")
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


COMMANDS = {
    "submit": submit, "watch": watch, "jobs": jobs, "samples": samples, "cancel": cancel, "download": download,
    "upload": upload, "health": health,
}  # fmt: skip
