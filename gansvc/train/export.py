"""A trained generator as a file that runs without gansvc: TorchScript (`torch.jit.load`) or ONNX (onnxruntime).

The exported module takes a latent `z` [N, z_dim] float32 (and, for a conditional model, `labels` [N]
int64) and returns `images` [N, C, H, W] float32 in [-1, 1], the clamp that gansvc's own samples get
included; N is free (the ONNX file has a dynamic batch axis). A seed's latent is
`torch.randn(z_dim, generator=torch.Generator().manual_seed(seed))` (gansvc.train.latents), so the
file and `gansvc sample --seeds` give the same images for the same seeds.

Every export is verified before it is renamed into place: the latents of seeds 0..6 (and a batch of
one) go through gansvc's own generator and through the written bytes, loaded back by torch.jit.load or
onnxruntime, and the two must agree within VERIFY_TOLERANCE (max abs). The input contract (latent
size, classes, output shape and range, the seed recipe, the verification) is written beside the file
as PATH.json.

Both formats trace the generator (torch.jit.trace; the ONNX exporter with dynamo=False, which needs no
onnxscript), so a generator whose forward reads tensor values in Python (data-dependent control flow,
.item(), .numpy()) would be frozen to the example's path: that is refused, naming the operator and the
line. So are Python functions that TorchScript cannot save (a torch.autograd.Function) and operators
ONNX has no equivalent for (named as the exporter names them, e.g. aten::linalg_svd).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import gansvc
from gansvc.atomic import atomic_write_bytes, atomic_write_text
from gansvc.train.latents import seed_latents
from gansvc.train.sampling import LoadedGenerator, images_for

FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17  # in every onnxruntime since 1.13
VERIFY_TOLERANCE = 1e-5
VERIFY_SEEDS = tuple(range(7))  # a batch of 7 and a batch of 1, neither the traced batch size
TRACE_BATCH = 2
SEED_RECIPE = "torch.randn(z_dim, generator=torch.Generator().manual_seed(seed))"
CONTRACT_SUFFIX = ".json"

# Tracing and the warnings it raises are process-wide state: one export at a time.
_LOCK = threading.Lock()
# TracerWarnings that mean a tensor's value left the graph: the trace holds a constant where the generator
# computes something from its input. The operator each stands for, by the warning's opening words.
_FROZEN_VALUES = {
    "Converting a tensor to a Python boolean": "Tensor.__bool__ (a tensor's value deciding Python control flow)",
    "Converting a tensor to a Python number": "Tensor.item (a tensor's value read into Python)",
    "Converting a tensor to a Python float": "Tensor.item (a tensor's value read into Python)",
    "Converting a tensor to a Python integer": "Tensor.item (a tensor's value read into Python)",
    "Converting a tensor to a Python index": "Tensor.__index__ (a tensor's value used as a Python index)",
    "Converting a tensor to a NumPy array": "Tensor.numpy (the computation leaves torch)",
    "Using len to get tensor shape": "len(tensor) (a shape read into Python)",
    "Iterating over a tensor": "iter(tensor) (a Python loop over a tensor)",
}


class ExportError(RuntimeError):
    """A generator that cannot be exported (or whose export does not reproduce it); str() names the operator."""


class ExportUnavailable(RuntimeError):
    """The ONNX export needs a package that is not installed; str() says which and how to install it."""


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the file, its contract beside it (path and contents) and the verified error."""

    path: Path
    contract_path: Path
    contract: dict
    max_abs_error: float


class _Exported(nn.Module):
    """The module that is exported: the generator's own network, its output clamped to [-1, 1] for images."""

    def __init__(self, net: nn.Module, images: bool):
        super().__init__()
        self.net = net
        self.images = images

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        out = self.net(z) if labels is None else self.net(z, labels)
        return out.clamp(-1.0, 1.0) if self.images else out


def contract_path(path: str | Path) -> Path:
    """Return the contract file of an export: PATH.json beside PATH."""
    path = Path(path)
    return path.with_name(path.name + CONTRACT_SUFFIX)


