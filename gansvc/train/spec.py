"""The training spec: every setting of a run, validated where it is read (CLI, TOML/JSON file, gRPC)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable

from gansvc.runtime import registry
from gansvc.train.schedule import LR_SCHEDULES

# Kept importable for callers that read them from here; the names themselves live in the registry.
DATASETS = registry.dataset_names()  # plus folder:PATH
MODELS = registry.model_names()
LOSSES = registry.loss_names()
PRECISIONS = registry.precision_names()
DCGAN_SIZES = registry.model_info("dcgan").image_sizes
LABEL_SAMPLING = ("uniform", "data")
# The conditional recipe's auxiliary-classifier weight (a spec that leaves ac_weight out). At 3 epochs on
# Fashion-MNIST (bench/quality.py, seeds 0 and 1) it took FID from ~41 to ~32 and class agreement from ~69 % to ~89 %.
CONDITIONAL_AC_WEIGHT = 1.0
# The unconditional DCGAN recipe's G is this much wider than D when g_width is left out (issue 22): G 96 / D 64
# gave FID 41.8 / 39.4 at 3 epochs (seeds 0 / 1) against 42.6 / 43.9 with G 64, for ~1.26x the time per step.
DCGAN_G_WIDTH_FACTOR = 1.5
# The conditional DCGAN recipe, width and g_width left out: D at 48 channels, G twice as wide (G 96 / D 48):
# FID 18.4 / 20.3 / 18.3 at 3 epochs (seeds 0-2) against 23.0 / 23.7 with G = D = 64, for 1.24x the per-epoch
# time of the recipe before issue 22; G 96 with D kept at 64 (18.9 / 19.3) took 1.61x, over the 1.5x allowed.
CONDITIONAL_DCGAN_WIDTH = 48
# The unconditional DCGAN recipe on a built-in data set with labels, class_entropy left out (issue 22): CatGAN's
# class-entropy term at this weight took FID from 41.8 / 39.4 to 24.1 / 25.3 at 3 epochs (seeds 0 / 1).
DCGAN_CLASS_ENTROPY = 1.0
CONDITIONAL_DCGAN_G_WIDTH_FACTOR = 2.0
# init_parts (issue 21): what init_from loads, and the word that allows a partial load
INIT_PARTS = ("g", "d", "ema", "optim")
PARTIAL = "partial"
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
# Bounds that keep a run inside what can run at all; the proto's int32 fields hold every value allowed.
_MAX_INT32 = 2**31 - 1
_MAX_STEPS = 10**9  # a billion generator steps is decades of training
_MAX_INTERVAL = 10**9



def takes_class_entropy(values: dict) -> bool:
    """Return whether a DCGAN spec's settings (as given) take the class-entropy term when they leave it out: an
    unconditional run on a built-in data set of labelled images, with no setting the term refuses (pack, accumulate).
    A folder's, an archive's or a plugin's labels are not known before they are loaded, so those runs go without."""
    info = registry.dataset_info(values.get("dataset", TrainSpec.dataset))
    labelled = info is not None and not info.plugin and info.kind == "images" and bool(info.num_classes)
    return (labelled and not values.get("conditional") and values.get("pack", 1) == 1
            and values.get("accumulate", 1) == 1)  # fmt: skip

