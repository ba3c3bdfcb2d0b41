"""Starting a run from another run's weights (issue 21): init_from, init_parts and FreezeD. A part of the Trainer.

init_from names a checkpoint (a run directory means its checkpoints/latest.pt); init_parts says what of it is
loaded: G, D, the EMA of G and the optimisers' state (Adam's moments; the learning rates and betas stay this
run's). The new run starts at step 0 with its own spec: data, noise, schedule and counters are its own, and
once it has checkpointed, a resume continues from its own checkpoint as any run does.

Fitting: every parameter and buffer of a loaded network must be in the checkpoint with the same shape, and
nothing else may be there; otherwise the run is refused with every mismatch named (name and both shapes).
With 'partial' in init_parts the entries that fit are loaded and the rest keep their fresh initialisation,
each one named in a log line: fine-tuning onto another resolution or class count. Nothing is skipped silently.

Files are read with torch.load(weights_only=True): tensors and plain containers only, never an object's
code, so a foreign or damaged file is an error naming the file, and nothing in it runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from gansvc.runtime.rundir import GENERATOR_FORMAT, latest_checkpoint
from gansvc.train import checkpoints
from gansvc.train.spec import PARTIAL, SpecError, init_parts, parse_init_from

FIELD = "init_from"


def checkpoint_source(init_from: str) -> Path:
    """Return the checkpoint file a local init_from names: the file itself, or a run directory's latest.pt.

    Raises SpecError('init_from') for a job: or upload: reference (a server resolves those) or a missing file.
    """
    reference = parse_init_from(init_from)
    if reference.kind != "path":
        raise SpecError(FIELD, f"{init_from!r} names a checkpoint on a gansvc server (submit the run there); "
                        "here give a run directory or checkpoint file")  # fmt: skip
    path = Path(init_from).expanduser()
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise SpecError(FIELD, f"the run directory {str(path)!r} has no checkpoints/latest.pt")
        return latest
    if not path.is_file():
        raise SpecError(FIELD, f"{str(path)!r} is neither a run directory nor a checkpoint file")
    return path


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """Return the checkpoint at `path`, checked to hold what a start from it needs; ValueError says what is wrong.

    torch.load(weights_only=True): a pickle of anything but tensors and plain containers is refused unrun.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # pickle, zip and I/O errors: the file is not one we can read
        raise ValueError(f"not a readable checkpoint ({_first_line(error)})") from None
    if isinstance(state, dict) and state.get("format") == GENERATOR_FORMAT:
        raise ValueError("an exported generator, not a training checkpoint (checkpoints/*.pt)")
    if not isinstance(state, dict) or state.get("format") != checkpoints.CHECKPOINT_FORMAT:
        raise ValueError(f"not a gansvc checkpoint (no format {checkpoints.CHECKPOINT_FORMAT!r})")
    check_structure(state)
    return state


def check_structure(state: dict) -> None:
    """Raise ValueError naming the first entry of a checkpoint that is not what the trainer writes."""
    for name in ("G", "D"):
        _state_dict(state.get(name), name)
    ema = state.get("ema")
    if ema is not None:
        if not isinstance(ema, dict) or not isinstance(ema.get("updates"), int):
            raise ValueError("ema: expected {'model': ..., 'updates': N}")
        _state_dict(ema.get("model"), "ema.model")
    for name in ("opt_g", "opt_d"):
        saved = state.get(name)
        if not (isinstance(saved, dict) and isinstance(saved.get("state"), dict)
                and isinstance(saved.get("param_groups"), list)):  # fmt: skip
            raise ValueError(f"{name}: expected an optimiser state dict")
    if not isinstance(state.get("step"), int) or not isinstance(state.get("spec"), dict):
        raise ValueError("step / spec: missing (not written by gansvc's trainer)")


def _state_dict(value, name: str) -> None:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{name}: expected a state dict of tensors, got {type(value).__name__}")
    for key, tensor in value.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name}: entry {key!r} is a {type(tensor).__name__}, not a tensor")


