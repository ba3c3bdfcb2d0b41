"""The training spec: every setting of a run, validated where it is read (CLI, TOML/JSON file, gRPC)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

DATASETS = ("fashion-mnist", "mnist", "cifar10", "gaussian-mixture")  # plus folder:PATH
MODELS = ("mlp", "dcgan")
LOSSES = ("bce", "hinge", "wasserstein")
PRECISIONS = ("fp32", "bf16")
DCGAN_SIZES = (28, 32, 64, 128)
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class SpecError(ValueError):
    """A bad training setting; str() names the field and the value, and says what was expected."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass
class TrainSpec:
    """All settings of one training run; JSON/TOML keys are the field names."""

    # data
    dataset: str = "fashion-mnist"  # fashion-mnist | mnist | cifar10 | folder:PATH | gaussian-mixture
    data_root: str = ""  # "" = the data set's default location
    image_size: int = 0  # 0 = the data set's own (folder: 64); otherwise images are resized to it
    # models
    model: str = "dcgan"  # mlp | dcgan
    z_dim: int = 100
    width: int = 64  # DCGAN base channels
    mlp_hidden: int = 256  # MLP hidden units (the seeds' 256)
    # objective and regularisers
    loss: str = "bce"  # bce | hinge | wasserstein
    g_saturating: bool = False  # bce only: the minimax G loss log(1 - D(G(z)))
    spectral_norm: bool = False  # spectral normalisation of every D layer (replaces D's BatchNorm)
    gradient_penalty: float = 0.0  # WGAN-GP weight (penalty on ||grad D(x_hat)|| - 1), 0 = off
    r1_gamma: float = 0.0  # R1 weight (gamma/2 * ||grad D(x)||^2 on real data), 0 = off
    n_critic: int = 1  # D steps per G step
    real_label: float = 1.0  # < 1: one-sided label smoothing (bce only)
    # optimisation
    batch_size: int = 64
    epochs: float = 0.0  # exactly one of epochs / steps is > 0
    steps: int = 0  # generator steps
    # Two time scales, G the faster. Measured on Fashion-MNIST (DCGAN, 2990 steps, fmnist-cnn FID):
    # 2e-4 / 2e-4 gave 87.7, G 1e-3 / D 4e-4 gave 47.0 (G 1.6e-3: 43.9); hinge + spectral norm learnt
    # slower than BatchNorm in D on such budgets (see bench/quality.py and the README).
    lr_g: float = 1e-3
    lr_d: float = 4e-4
    beta1: float = 0.5
    beta2: float = 0.999
    ema_decay: float = 0.999  # EMA of G's weights (with a short warm-up), 0 = off
    precision: str = "fp32"  # fp32 | bf16 (autocast: GPUs, and CPUs with bf16 units)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    threads: int = 0  # CPU threads for torch, 0 = all cores
    # what the user watches
    log_every: int = 50
    sample_every: int = 500  # 0 = at the end only
    eval_every: int = 0  # 0 = at the end only
    eval_samples: int = 5000  # 0 = no FID / IS
    checkpoint_every: int = 1000  # 0 = at the end only
    keep_checkpoints: int = 0  # newest step_*.pt files kept (latest.pt always); 0 = keep all
    tensorboard: bool = True  # write TensorBoard event files under run_dir/tensorboard
    max_minutes: float = 0.0  # 0 = no wall-clock limit
    nproc: int = 1  # processes (devices) per node under torch.distributed; batch_size is the global batch

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict) -> TrainSpec:
        """Return the spec for a dict of field names; unknown keys and bad values raise SpecError."""
        if not isinstance(data, dict):
            raise SpecError("spec", f"expected a mapping of settings, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise SpecError(str(key), f"unknown setting {key!r} (known: {', '.join(known)})")
            values[key] = _coerce(key, known[key].type, value)
        spec = cls(**values)
        spec.validate()
        return spec

    @classmethod
    def from_file(cls, path: str | Path) -> TrainSpec:
        """Return the spec stored in a .json or .toml file (a [train] table in TOML is also accepted)."""
        path = Path(path)
        if not path.is_file():
            raise SpecError("spec", f"spec file {str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8")
        suffix = path.suffix.lower()
        try:
            if suffix == ".json":
                data = json.loads(text)
            elif suffix == ".toml":
                import tomllib

                data = tomllib.loads(text)
            else:
                raise SpecError("spec", f"spec file {str(path)!r}: expected a .json or .toml file")
        except (json.JSONDecodeError, ValueError) as error:
            if isinstance(error, SpecError):
                raise
            raise SpecError("spec", f"cannot parse {str(path)!r}: {error}") from None
        if isinstance(data, dict) and set(data) == {"train"} and isinstance(data["train"], dict):
            data = data["train"]
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        """Return the spec as a JSON-serialisable dict (keys = field names)."""
        return dataclasses.asdict(self)

    def with_overrides(self, **overrides) -> TrainSpec:
        """Return a validated copy with some fields replaced (None values are ignored)."""
        data = self.to_dict()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return TrainSpec.from_dict(data)

    # ------------------------------------------------------------------ checks
    def validate(self) -> TrainSpec:
        """Check every setting and their combinations; return self or raise SpecError naming the field."""
        if self.dataset.startswith("folder:"):
            if not self.dataset[len("folder:") :].strip():
                raise SpecError("dataset", "folder:PATH needs a path, e.g. 'folder:/data/faces'")
        elif self.dataset not in DATASETS:
            raise SpecError("dataset", f"got {self.dataset!r}, expected one of {', '.join(DATASETS)} or folder:PATH")
        _at_least("image_size", self.image_size, 0)
        if self.image_size and not 4 <= self.image_size <= 1024:
            raise SpecError("image_size", f"got {self.image_size}, expected 0 (the data set's own) or 4..1024")
        _choice("model", self.model, MODELS)
        if self.dataset == "gaussian-mixture":
            if self.model != "mlp":
                raise SpecError("model", f"gaussian-mixture is 2-D points: use model 'mlp', not {self.model!r}")
            if self.image_size:
                raise SpecError("image_size", "gaussian-mixture has no images: leave image_size at 0")
        if self.model == "dcgan" and self.image_size and self.image_size not in DCGAN_SIZES:
            raise SpecError(
                "image_size", f"dcgan builds {', '.join(map(str, DCGAN_SIZES))} pixel images, got {self.image_size}"
            )
        _at_least("z_dim", self.z_dim, 1)
        _at_least("width", self.width, 1)
        _at_least("mlp_hidden", self.mlp_hidden, 1)
        _choice("loss", self.loss, LOSSES)
        if self.g_saturating and self.loss != "bce":
            raise SpecError("g_saturating", f"the saturating G loss exists for loss 'bce' only, not {self.loss!r}")
        _at_least("gradient_penalty", self.gradient_penalty, 0.0)
        _at_least("r1_gamma", self.r1_gamma, 0.0)
        _at_least("n_critic", self.n_critic, 1)
        if not 0.0 < self.real_label <= 1.0:
            raise SpecError("real_label", f"got {self.real_label}, expected 0 < real_label <= 1")
        if self.real_label != 1.0 and self.loss != "bce":
            raise SpecError("real_label", f"label smoothing applies to loss 'bce' only, not {self.loss!r}")
        _at_least("batch_size", self.batch_size, 1)
        _at_least("epochs", self.epochs, 0.0)
        _at_least("steps", self.steps, 0)
        if (self.epochs > 0) == (self.steps > 0):
            field = "steps" if self.steps > 0 else "epochs"
            raise SpecError(
                field, f"set exactly one of epochs or steps (got epochs={self.epochs}, steps={self.steps})"
            )
        for name in ("lr_g", "lr_d"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise SpecError(name, f"got {value}, expected a learning rate in (0, 1)")
        for name in ("beta1", "beta2", "ema_decay"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise SpecError(name, f"got {value}, expected 0 <= {name} < 1")
        _choice("precision", self.precision, PRECISIONS)
        if not _DEVICE.match(self.device):
            raise SpecError("device", f"got {self.device!r}, expected auto, cpu, cuda or cuda:N")
        if not 0 <= self.seed < 2**63:
            raise SpecError("seed", f"got {self.seed}, expected 0 <= seed < 2**63")
        _at_least("threads", self.threads, 0)
        _at_least("log_every", self.log_every, 1)
        _at_least("sample_every", self.sample_every, 0)
        _at_least("eval_every", self.eval_every, 0)
        if self.eval_samples == 1 or self.eval_samples < 0:
            raise SpecError("eval_samples", f"got {self.eval_samples}, expected 0 (no evaluation) or >= 2")
        _at_least("checkpoint_every", self.checkpoint_every, 0)
        _at_least("keep_checkpoints", self.keep_checkpoints, 0)
        _at_least("max_minutes", self.max_minutes, 0.0)
        _at_least("nproc", self.nproc, 1)
        if self.nproc > 1 and self.device.startswith("cuda:"):
            raise SpecError(
                "device",
                f"{self.device!r} names one GPU, but nproc={self.nproc} processes need one each: use 'cuda' (rank r "
                "takes the r-th visible GPU; choose them with CUDA_VISIBLE_DEVICES) or 'auto'",
            )
        if self.batch_size % self.nproc:
            raise SpecError(
                "batch_size",
                f"the global batch {self.batch_size} does not divide among nproc={self.nproc} processes; use a "
                f"multiple of {self.nproc}",
            )
        return self

    # ------------------------------------------------------------------ derived
    @property
    def folder_path(self) -> str | None:
        """Return the PATH of a folder:PATH data set, else None."""
        return self.dataset[len("folder:") :] if self.dataset.startswith("folder:") else None


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """Return `value` as the field's type (int, float, bool, str) or raise SpecError naming the field."""
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise SpecError(name, f"expected true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, bool):
            raise SpecError(name, f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise SpecError(name, f"expected an integer, got {value!r}")
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(name, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise SpecError(name, f"expected a finite number, got {value!r}")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise SpecError(name, f"expected a string, got {value!r}")
        return value
    return value


def _at_least(name: str, value, minimum) -> None:
    if value < minimum:
        raise SpecError(name, f"got {value}, expected >= {minimum}")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SpecError(name, f"got {value!r}, expected one of {', '.join(choices)}")
