"""Feature extractors for FID / IS / KID: the shipped fmnist-cnn, the FID Inception-v3 and installed plugins.

Each extractor maps images ([N, C, H, W], float in [-1, 1] or uint8) to (features [N, d] for FID and
KID, logits [N, K] whose softmax gives IS). `fingerprint()` identifies the network and its weights,
so cached reference statistics are recomputed when either changes.
"""

from __future__ import annotations

import hashlib
import os
import sys
from functools import lru_cache
from pathlib import Path

import torch
from tqdm import tqdm

from gansvc.images import uint8_to_unit_range
from gansvc.runtime import registry

# Float images may overshoot [-1, 1] by this much (resampling, bf16 rounding) before being clamped.
_RANGE_SLACK = 1e-3


def extractor_fits(name: str, image_shape) -> bool:
    """Return whether extractor `name` accepts images of shape (C, H, W): fmnist-cnn only 1×28×28."""
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3:
        return False
    if name == "fmnist-cnn":
        return shape == (1, 28, 28)
    if name == "inception-v3":
        return shape[0] in (1, 3) and min(shape[1:]) >= 8
    if registry.is_plugin("extractors", name):  # what it takes is known once it is loaded (PluginExtractor.fits)
        return shape[0] in (1, 3)
    raise ValueError(f"unknown extractor {name!r}: expected one of {', '.join(registry.extractor_names())}")


def images_to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Return images (uint8, or float in [-1, 1]) as float32 in [-1, 1]; error for floats far outside."""
    if images.dtype == torch.uint8:
        return uint8_to_unit_range(images)
    if not images.dtype.is_floating_point:
        raise ValueError(f"images must be uint8 or floating point in [-1, 1], got {images.dtype}")
    images = images.to(torch.float32)
    if images.numel():
        low, high = float(images.min()), float(images.max())
        if not (low >= -1.0 - _RANGE_SLACK and high <= 1.0 + _RANGE_SLACK):  # also catches NaN
            raise ValueError(f"float images must be in [-1, 1], got values in [{low:g}, {high:g}]")
    return images.clamp(-1.0, 1.0)


class FeatureExtractor:
    """A network giving (features, logits) for a batch of images; see the module docstring."""

    name: str
    feature_dim: int
    num_classes: int
    batch_size: int

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)

    def fits(self, image_shape) -> bool:
        """Return whether images of shape (C, H, W) are accepted."""
        return extractor_fits(self.name, image_shape)

    def fingerprint(self) -> str:
        """Return a string that changes when the network or its weights change."""
        raise NotImplementedError

    def forward_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (features, logits) of float images in [-1, 1] on self.device."""
        raise NotImplementedError

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, progress: bool = False, desc: str = "features", features_device=None):
        """Return (features float32 [N, d], logits float32 [N, K]) for all `images`.

        The logits are on the CPU; the features on `features_device` (default the CPU): evaluation keeps
        them on the GPU (gansvc.metrics.fid.statistics_device) and accumulates their statistics there.
        """
        if images.dim() != 4 or not self.fits(images.shape[1:]):
            needs = {"fmnist-cnn": "[N, 1, 28, 28]", "inception-v3": "[N, 1|3, H, W]"}.get(self.name, "[N, 1, H, W]")
            raise ValueError(
                f"the {self.name} extractor cannot take images of shape {list(images.shape)} (it needs {needs})"
            )
        features = torch.empty(images.shape[0], self.feature_dim, dtype=torch.float32, device=features_device)
        logits = torch.empty(images.shape[0], self.num_classes, dtype=torch.float32)
        starts = range(0, images.shape[0], self.batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, file=sys.stderr):
            batch = images_to_unit_range(images[start : start + self.batch_size]).to(self.device)
            f, z = self.forward_batch(batch)
            features[start : start + batch.shape[0]] = f.float()
            logits[start : start + batch.shape[0]] = z.float().cpu()
        return features, logits


class FashionMNISTExtractor(FeatureExtractor):
    """The shipped classifier: 128-d penultimate features, 10 classes."""

    name = "fmnist-cnn"
    batch_size = 1000

    def __init__(self, device: str | torch.device = "cpu", weights: str | os.PathLike | None = None) -> None:
        from gansvc.metrics import fmnist_cnn

        super().__init__(device)
        self.weights_path = Path(weights) if weights else fmnist_cnn.WEIGHTS_PATH
        self.model = fmnist_cnn.load_classifier(self.weights_path, self.device)
        self.feature_dim, self.num_classes = fmnist_cnn.FEATURE_DIM, fmnist_cnn.NUM_CLASSES

    def fingerprint(self) -> str:
        """Return architecture + weights digest."""
        from gansvc.metrics.fmnist_cnn import ARCHITECTURE

        return f"{ARCHITECTURE}:{file_digest(self.weights_path)}"

    def forward_batch(self, images):
        """Return (penultimate features, logits)."""
        return self.model.features_and_logits(images)