class SpecError(ValueError):
    """A bad training setting; str() names the field and the value, and says what was expected."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def setting(
    default,
    help: str = "",
    *,
    min: float | None = None,
    max: float | None = None,
    choices: Callable[[], tuple[str, ...]] | None = None,
):
    """Return a TrainSpec field: its default, help text (CLI), inclusive bounds and allowed names (validation)."""
    metadata = {"help": help, "min": min, "max": max, "choices": choices}
    if isinstance(default, dict):  # a JSON object setting: each spec gets its own (empty) dict
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class TrainSpec:
    """All settings of one training run; JSON/TOML keys are the field names.

    Each field's metadata (see `setting`) is the single source of its help text, bounds and allowed
    names: the `gansvc train` flags, the service's validation and the proto parity test read it.
    """

    # data
    dataset: str = setting("fashion-mnist", registry.dataset_choices_text())
    data_root: str = setting("", "folder holding the data set's files (default: its usual place)")
    image_size: int = setting(0, "resize images to this many pixels (0 = the data set's own; folders: 64)", min=0,
                              max=1024)  # fmt: skip
    # models
    model: str = setting("dcgan", " | ".join(registry.model_names()), choices=registry.model_names)
    z_dim: int = setting(100, "noise dimensions", min=1, max=4096)
    width: int = setting(64, f"DCGAN base channel count (left out: {CONDITIONAL_DCGAN_WIDTH} for conditional DCGAN "
                         "runs)", min=1, max=1024)  # fmt: skip
    g_width: int = setting(0, "dcgan: G's own base channel count (0 = width; left out: "
                           f"{DCGAN_G_WIDTH_FACTOR:g} x width, conditional runs {CONDITIONAL_DCGAN_G_WIDTH_FACTOR:g} x): "
                           "G is about a third of a step, so a wider G alone costs less than a wider pair", min=0,
                           max=1024)  # fmt: skip
    g_upsample: bool = setting(False, "dcgan: G doubles its maps by nearest-neighbour upsampling and a 3 x 3 "
                               "convolution instead of 4 x 4 transposed convolutions")  # fmt: skip
    pack: int = setting(1, "dcgan, unconditional: D judges this many images at a time, stacked on the channels "
                        "(PacGAN; 1 = one image)", min=1, max=16)  # fmt: skip
    mlp_hidden: int = setting(256, "MLP hidden units (the seeds' 256)", min=1, max=16384)
    # objective and regularisers
    loss: str = setting("", " | ".join(registry.loss_names()) + " (default: the model's: bce, resnet hinge)",
                        choices=lambda: ("", *registry.loss_names()))  # fmt: skip
    g_saturating: bool = setting(False, "bce only: the minimax G loss log(1 - D(G(z)))")
    relativistic: bool = setting(False, "relativistic average loss (RaGAN, bce | hinge): D and G score each side's "
                                 "logits less the other side's batch mean")  # fmt: skip
    class_entropy: float = setting(0.0, "dcgan, unconditional, labelled data: D also learns to classify the real "
                                   "images, and G's loss adds this weight times the mean entropy of D's class "
                                   "prediction on its fakes less the entropy of their batch mean (CatGAN: each fake "
                                   "one clear class, the classes equally common; 0 = off)", min=0.0, max=1e3)  # fmt: skip
    spectral_norm: bool = setting(False, "spectral normalisation of D's layers (replaces D's BatchNorm)")
    gradient_penalty: float = setting(0.0, "WGAN-GP weight (0 = off)", min=0.0, max=1e6)
    r1_gamma: float = setting(0.0, "R1 penalty weight on real data (0 = off)", min=0.0, max=1e6)
    n_critic: int = setting(1, "D steps per G step", min=1, max=100)
    real_label: float = setting(1.0, "bce target for real samples (< 1: one-sided label smoothing)", min=0.0, max=1.0)
    # optimisation
    # 32, not the usual 64: twice the updates for the same images. At 3 epochs on Fashion-MNIST (DCGAN, fmnist-cnn
    # FID, seeds 0 and 1) 64 gave ~50 and 32 gave ~43 (conditional: ~33 and ~23) for 1.24x the time per epoch.
    batch_size: int = setting(32, "global batch size", min=1, max=65536)
    epochs: float = setting(0.0, "passes over the data (or give --steps)", min=0.0, max=1e6)
    steps: int = setting(0, "generator steps (or give --epochs)", min=0, max=_MAX_STEPS)
    # Two time scales, G the faster. Measured on Fashion-MNIST (DCGAN, 2990 steps, fmnist-cnn FID):
    # 2e-4 / 2e-4 gave 87.7, G 1e-3 / D 4e-4 gave 47.0 (G 1.6e-3: 43.9); hinge + spectral norm learnt
    # slower than BatchNorm in D on such budgets (see bench/quality.py and the README).
    lr_g: float = setting(1e-3, "G's learning rate" + registry.model_optimizer_note("lr_g"), min=0.0, max=1.0)
    lr_d: float = setting(4e-4, "D's learning rate" + registry.model_optimizer_note("lr_d"), min=0.0, max=1.0)
    beta1: float = setting(0.5, "Adam beta1" + registry.model_optimizer_note("beta1"), min=0.0, max=1.0)
    beta2: float = setting(0.999, "Adam beta2" + registry.model_optimizer_note("beta2"), min=0.0, max=1.0)
    ema_decay: float = setting(0.999, "EMA decay of G's weights (0 = no EMA; a short warm-up)", min=0.0,
                        max=1.0)  # fmt: skip
    precision: str = setting("fp32", " | ".join(registry.precision_names()) + " (autocast; fp16 with a gradient "
                             "scaler, CUDA only)",
                             choices=registry.precision_names)  # fmt: skip
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    seed: int = setting(0, "random seed", min=0, max=2**63 - 1)
    threads: int = setting(0, "CPU threads (0 = the cores free when training starts)", min=0, max=4096)
    # what the user watches
    log_every: int = setting(50, "steps between progress lines", min=1, max=_MAX_INTERVAL)
    sample_every: int = setting(500, "steps between sample grids (0 = at the end only)", min=0, max=_MAX_INTERVAL)
    eval_every: int = setting(0, "steps between FID/IS evaluations (0 = at the end only)", min=0, max=_MAX_INTERVAL)
    eval_samples: int = setting(5000, "samples scored per evaluation (0 = no evaluation)", min=0,
                                max=registry.MAX_EVAL_SAMPLES)  # fmt: skip
    checkpoint_every: int = setting(1000, "steps between checkpoints (0 = at the end only)", min=0,
                                    max=_MAX_INTERVAL)  # fmt: skip
    keep_checkpoints: int = setting(0, "step checkpoints kept besides latest.pt (0 = all)", min=0, max=_MAX_INT32)
    tensorboard: bool = setting(True, "write TensorBoard event files under run_dir/tensorboard")
    max_minutes: float = setting(0.0, "end cleanly after this many wall-clock minutes (0 = no limit)", min=0.0,
                                 max=1e8)  # fmt: skip
    nproc: int = setting(1, "processes (devices) per node under torch.distributed; batch-size stays the global "
                         "batch (same as --nproc-per-node)", min=1, max=1024)  # fmt: skip
    nnodes: int = setting(1, "nodes the job runs on, nproc processes each (> 1: the server's Ray backend, one node "
                          "per placement-group bundle, torch.distributed across them)", min=1, max=1024)  # fmt: skip
    # --- model selection: FID for every data set, the best checkpoint, early stopping, rollback (issue 13)
    eval_extractor: str = setting("", "network that scores FID during training: '' = fmnist-cnn for 28x28 grey "
                                  "images, inception-v3 (the operator's GANSVC_INCEPTION_WEIGHTS) otherwise; or "
                                  "an extractor's name", choices=lambda: ("", *registry.extractor_names()))  # fmt: skip
    keep_best: str = setting("fid", "evaluation metric whose best value keeps checkpoints/best.pt and "
                             "generator_best.pt ('' = off)")  # fmt: skip
    keep_best_mode: str = setting("auto", "auto | min | max: whether lower or higher keep_best is better (auto: "
                                  "lower for fid / kid, higher otherwise)",
                                  choices=lambda: ("auto", "min", "max"))  # fmt: skip
    early_stop_patience: int = setting(0, "stop after this many evaluations without a better keep_best (0 = off)",
                                       min=0, max=_MAX_INT32)  # fmt: skip
    early_stop_min_delta: float = setting(0.0, "the least change of keep_best that counts as better", min=0.0,
                                          max=1e12)  # fmt: skip
    rollback_factor: float = setting(0.5, "on divergence, resume the last good checkpoint with both learning rates "
                                     "times this", min=0.0, max=1.0)  # fmt: skip
    max_rollbacks: int = setting(3, "rollbacks on divergence before the run fails (0 = fail at once)", min=0,
                                 max=1000)  # fmt: skip
    # --- plugins (issue 11): keyword arguments of a plugin model's / data set's factory (docs/plugins.md)
    model_args: dict = setting({}, "JSON object of keyword arguments for a plugin model's factory")
    dataset_args: dict = setting({}, "JSON object of keyword arguments for a plugin data set's factory")
    # --- conditional GANs, the residual model and augmentation (issue 12)
    conditional: bool = setting(False, "class-conditional G and D (the classes are the data set's labels)")
    label_sampling: str = setting("uniform", "labels of generated samples: uniform | data (the data's class "
                                  "frequencies)", choices=lambda: LABEL_SAMPLING)  # fmt: skip
    # AC-GAN's auxiliary classifier beside the projection, and class-balanced real batches (issue 22)
    ac_weight: float = setting(0.0, "conditional runs: weight of an auxiliary classifier on D (AC-GAN, beside the "
                               "projection): its cross-entropy on the real images' labels joins D's loss, on the "
                               "labels G was asked for G's loss (0 = off; left out: "
                               f"{CONDITIONAL_AC_WEIGHT:g} for conditional runs of gansvc's own models)",
                               min=0.0, max=1000.0)  # fmt: skip
    balanced_classes: bool = setting(False, "conditional runs: class-balanced batches of real images (every class "
                                     "equally often in each batch, each class's images in a fresh order per "
                                     "epoch)")  # fmt: skip
    minibatch_std: int = setting(0, "dcgan: D's minibatch standard-deviation feature (ProGAN): one channel before "
                                 "its last convolution holding the features' spread over groups of this many "
                                 "images, so that D sees a batch's variety (0 = off)", min=0, max=1024)  # fmt: skip
    augment: str = setting("", "DiffAugment of everything D sees: some of translation,cutout,color ('' = off)")
    augment_p: float = setting(1.0, "fixed probability of each augmentation per image (without ada_target)",
                               min=0.0, max=1.0)  # fmt: skip
    ada_target: float = setting(0.0, "ADA: adapt the augmentation probability (from 0) towards this "
                                "E[sign(D(real))] (0 = a fixed augment_p; ADA's 0.6)", min=0.0, max=1.0)  # fmt: skip
    attention: int = setting(0, "resnet: self-attention at this resolution in G and D (0 = none)", min=0, max=1024)
    # --- schedules and precision for longer runs (issue 21)
    lr_schedule: str = setting("constant", "learning-rate schedule of G and D after the warm-up: constant | cosine | "
                               "linear-decay (both decay to 0 at the run's last step)",
                               choices=lambda: LR_SCHEDULES)  # fmt: skip
    lr_warmup_steps: int = setting(0, "steps over which both learning rates rise linearly to their full value "
                                   "(0 = none)", min=0, max=_MAX_STEPS)  # fmt: skip
    accumulate: int = setting(1, "micro-batches per optimiser step: each batch_size batch is split into this many, "
                              "their gradients summed to the whole batch's (less memory; BatchNorm then normalises "
                              "each micro-batch)", min=1, max=65536)  # fmt: skip
    r1_every: int = setting(1, "lazy R1 (StyleGAN2): R1 on every r1_every-th D step only, with r1_gamma times "
                            "r1_every", min=1, max=1000)  # fmt: skip
    # --- start from weights (issue 21): fine-tuning another run's checkpoint (docs/fine-tuning.md)
    init_from: str = setting("", "start from a checkpoint's weights, at step 0 with this spec: a run directory (its "
                             "latest checkpoint) or checkpoint file; a server also takes job:ID, job:ID:best, "
                             "job:ID:step:N and upload:SHA256 ('' = a fresh initialisation)")  # fmt: skip
    init_parts: str = setting("g,d", "what init_from loads: some of " + ",".join(INIT_PARTS) + "; with "
                              f"'{PARTIAL}', the layers whose names and shapes do not fit stay fresh (each named in "
                              "a log line) instead of refusing the checkpoint")  # fmt: skip
    freeze_d_layers: int = setting(0, "FreezeD: D's first K blocks keep init_from's weights (0 = none; a block is a "
                                   "down-sampling stage, see docs/fine-tuning.md)", min=0, max=64)  # fmt: skip
    # --- experiment tracking (issue 21): a server's jobs log to MLflow (docs/tracking.md)
    track: str = setting("", "MLflow tracking server (http[s]://HOST[:PORT]) a server's job logs its params, metrics, "
                         "samples, best checkpoint, exported generator and final state to ('' = the server's "
                         "--mlflow-uri; off = not tracked)")  # fmt: skip

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        # loss "" is the model's default (resnet: hinge): resolved at once, so every reader sees a loss
        info = registry.model_info(self.model) if isinstance(self.model, str) else None
        if not self.loss and info is not None:
            self.loss = info.default_loss

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
        # optimiser settings left out take the model's own where it has them (resnet), else the fields' defaults
        info = registry.model_info(values.get("model", cls.model))  # None for an unknown name: validate() says so
        for key, value in info.optimizer if info is not None else ():
            values.setdefault(key, value)
        # the conditional recipe: gansvc's own models take the auxiliary classifier when ac_weight is left out
        if values.get("conditional") and info is not None and not info.plugin:
            values.setdefault("ac_weight", CONDITIONAL_AC_WEIGHT)
        # the DCGAN recipes: G wider than D when g_width is left out; the conditional D narrower when width is
        if values.get("model", cls.model) == "dcgan":
            factor = DCGAN_G_WIDTH_FACTOR
            if values.get("conditional"):
                values.setdefault("width", CONDITIONAL_DCGAN_WIDTH)
                factor = CONDITIONAL_DCGAN_G_WIDTH_FACTOR
            values.setdefault("g_width", min(round(factor * values.get("width", cls.width)), 1024))
            if takes_class_entropy(values):
                values.setdefault("class_entropy", DCGAN_CLASS_ENTROPY)
        spec = cls(**values)
        spec.validate()
        return spec

    @classmethod
    def from_file(cls, path: str | Path) -> TrainSpec:
        """Return the spec stored in a .json or .toml file (a [train] table in TOML is also accepted)."""
        return cls.from_dict(cls.file_settings(path))

    @classmethod
    def file_settings(cls, path: str | Path) -> dict:
        """Return the settings a .json or .toml spec file gives, as written (not checked: from_file checks).

        What a command line adds goes on top of these, not of the resolved spec: a setting the file leaves out
        then still takes the default that fits the options given with it (ac_weight with --conditional).
        """
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
        return data

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
        for spec_field in fields(self):  # the bounds and names each field declares
            _check_declared(spec_field, getattr(self, spec_field.name))
        model = registry.model_info(self.model)
        if not self.loss:  # "the model's default", shown resolved in spec.json and GetJob
            self.loss = model.default_loss
        info = registry.dataset_info(self.dataset)
        if registry.is_folder_dataset(self.dataset):
            if not registry.folder_path(self.dataset).strip():
                raise SpecError("dataset", "folder:PATH needs a path, e.g. 'folder:/data/faces'")
        elif registry.is_zip_dataset(self.dataset):
            if not registry.zip_path(self.dataset).strip():
                raise SpecError("dataset", "zip:PATH needs a path, e.g. 'zip:/data/faces.zip'")
        elif info is None and not _is_dataset_plugin(self.dataset):
            raise SpecError(
                "dataset",
                f"got {self.dataset!r}, expected one of {', '.join(registry.dataset_names())}, folder:PATH or zip:PATH",
            )
        if self.image_size and not 4 <= self.image_size <= 1024:
            raise SpecError("image_size", f"got {self.image_size}, expected 0 (the data set's own) or 4..1024")
        if info is not None and info.kind == "points":
            if not model.points:
                points_models = [m for m in registry.model_names() if registry.model_info(m).points]
                raise SpecError(
                    "model", f"{self.dataset} is 2-D points: use model {' or '.join(map(repr, points_models))}, not "
                    f"{self.model!r}",
                )  # fmt: skip
            if self.image_size:
                raise SpecError("image_size", f"{self.dataset} has no images: leave image_size at 0")
        for name in ("model_args", "dataset_args"):
            kind, named = ("models", self.model) if name == "model_args" else ("datasets", self.dataset)
            if getattr(self, name) and not registry.is_plugin(kind, named):
                raise SpecError(name, f"{named!r} is not an installed plugin: {name} applies to plugins only")
        if model.image_sizes is not None and (info is None or info.shape):  # a plugin data set's shape is unknown here
            size = self.image_size or (registry.FOLDER_IMAGE_SIZE if info is None else info.shape[-1])
            if size not in model.image_sizes:
                field = "image_size" if self.image_size else "dataset"
                raise SpecError(
                    field, f"{self.model} builds {', '.join(map(str, model.image_sizes))} pixel images, got {size}"
                    + ("" if self.image_size else f" (the size of {self.dataset}; set image_size)"),
                )  # fmt: skip
        if self.g_saturating and self.loss != "bce":
            raise SpecError("g_saturating", f"the saturating G loss exists for loss 'bce' only, not {self.loss!r}")
        if self.relativistic and self.loss == "wasserstein":
            raise SpecError("relativistic", "the relativistic average loss needs loss 'bce' or 'hinge': with "
                            "'wasserstein' the shifted means cancel into twice the plain critic loss")  # fmt: skip
        if self.relativistic and self.g_saturating:
            raise SpecError("relativistic", "the relativistic G loss is symmetric to D's: it has no saturating form "
                            "(leave g_saturating off)")  # fmt: skip
        if not 0.0 < self.real_label <= 1.0:
            raise SpecError("real_label", f"got {self.real_label}, expected 0 < real_label <= 1")
        if self.real_label != 1.0 and self.loss != "bce":
            raise SpecError("real_label", f"label smoothing applies to loss 'bce' only, not {self.loss!r}")
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
        if not _DEVICE.match(self.device):
            raise SpecError("device", f"got {self.device!r}, expected auto, cpu, cuda or cuda:N")
        if self.eval_samples == 1 or self.eval_samples < 0:
            raise SpecError("eval_samples", f"got {self.eval_samples}, expected 0 (no evaluation) or >= 2")
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
        if self.batch_size % (self.nproc * self.nnodes):
            world = self.nproc * self.nnodes
            raise SpecError("batch_size", f"the global batch {self.batch_size} does not divide among nproc={self.nproc}"
                            f" x nnodes={self.nnodes} processes; use a multiple of {world}")  # fmt: skip
        if info is not None and info.size("train") is not None:
            self.check_dataset_size(info.size("train"))
        self._validate_selection()
        self._validate_issue12(info)
        self._validate_longer_runs()
        self._validate_init()
        self.track = check_track_uri(self.track)
        return self

    def _validate_selection(self) -> None:
        """Check the model-selection settings (issue 13) against each other."""
        if self.keep_best and not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", self.keep_best):
            raise SpecError("keep_best", f"got {self.keep_best!r}, expected a metric name such as 'fid' or ''")
        if self.early_stop_patience:
            if not self.keep_best:
                raise SpecError("early_stop_patience", "needs keep_best, the metric that must improve")
            if not (self.eval_every and self.eval_samples):
                raise SpecError("early_stop_patience", "needs evaluations during training: set eval_every and "
                                "eval_samples")  # fmt: skip
        if self.max_rollbacks and not 0.0 < self.rollback_factor < 1.0:
            raise SpecError("rollback_factor", f"got {self.rollback_factor}, expected 0 < rollback_factor < 1")


    def _validate_issue12(self, info) -> None:
        """Check the conditional, augmentation and residual-model settings (issue 12)."""
        if self.conditional and info is not None and not info.num_classes:
            raise SpecError("conditional", f"{self.dataset} has no class labels to condition on")
        if self.label_sampling != "uniform" and not self.conditional:
            raise SpecError("label_sampling", "applies to conditional runs only (set conditional)")
        for name in ("ac_weight", "balanced_classes"):
            if getattr(self, name) != getattr(TrainSpec, name) and not self.conditional:
                raise SpecError(name, "applies to conditional runs only (set conditional)")
        if self.conditional and self.ac_weight > 0 and registry.is_plugin("models", self.model):
            raise SpecError("ac_weight", f"the auxiliary classifier is built into gansvc's models, not the plugin "
                            f"model {self.model!r}: set ac_weight 0")  # fmt: skip
        for name in ("minibatch_std", "g_width", "g_upsample", "pack", "class_entropy"):
            if getattr(self, name) != getattr(TrainSpec, name) and self.model != "dcgan":
                raise SpecError(name, f"is a DCGAN option; model {self.model!r} does not have it")
        if self.class_entropy > 0:
            if self.conditional:
                raise SpecError("class_entropy", "is for unconditional runs: a conditional run has the auxiliary "
                                "classifier (ac_weight)")  # fmt: skip
            if self.accumulate != 1:
                raise SpecError("class_entropy", "takes the whole batch's labels in one micro-batch: set accumulate 1")
            if self.pack > 1:
                raise SpecError("class_entropy", "a packed D judges several images at once: it has no one class to "
                                "predict (leave pack at 1)")  # fmt: skip
        if self.pack > 1 and self.conditional:
            raise SpecError("pack", "a packed D judges several images at once and has no single class to project: "
                            "leave pack at 1 for conditional runs")  # fmt: skip
        if self.pack > 1 and self.batch_size % (self.nproc * self.nnodes * self.accumulate * self.pack):
            raise SpecError("pack", f"each process's micro-batch of the global batch {self.batch_size} (nproc "
                            f"{self.nproc} x nnodes {self.nnodes} x accumulate {self.accumulate}) must split into "
                            f"packs of {self.pack}")  # fmt: skip
        if self.augment:
            try:
                from gansvc.train.augment import parse_policy

                parse_policy(self.augment)
            except ValueError as error:
                raise SpecError("augment", str(error)) from None
            if info is not None and info.kind == "points":
                raise SpecError("augment", f"{self.dataset} holds 2-D points: augmentations apply to images")
        elif self.ada_target > 0 or self.augment_p != 1.0:
            field = "ada_target" if self.ada_target > 0 else "augment_p"
            raise SpecError(field, "applies with augmentation only (set augment, e.g. 'translation,cutout,color')")
        if self.ada_target > 0 and self.augment_p != 1.0:
            raise SpecError("augment_p", "ADA adapts the probability from 0: leave augment_p at 1 with ada_target")
        if self.attention and self.model != "resnet":
            raise SpecError("attention", f"self-attention exists in model 'resnet' only, not {self.model!r}")

    def _validate_longer_runs(self) -> None:
        """Check the schedule, accumulation, lazy R1 and precision settings (issue 21)."""
        if self.batch_size % (self.nproc * self.accumulate):
            raise SpecError(
                "accumulate", f"the global batch {self.batch_size} does not split into nproc={self.nproc} x "
                f"accumulate={self.accumulate} equal micro-batches; use a batch_size that is a multiple of "
                f"{self.nproc * self.accumulate}",
            )  # fmt: skip
        if self.r1_every > 1 and self.r1_gamma == 0:
            raise SpecError("r1_every", "lazy R1 applies with R1 only (set r1_gamma)")
        if self.steps:
            self.check_warmup(self.steps)
        if self.device == "cpu":
            check_precision_device(self.precision, "cpu")

    def check_warmup(self, total_steps: int) -> None:
        """Raise SpecError('lr_warmup_steps') when the warm-up would take the whole run of `total_steps` steps."""
        if self.lr_warmup_steps >= total_steps:
            raise SpecError(
                "lr_warmup_steps", f"{self.lr_warmup_steps} warm-up steps leave none of the run's {total_steps} "
                "steps at the full learning rate; use fewer",
            )  # fmt: skip

    def _validate_init(self) -> None:
        """Check the start-from-weights settings (issue 21); init_parts is written in its canonical order."""
        parts = init_parts(self.init_parts)
        self.init_parts = ",".join(p for p in (*INIT_PARTS, PARTIAL) if p in parts)
        if self.init_from:
            try:
                parse_init_from(self.init_from)
            except ValueError as error:
                raise SpecError("init_from", str(error)) from None
        elif parts != init_parts(TrainSpec.init_parts):
            raise SpecError("init_parts", "applies with init_from only (set init_from)")
        if "optim" in parts and not parts & {"g", "d"}:
            raise SpecError("init_parts", "optim loads the optimiser state of G or D: add g or d")
        if "ema" in parts and self.ema_decay == 0:
            raise SpecError("init_parts", "ema: this run keeps no EMA (ema_decay 0); leave ema out")
        if self.freeze_d_layers:
            if not self.init_from or "d" not in parts:
                raise SpecError("freeze_d_layers", "freezes D's layers at loaded weights: set init_from with d in "
                                "init_parts")  # fmt: skip

    def check_dataset_size(self, samples: int) -> None:
        """Raise SpecError('batch_size') when the global batch does not fit a data set of `samples` samples."""
        if samples < self.batch_size:
            where = f"the folder {self.folder_path!r}" if self.folder_path is not None else self.dataset
            where = f"the archive {self.zip_path!r}" if self.zip_path is not None else where
            raise SpecError(
                "batch_size", f"{self.batch_size} is larger than the data set ({where} holds {samples} samples)"
            )

    # ------------------------------------------------------------------ derived
    @property
    def folder_path(self) -> str | None:
        """Return the PATH of a folder:PATH data set, else None."""
        return registry.folder_path(self.dataset)

    @property
    def zip_path(self) -> str | None:
        """Return the PATH of a zip:PATH data set, else None."""
        return registry.zip_path(self.dataset)


def check_precision_device(precision: str, device_type: str, allowed: tuple[str, ...] = ("cuda",)) -> None:
    """Raise SpecError('precision') when `precision` cannot train on a `device_type` device (fp16: CUDA only)."""
    if precision == "fp16" and device_type not in allowed:
        raise SpecError(
            "precision", f"fp16 trains on a CUDA device only (with a gradient scaler), not on {device_type!r}; "
            "on a CPU use bf16",
        )  # fmt: skip


TRACK_SCHEMES = ("http", "https")  # MLflow's REST API; a database or file store is reached through `mlflow server`
TRACK_OFF = "off"


def check_track_uri(text: str, field: str = "track") -> str:
    """Return a `track` value in its canonical form ("" for off) or raise SpecError naming `field`.

    Only MLflow's REST API is accepted: a client must not make the server write files or databases where it
    names, and credentials belong in the server's environment (MLFLOW_TRACKING_TOKEN, ...), not in a URI that
    GetJob shows and the run's params record.
    """
    from urllib.parse import urlsplit

    value = text.strip()
    if value in ("", TRACK_OFF):
        return ""
    if len(value) > 2048 or any(c.isspace() or not c.isprintable() for c in value):
        raise SpecError(field, f"got {value[:80]!r}: expected a URI of up to 2048 printable characters, no spaces")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number or out of range
    except ValueError as error:
        raise SpecError(field, f"got {value!r}: not a URI ({error})") from None
    if parts.scheme.lower() not in TRACK_SCHEMES:
        raise SpecError(field, f"got {value!r}: the scheme {parts.scheme + ':' if parts.scheme else '(none)'} is not "
                        f"one of {', '.join(s + '://' for s in TRACK_SCHEMES)} (an MLflow tracking server; "
                        f"'{TRACK_OFF}' = not tracked)")  # fmt: skip
    if not parts.hostname:
        raise SpecError(field, f"got {value!r}: expected http[s]://HOST[:PORT]")
    if parts.username is not None or parts.password is not None:
        raise SpecError(field, f"{parts.scheme}://...@{parts.hostname}: no credentials in the URI (GetJob shows it); "
                        "give them to the server as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or "
                        "MLFLOW_TRACKING_TOKEN")  # fmt: skip
    if parts.query or parts.fragment:
        raise SpecError(field, f"got {value!r}: expected http[s]://HOST[:PORT][/PATH] without ?query or #fragment")
    return value.rstrip("/")


@dataclass(frozen=True)
class InitReference:
    """A parsed init_from: kind 'path' (a run directory or checkpoint file), 'job' (job_id, which: latest | best |
    step) or 'upload' (sha256)."""

    kind: str
    text: str
    job_id: str = ""
    which: str = "latest"
    step: int = 0
    sha256: str = ""


_JOB_REFERENCE = re.compile(r"^job:(?P<id>[^:\s]+)(?::(?P<which>best|step:(?P<step>\d{1,18})))?$")
_UPLOAD_REFERENCE = re.compile(r"^upload:(?P<sha>[0-9a-f]{64})$")


def parse_init_from(text: str) -> InitReference:
    """Return the InitReference of an init_from value; ValueError says what is wrong with it."""
    if text.startswith("job:"):
        match = _JOB_REFERENCE.match(text)
        if not match:
            raise ValueError(f"got {text!r}, expected job:ID, job:ID:best or job:ID:step:N")
        which = "step" if match["step"] else (match["which"] or "latest")
        step = int(match["step"] or 0)
        if which == "step" and step < 1:
            raise ValueError(f"got {text!r}: checkpoint steps start at 1")
        return InitReference("job", text, job_id=match["id"], which=which, step=step)
    if text.startswith("upload:"):
        match = _UPLOAD_REFERENCE.match(text)
        if not match:
            raise ValueError(f"got {text!r}, expected upload:SHA256 (64 lower-case hex digits, as `gansvc upload` "
                             "prints)")  # fmt: skip
        return InitReference("upload", text, sha256=match["sha"])
    if not text.strip() or "\x00" in text:
        raise ValueError(f"got {text!r}, expected a run directory or checkpoint file")
    return InitReference("path", text)


def init_parts(text: str) -> frozenset[str]:
    """Return the parts an init_parts value names; SpecError('init_parts') for an unknown or missing one."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    for part in parts:
        if part not in (*INIT_PARTS, PARTIAL):
            raise SpecError("init_parts", f"unknown part {part!r}, expected some of {', '.join(INIT_PARTS)} (and "
                            f"{PARTIAL})")  # fmt: skip
    if not set(parts) & {"g", "d", "ema"}:
        raise SpecError("init_parts", f"got {text!r}: name the weights to load (g, d or ema)")
    return frozenset(parts)