def export_generator_file(loaded: LoadedGenerator, fmt: str, path: str | Path,
                          source: str | None = None) -> ExportResult:  # fmt: skip
    """Export `loaded`'s generator as `fmt` (torchscript | onnx) to `path`, verified, with its contract beside it.

    `source` names the weights in the contract (default: the file they were read from). Raises ExportError
    naming the operator that stops the export, ExportUnavailable without onnx / onnxruntime (ONNX only).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format: got {fmt!r}, expected one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    path = Path(path)
    generator = loaded.generator.cpu().eval()
    classes = int(getattr(generator, "num_classes", 0) or 0)
    out_shape = tuple(int(s) for s in getattr(generator, "out_shape", ()))
    module = _Exported(_network(generator), images=len(out_shape) == 3).eval()
    with _LOCK, torch.no_grad():
        data = _export_bytes(module, fmt, generator.z_dim, classes)
        error = _verify(data, fmt, generator, classes)
    atomic_write_bytes(path, data)
    contract = _contract(loaded, fmt, path, data, source, classes, out_shape, error)
    contract_file = atomic_write_text(contract_path(path), json.dumps(contract, indent=2) + "\n")
    return ExportResult(path, contract_file, contract, error)


def _network(generator: nn.Module) -> nn.Module:
    """Return the module to export: a plugin's own network (its wrapper only checks the contract in Python)."""
    from gansvc.models.plugin import PluginGenerator

    return generator.net if isinstance(generator, PluginGenerator) else generator


def _example(z_dim: int, classes: int, n: int) -> tuple[torch.Tensor, ...]:
    z = seed_latents(range(1000, 1000 + n), z_dim)
    return (z,) if not classes else (z, torch.arange(n, dtype=torch.int64) % classes)


def _export_bytes(module: nn.Module, fmt: str, z_dim: int, classes: int) -> bytes:
    example = _example(z_dim, classes, TRACE_BATCH)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        # torch 2.x deprecates TorchScript and the tracing ONNX exporter in favour of torch.export; both are
        # what `torch.jit.load` and a dependency-light onnxruntime consumer need, so the notices are noise here.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            traced = torch.jit.trace(module, example, check_trace=False)
        except Exception as error:  # noqa: BLE001 - any failure of a model's forward under the tracer
            raise ExportError(f"tracing the generator failed: {type(error).__name__}: {_first_line(error)}") from None
        _refuse_frozen_values(caught)
        if fmt == "torchscript":
            return _torchscript_bytes(traced)
        return _onnx_bytes(module, example, classes)


def _refuse_frozen_values(caught) -> None:
    torch_dir = str(Path(torch.__file__).parent)
    for warning in caught:
        if not issubclass(warning.category, torch.jit.TracerWarning) or warning.filename.startswith(torch_dir):
            continue  # torch's own layers say so about their internals, which are traced correctly
        text = str(warning.message)
        for opening, operator in _FROZEN_VALUES.items():
            if text.startswith(opening):
                raise ExportError(f"the operator {operator} at {warning.filename}:{warning.lineno} cannot be exported: "
                                  "a trace would freeze what it computed for the example input")  # fmt: skip


def _torchscript_bytes(traced) -> bytes:
    buffer = io.BytesIO()
    try:
        torch.jit.save(traced, buffer)
    except RuntimeError as error:
        called = re.search(r"Could not export Python function call '([^']+)'", str(error))
        if called:
            raise ExportError(f"the operator {called.group(1)} (a Python function, e.g. a torch.autograd.Function) "
                              "cannot be exported to TorchScript: write it with torch operations") from None  # fmt: skip
        raise ExportError(f"TorchScript cannot save the traced generator: {_first_line(error)}") from None
    return buffer.getvalue()


def require_onnx() -> None:
    """Raise ExportUnavailable unless onnx (torch's exporter writes with it) and onnxruntime (verification) import."""
    import importlib

    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportUnavailable(f"the ONNX export needs {' and '.join(missing)}, not installed here: pip install "
                                f"{' '.join(missing)} (requirements.txt pins the tested versions)")  # fmt: skip


def _onnx_bytes(module: nn.Module, example, classes: int) -> bytes:
    names = ["z", "labels"][: 1 + bool(classes)]
    buffer = io.BytesIO()
    # The exporter logs its whole graph on a failure (always: its verbosity check tests a function object); send
    # that to stderr, where it precedes the error naming the operator, not to stdout with the command's output.
    set_log_stream = getattr(torch._C, "_jit_set_onnx_log_output_stream", None)
    if set_log_stream is not None:
        set_log_stream("stderr")
    try:
        torch.onnx.export(
            module, example, buffer, dynamo=False, opset_version=ONNX_OPSET, input_names=names,
            output_names=["images"], dynamic_axes={name: {0: "batch"} for name in [*names, "images"]},
        )  # fmt: skip
    except Exception as error:  # noqa: BLE001 - the exporter's errors name the operator in their text
        operator = re.search(r"operator '([^']+)'", str(error))
        if operator:
            raise ExportError(f"the operator {operator.group(1)} cannot be exported to ONNX opset {ONNX_OPSET}: "
                              f"{_first_line(error)}") from None  # fmt: skip
        raise ExportError(f"the ONNX exporter failed: {type(error).__name__}: {_first_line(error)}") from None
    return buffer.getvalue()


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0][:500] if lines else type(error).__name__