def weights_digest(state_dict: dict) -> str:
    """Return the sha256 (hex) of a state dict's tensors: each name, dtype, shape and bytes, names sorted."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Fit:
    """How a checkpoint's state dict fits a module: entries that load, and every one that does not."""

    what: str
    loadable: dict = field(default_factory=dict)
    mismatched: list[str] = field(default_factory=list)  # "name: checkpoint [a, b] vs model [c, d]"
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model

    @property
    def complete(self) -> bool:
        """Return whether every entry fits (a strict load)."""
        return not (self.mismatched or self.missing or self.unexpected)

    def problems(self) -> str:
        """Return every misfit in one line."""
        parts = []
        if self.mismatched:
            parts.append("shapes differ: " + ", ".join(self.mismatched))
        if self.missing:
            parts.append("not in the checkpoint: " + ", ".join(self.missing))
        if self.unexpected:
            parts.append("not in this model: " + ", ".join(self.unexpected))
        return f"{self.what}: " + "; ".join(parts)


def fit(module: nn.Module, saved: dict, what: str) -> Fit:
    """Return how the state dict `saved` fits `module` (names and shapes of its parameters and buffers)."""
    result = Fit(what)
    own = module.state_dict()
    for name, tensor in own.items():
        if name not in saved:
            result.missing.append(f"{name} {list(tensor.shape)}")
        elif tuple(saved[name].shape) != tuple(tensor.shape):
            result.mismatched.append(f"{name} {list(saved[name].shape)} vs {list(tensor.shape)}")
        else:
            result.loadable[name] = saved[name]
    result.unexpected = [f"{name} {list(saved[name].shape)}" for name in saved if name not in own]
    return result


@dataclass
class InitPlan:
    """What a start from a checkpoint loads into which module, checked before anything is changed."""

    fits: dict[str, Fit]  # "G", "D", "ema" -> Fit
    optimizers: tuple[str, ...]  # "opt_g", "opt_d"
    skipped: list[str]  # partial: every entry left at its fresh initialisation, "G: name [shape] (why)"