def _is_dataset_plugin(name: str) -> bool:
    """Return whether an installed package provides data set `name` (entry point group gansvc.datasets)."""
    from gansvc.runtime.plugins import plugin_names

    return name in plugin_names("datasets")


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
    if kind == "dict":
        return _json_object(name, value)
    if kind == "str":
        if not isinstance(value, str):
            raise SpecError(name, f"expected a string, got {value!r}")
        return value
    return value


def _json_object(name: str, value: Any) -> dict:
    """Return `value` as a JSON object (a dict; JSON text is parsed) or raise SpecError naming the field."""
    if isinstance(value, Mapping) and not isinstance(value, dict):  # e.g. a protobuf Struct
        value = dict(value.items())
    if isinstance(value, str):  # the CLI's JSON text
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as error:
            raise SpecError(name, f"expected a JSON object, got {value!r} ({error})") from None
    if not isinstance(value, dict):
        raise SpecError(name, f"expected a JSON object of keyword arguments, got {value!r}")
    for key in value:
        if not isinstance(key, str) or not key.isidentifier():
            raise SpecError(f"{name}.{key}", f"{key!r} is not a keyword argument name")
    try:  # the spec is stored as JSON: its arguments must round-trip
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise SpecError(name, f"expected plain JSON values (no NaN), got {value!r} ({error})") from None


def _check_declared(spec_field: dataclasses.Field, value) -> None:
    """Raise SpecError when `value` is outside the field's declared bounds or names."""
    meta = spec_field.metadata
    name = spec_field.name
    if meta.get("min") is not None and value < meta["min"]:
        raise SpecError(name, f"got {value}, expected >= {meta['min']}")
    if meta.get("max") is not None and value > meta["max"]:
        raise SpecError(name, f"got {value}, expected <= {meta['max']}")
    if meta.get("choices") is not None and value not in meta["choices"]():
        raise SpecError(name, f"got {value!r}, expected one of {', '.join(meta['choices']())}")


def field_help(name: str) -> str:
    """Return the help text TrainSpec declares for field `name`."""
    return TrainSpec.__dataclass_fields__[name].metadata.get("help", "") or name.replace("_", " ")


def field_bounds(name: str) -> tuple[float | None, float | None]:
    """Return the (min, max) TrainSpec declares for field `name` (None = unbounded)."""
    meta = TrainSpec.__dataclass_fields__[name].metadata
    return meta.get("min"), meta.get("max")