def onnx_session(data: bytes | str | Path, threads: int | None = None):
    """Return an onnxruntime CPU InferenceSession of an exported file (bytes or path)."""
    require_onnx()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or max(1, torch.get_num_threads())
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are not the user's
    source = str(data) if isinstance(data, Path) else data
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _runner(data: bytes, fmt: str):
    """Return a function (z, labels) -> output array of the exported bytes, loaded the way a user loads them."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
        return lambda z, labels: (loaded(z) if labels is None else loaded(z, labels)).numpy()
    session = onnx_session(data)

    def run(z, labels):
        feed = {"z": z.numpy()} | ({} if labels is None else {"labels": labels.numpy()})
        return session.run(["images"], feed)[0]

    return run


def _verify(data: bytes, fmt: str, generator: nn.Module, classes: int) -> float:
    """Return the max abs difference between gansvc's images and the export's for seeds VERIFY_SEEDS, in a batch
    of 7 and of 1; ExportError when it exceeds VERIFY_TOLERANCE or the file refuses a batch size."""
    z = seed_latents(VERIFY_SEEDS, generator.z_dim)
    labels = torch.arange(len(VERIFY_SEEDS), dtype=torch.int64) % classes if classes else None
    expected = images_for(generator, z, labels).numpy()
    run = _runner(data, fmt)
    worst = 0.0
    for stop in (len(VERIFY_SEEDS), 1):
        part = None if labels is None else labels[:stop]
        try:
            got = run(z[:stop], part)
        except Exception as error:  # noqa: BLE001 - the runtime's own errors, reported with the batch size
            raise ExportError(f"the exported {fmt} file fails on a batch of {stop} (traced with {TRACE_BATCH}; a "
                              f"batch size fixed in the forward?): {_first_line(error)}") from None  # fmt: skip
        if got.shape != expected[:stop].shape:
            raise ExportError(f"the exported {fmt} file returns {list(got.shape)} for a batch of {stop}, gansvc "
                              f"{list(expected[:stop].shape)} (a batch size fixed in the forward?)")  # fmt: skip
        worst = max(worst, float(abs(got.astype("float64") - expected[:stop]).max(initial=0.0)))
    if not worst <= VERIFY_TOLERANCE:
        raise ExportError(f"the exported {fmt} file differs from gansvc's generator by {worst:.3g} (max abs) on the "
                          f"same latents, over the {VERIFY_TOLERANCE:g} allowed; nothing was written")  # fmt: skip
    return worst


def _contract(loaded: LoadedGenerator, fmt: str, path: Path, data: bytes, source: str | None, classes: int,
              out_shape: tuple[int, ...], error: float) -> dict:  # fmt: skip
    spec, generator = loaded.spec, loaded.generator
    inputs = [{"name": "z", "dtype": "float32", "shape": ["N", generator.z_dim]}]
    if classes:
        inputs.append({"name": "labels", "dtype": "int64", "shape": ["N"], "range": [0, classes - 1]})
    names = list(getattr(generator, "class_names", None) or [])
    return {
        "format": fmt,
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "load": "torch.jit.load(file)" if fmt == "torchscript" else "onnxruntime.InferenceSession(file)",
        "inputs": inputs,
        "output": {
            "name": "images", "dtype": "float32", "shape": ["N", *out_shape],
            "range": [-1.0, 1.0] if len(out_shape) == 3 else None,
        },  # fmt: skip
        "latent": {"size": generator.z_dim, "distribution": "standard normal", "seed_recipe": SEED_RECIPE},
        "classes": {"count": classes, "names": names} if classes else None,
        "dynamic_batch": True,
        "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
        "source": {
            "weights": source or str(loaded.file), "step": loaded.step, "ema": loaded.ema,
            "model": spec.model, "dataset": spec.dataset,
        },  # fmt: skip
        "verification": {
            "seeds": list(VERIFY_SEEDS), "batch_sizes": [len(VERIFY_SEEDS), 1], "max_abs_error": error,
            "tolerance": VERIFY_TOLERANCE,
        },  # fmt: skip
        "versions": {"gansvc": gansvc.__version__, "torch": torch.__version__.split("+")[0]},
    }