def plan(spec, state: dict, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> InitPlan:
    """Return the InitPlan of loading `state` into `modules` ({"G", "D", "ema"}) as spec.init_parts asks.

    Raises SpecError naming init_from (a checkpoint that lacks a part, or misfits without 'partial') or
    init_parts (optim with weights that only partly fit).
    """
    parts = init_parts(spec.init_parts)
    partial = PARTIAL in parts
    sources = {"G": ("g", state["G"]), "D": ("d", state["D"])}
    if "ema" in parts:
        if state.get("ema") is None:
            raise SpecError("init_parts", "ema: the checkpoint holds no EMA (its run had ema_decay 0)")
        sources["ema"] = ("ema", state["ema"]["model"])
    fits, skipped, refused = {}, [], []
    for what, (part, saved) in sources.items():
        if part not in parts:
            continue
        result = fit(modules[what], saved, what)
        fits[what] = result
        if result.complete:
            continue
        if not partial:
            refused.append(result.problems())
        elif not result.loadable:
            refused.append(f"{what}: no parameter fits ({result.problems()})")
        else:
            skipped += [f"{what}: {entry} (shape differs)" for entry in result.mismatched]
            skipped += [f"{what}: {entry} (not in the checkpoint)" for entry in result.missing]
            skipped += [f"{what}: {entry} (not in this model: ignored)" for entry in result.unexpected]
    if refused:
        hint = "" if partial else f" (add {PARTIAL} to init_parts to load only the layers that fit)"
        raise SpecError(FIELD, "the checkpoint does not fit this run's model: " + " | ".join(refused) + hint)
    chosen = []
    if "optim" in parts:
        for what, name in (("G", "opt_g"), ("D", "opt_d")):
            if what not in fits:
                continue
            if not fits[what].complete:
                raise SpecError("init_parts", f"optim: {what} fits only partly, so its optimiser state cannot be "
                                "loaded; leave optim out")  # fmt: skip
            _check_optimizer(optimizers[name], state[name], name)
            chosen.append(name)
    return InitPlan(fits, tuple(chosen), skipped)


def check_frozen_loaded(discriminator: nn.Module, frozen: list[nn.Parameter], plan_: InitPlan) -> None:
    """Raise SpecError('freeze_d_layers') when a frozen parameter of D would keep its fresh initialisation."""
    frozen_ids = {id(p) for p in frozen}
    loaded = plan_.fits["D"].loadable if "D" in plan_.fits else {}
    fresh = [name for name, p in discriminator.named_parameters() if id(p) in frozen_ids and name not in loaded]
    if fresh:
        raise SpecError("freeze_d_layers", "would freeze parameters the checkpoint does not fill (they keep their "
                        f"fresh initialisation): {', '.join(fresh)}; freeze fewer blocks")  # fmt: skip


def _check_optimizer(optimizer: torch.optim.Optimizer, saved: dict, name: str) -> None:
    """Raise SpecError('init_parts') unless `saved` holds a state for each of the optimiser's parameters in order."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    indices = [i for group in saved["param_groups"] for i in group.get("params", [])]
    if len(indices) != len(params):
        raise SpecError("init_parts", f"optim: {name} holds {len(indices)} parameters, this run trains {len(params)} "
                        "(a different freeze_d_layers?); leave optim out")  # fmt: skip
    for position, (param, index) in enumerate(zip(params, indices)):
        moments = saved["state"].get(index, {})
        for key, value in moments.items():
            if isinstance(value, torch.Tensor) and value.dim() and tuple(value.shape) != tuple(param.shape):
                raise SpecError("init_parts", f"optim: {name}'s parameter {position} has {key} "
                                f"{list(value.shape)}, this run's is {list(param.shape)}")  # fmt: skip


def apply(plan_: InitPlan, state: dict, modules: dict[str, nn.Module], optimizers: dict) -> None:
    """Load what `plan_` says into the modules and optimisers (keeping their learning rates and betas)."""
    for what, result in plan_.fits.items():
        modules[what].load_state_dict(result.loadable, strict=result.complete)
    for name in plan_.optimizers:
        optimizer = optimizers[name]
        hyper = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        optimizer.load_state_dict(state[name])
        for group, own in zip(optimizer.param_groups, hyper):
            group.update(own)  # this run's lr, betas, eps, fused: only Adam's moments and step counts come along


class TrainerInit:
    """The Trainer's start from weights and FreezeD (a part of gansvc.train.trainer.Trainer)."""

    def _freeze_d(self) -> None:
        """FreezeD: D's first freeze_d_layers blocks require no gradient (before DDP and the optimiser see D)."""
        from gansvc.models import freeze_blocks

        self.frozen_d: list[nn.Parameter] = []
        if not self.spec.freeze_d_layers:
            return
        try:
            self.frozen_d = freeze_blocks(self.D, self.spec.freeze_d_layers)
        except ValueError as error:
            raise SpecError("freeze_d_layers", str(error)) from None

    def _read_init(self) -> tuple[Path, dict] | None:
        """Return (file, checkpoint) init_from names, read on this rank (None without init_from)."""
        if not self.spec.init_from:
            return None
        path = checkpoint_source(self.spec.init_from)
        try:
            return path, read_checkpoint(path)
        except ValueError as error:
            raise SpecError(FIELD, f"{path}: {error}") from None

    def _init_from(self, path: Path, state: dict) -> None:
        """Load the checkpoint's parts into this fresh run (step 0) and say what was loaded and what was not."""
        from gansvc.runtime.events import Log
        from gansvc.train.ema import EMA

        modules = {"G": self.G, "D": self.D}
        if self.ema is not None:
            modules["ema"] = self.ema.model
        optimizers = {"opt_g": self.opt_g, "opt_d": self.opt_d}
        chosen = plan(self.spec, state, modules, optimizers)
        check_frozen_loaded(self.D, self.frozen_d, chosen)
        apply(chosen, state, modules, optimizers)
        if self.ema is not None:
            if "ema" in chosen.fits:
                self.ema.updates = int(state["ema"]["updates"])  # the average goes on without a new warm-up
            else:
                self.ema = EMA(self.G, self.spec.ema_decay)  # the average starts at the loaded G
        loaded = ", ".join(chosen.fits) + ("" if not chosen.optimizers else " + " + ", ".join(chosen.optimizers))
        digests = ", ".join(f"{what} {weights_digest(module.state_dict())}" for what, module in modules.items()
                            if what in chosen.fits)  # fmt: skip
        self._startup_logs.append(Log(message=(
            f"init_from: loaded {loaded} from {path} (step {state['step']} of its run); this run starts at step 0; "
            f"weights sha256: {digests}")))  # fmt: skip
        if chosen.skipped:
            self._startup_logs.append(Log(level="warning", message=(
                f"init_from ({PARTIAL}): {len(chosen.skipped)} entries did not fit and keep their fresh "
                "initialisation: " + "; ".join(chosen.skipped))))  # fmt: skip



def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