class InceptionExtractor(FeatureExtractor):
    """pytorch-fid's FID Inception-v3: 2048-d pool3 features, 1008 classes; grey images repeated to RGB."""

    name = "inception-v3"

    def __init__(self, device: str | torch.device = "cpu", weights: str | os.PathLike | None = None) -> None:
        from gansvc.metrics import inception

        super().__init__(device)
        self.weights_path = inception.resolve_weights_path(weights)
        # Batch norms folded into the convolutions (the same function, one pass over the activations fewer); on
        # the CPU the pooling branches' average pools moved after their 1×1 convolutions (on fewer channels) and
        # each other convolution's ReLU fused into it (one more pass fewer); channels-last: the convolutions run
        # ~30% faster on it (oneDNN / cuDNN NHWC kernels). Each rewrite computes the same function.
        model = inception.fold_batch_norms_(inception.load_fid_inception(self.weights_path, "cpu"))
        if self.device.type == "cpu":
            model = inception.fuse_conv_relus_(inception.pool_after_convolution_(model))
        self.model = model.to(device=self.device, memory_format=torch.channels_last)
        self.feature_dim, self.num_classes = inception.FEATURE_DIM, inception.NUM_CLASSES
        self.batch_size = 200 if self.device.type == "cuda" else 50

    def fingerprint(self) -> str:
        """Return architecture + weights digest."""
        return f"fid-inception-2015-12-05:{file_digest(self.weights_path)}"

    def forward_batch(self, images):
        """Return (pool3 features, unbiased logits) of images in [-1, 1]."""
        # the network takes [0, 1], as pytorch-fid's; grey images are repeated to RGB there, after resizing
        return self.model(((images + 1.0) * 0.5).contiguous(memory_format=torch.channels_last))


class PluginExtractor(FeatureExtractor):
    """An installed extractor (entry point `gansvc.extractors`, docs/plugins.md): a module taking float images in
    [-1, 1] [N, C, H, W] to features [N, d]; images are resized to its `input_size` (antialiased bilinear) and
    grey ones repeated to 3 channels when its `input_channels` is 3; its optional `logits(x)` gives IS."""

    batch_size = 200

    def __init__(self, name: str, device: str | torch.device = "cpu") -> None:
        from gansvc.runtime.plugins import PluginError, call_factory, load_factory

        super().__init__(device)
        self.name = name
        factory = load_factory("extractors", name)
        self.model = call_factory("extractors", name, factory, {"device": self.device}, {}, "extractor", "extractor")
        if not isinstance(self.model, torch.nn.Module):
            raise PluginError("extractors", name, f"its factory returned {type(self.model).__name__}, expected a "
                                                  "torch.nn.Module")  # fmt: skip
        self.model.eval().requires_grad_(False)
        size, channels = getattr(self.model, "input_size", None), getattr(self.model, "input_channels", None)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1 or channels not in (1, 3):
            raise PluginError("extractors", name, f"input_size must be a positive int and input_channels 1 or 3, got "
                                                  f"{size!r} and {channels!r}")  # fmt: skip
        self.input_size, self.input_channels = size, channels
        self.has_logits = callable(getattr(self.model, "logits", None))
        with torch.inference_mode():  # learn d (and K) from a probe batch
            features, logits = self.forward_batch(torch.zeros(2, channels, size, size, device=self.device))
        self.feature_dim, self.num_classes = features.shape[1], logits.shape[1]

    def fits(self, image_shape) -> bool:
        """Grey images fit every plugin extractor (repeated for 3 channels); colour ones only 3-channel ones."""
        shape = tuple(int(s) for s in image_shape)
        return len(shape) == 3 and shape[0] in (1, self.input_channels)

    def fingerprint(self) -> str:
        """Return the plugin's distribution and a digest of its weights and buffers."""
        from gansvc.runtime.plugins import distribution_of

        digest = hashlib.sha256()
        for key, value in self.model.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return f"plugin:{self.name}:{distribution_of('extractors', self.name)}:{digest.hexdigest()[:16]}"

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Return float images in [-1, 1] as the module expects them: input_size pixels, input_channels channels."""
        import torch.nn.functional as F

        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                                   align_corners=False).clamp_(-1.0, 1.0)  # fmt: skip
        if images.shape[1] == 1 and self.input_channels == 3:
            images = images.expand(-1, 3, -1, -1)
        return images

    def forward_batch(self, images):
        """Return (features [N, d], logits [N, K]; K = 0 without a logits method)."""
        from gansvc.runtime.plugins import PluginError

        x = self.prepare(images)
        try:
            features = self.model(x)
            logits = self.model.logits(x) if self.has_logits else features.new_zeros(features.shape[0], 0)
        except Exception as error:  # noqa: BLE001 - a third party's code
            if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
                raise
            raise PluginError("extractors", self.name, f"its forward raised {type(error).__name__}: {error}") from error
        n = images.shape[0]
        for what, value in (("features", features), ("logits", logits)):
            if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.shape[0] != n:
                got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise PluginError("extractors", self.name, f"its {what} are {got}, expected [{n}, d]")
        return features, logits


def load_extractor(
    name: str, device: str | torch.device = "cpu", inception_weights: str | os.PathLike | None = None
) -> FeatureExtractor:
    """Return the extractor `name` ('fmnist-cnn' | 'inception-v3') on `device`, weights loaded."""
    if name == "fmnist-cnn":
        return FashionMNISTExtractor(device)
    if name == "inception-v3":
        return InceptionExtractor(device, inception_weights)
    if registry.is_plugin("extractors", name):
        return PluginExtractor(name, device)
    raise ValueError(f"unknown extractor {name!r}: expected one of {', '.join(registry.extractor_names())}")


def file_digest(path: str | os.PathLike) -> str:
    """Return the first 16 hex digits of the SHA-256 of a file (memoised by path, size and mtime)."""
    stat = os.stat(path)
    return _file_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
