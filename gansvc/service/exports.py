"""ExportGenerator: a training job's generator exported (gansvc.train.export) into its run directory.

The files go to exports/ in the run directory, named by what they hold (generator[_best][_ema|_raw] +
.torchscript.pt or .onnx, the contract beside as NAME.json), so the client downloads them with
DownloadArtifact like any other artefact (chunked, SHA-256, resumable) and a repeated request replaces
them atomically. Exports run in the server process on the CPU, one at a time (gansvc.train.export holds
a lock: tracing is process-wide state); they take about a second for the built-in models.
"""

from __future__ import annotations

from pathlib import Path

from gansvc.service.errors import InvalidField, MissingReference, WrongState
from gansvc.service.messages import pb

EXPORTS = "exports"
_SUFFIXES = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
_FORMATS = {pb.EXPORT_FORMAT_TORCHSCRIPT: "torchscript", pb.EXPORT_FORMAT_ONNX: "onnx"}


def export_name(fmt: str, best: bool, ema: bool | None) -> str:
    """Return the artifact name of an export, e.g. exports/generator_best_ema.onnx."""
    weights = "" if ema is None else "_ema" if ema else "_raw"
    return f"{EXPORTS}/generator{'_best' if best else ''}{weights}{_SUFFIXES[fmt]}"


def export_job_generator(run_dir: Path, request: pb.ExportGeneratorRequest) -> pb.ExportedGenerator:
    """Return the ExportedGenerator answer for a training job's run directory, its files written there."""
    import json

    from gansvc.runtime.plugins import PluginError
    from gansvc.train.export import ExportError, ExportUnavailable, export_generator_file
    from gansvc.train.latents import SamplingError
    from gansvc.train.sampling import open_generator

    fmt = _FORMATS.get(request.format)
    if fmt is None:
        known = request.format in pb.ExportFormat.values()
        got = pb.ExportFormat.Name(request.format) if known else str(request.format)
        raise InvalidField("format", f"got {got}, expected EXPORT_FORMAT_TORCHSCRIPT or EXPORT_FORMAT_ONNX")
    ema = request.ema if request.HasField("ema") else None
    try:
        loaded = open_generator(run_dir, "cpu", best=request.best, ema=ema)
    except SamplingError as error:
        if error.field == "best":
            raise MissingReference("best", f"job {run_dir.name} has no best generator yet (kept at evaluations "
                                           "with the spec's keep_best)") from None  # fmt: skip
        what = "kept no EMA weights (its ema_decay is 0)" if ema else "has no checkpoint with G's own weights"
        raise WrongState(f"ema: job {run_dir.name} {what}") from None
    except FileNotFoundError:
        raise MissingReference("job_id", f"job {run_dir.name} has no checkpoint yet") from None
    except ValueError as error:  # a damaged file: the job's state, not the request, is at fault
        raise WrongState(str(error)) from None
    name = export_name(fmt, request.best, ema)
    try:
        result = export_generator_file(loaded, fmt, run_dir / name, source=loaded.file.relative_to(run_dir).as_posix())
    except (ExportError, ExportUnavailable, PluginError) as error:
        raise WrongState(f"format: job {run_dir.name}'s generator cannot be exported as {fmt}: {error}") from None
    return pb.ExportedGenerator(
        artifact=name, contract_artifact=result.contract_path.relative_to(run_dir).as_posix(),
        contract_json=json.dumps(result.contract), size_bytes=result.contract["size_bytes"],
        sha256=result.contract["sha256"], step=loaded.step, ema=loaded.ema, max_abs_error=result.max_abs_error,
    )  # fmt: skip
