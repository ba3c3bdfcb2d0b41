"""Plugin models (entry-point group `gansvc.models`, docs/plugins.md): the factory's (generator,
discriminator) pair wrapped so that the trainer treats it like a built-in model, and so that a plugin
that breaks the contract fails its job with a reason naming it.

The wrappers hold the plugin's modules as `net` (checkpoints key their weights `net.*`), give the
generator the `z_dim` / `out_shape` the sampling code reads, flatten D's [N, 1] logits to [N], pass
labels only when there are some, and check what comes out: G's samples must be [N, *data_shape] (in
[-1, 1] for images), D's logits [N] or [N, 1]. An exception inside a plugin's forward becomes a
PluginError naming the plugin (out-of-memory errors stay what they are: they are not the plugin's fault).
"""

from __future__ import annotations

import torch
from torch import nn

from gansvc.runtime.plugins import PluginError, call_factory, load_factory

# G's range is checked on its first calls, on every call without gradients (samples, evaluation:
# their results go to the CPU anyway), and every RANGE_CHECK_EVERY-th training call; a check on every
# training step would add a device synchronisation to each.
RANGE_CHECK_FIRST = 3
RANGE_CHECK_EVERY = 50
RANGE_SLACK = 1e-3  # rounding (bf16 autocast) may overshoot [-1, 1] by this much


def _reraise(name: str, part: str, error: Exception):
    if isinstance(error, (PluginError, torch.OutOfMemoryError, MemoryError)):
        raise error
    raise PluginError("models", name, f"its {part} raised {type(error).__name__}: {error}") from error


class PluginGenerator(nn.Module):
    """A plugin's generator: `forward(z, labels=None)` -> [N, *data_shape], checked."""

    def __init__(self, net: nn.Module, name: str, z_dim: int, data_shape: tuple[int, ...]):
        super().__init__()
        self.net = net
        self.plugin = name
        self.z_dim = z_dim
        self.out_shape = tuple(data_shape)
        self._calls = 0

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        try:
            out = self.net(z) if labels is None else self.net(z, labels)
        except Exception as error:  # noqa: BLE001 - a third party's code
            _reraise(self.plugin, "generator", error)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (z.shape[0], *self.out_shape):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            expected = [z.shape[0], *self.out_shape]
            raise PluginError("models", self.plugin,
                              f"its generator returned {got}, expected {expected} (the contract: [N, *data_shape])")
        self._calls += 1
        if len(self.out_shape) == 3 and (
            not torch.is_grad_enabled() or self._calls <= RANGE_CHECK_FIRST or self._calls % RANGE_CHECK_EVERY == 0
        ):
            check_range(self.plugin, out)
        return out


def check_range(name: str, images: torch.Tensor) -> None:
    """Raise a PluginError naming plugin `name` when images lie outside [-1, 1] (NaN: the divergence check's)."""
    if images.numel() == 0:
        return
    low, high = torch.aminmax(images.detach().float())
    low, high = float(low), float(high)
    if low < -1.0 - RANGE_SLACK or high > 1.0 + RANGE_SLACK:
        raise PluginError("models", name, f"its generator returned values in [{low:.4g}, {high:.4g}], outside "
                                          "[-1, 1] (end it with tanh, or clamp)")  # fmt: skip


class PluginDiscriminator(nn.Module):
    """A plugin's discriminator: `forward(x, labels=None)` -> logits [N] ([N, 1] is flattened)."""

    def __init__(self, net: nn.Module, name: str):
        super().__init__()
        self.net = net
        self.plugin = name

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        try:
            out = self.net(x) if labels is None else self.net(x, labels)
        except Exception as error:  # noqa: BLE001 - a third party's code
            _reraise(self.plugin, "discriminator", error)
        n = x.shape[0]
        if not isinstance(out, torch.Tensor) or tuple(out.shape) not in ((n,), (n, 1)):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise PluginError("models", self.plugin, f"its discriminator returned {got}, expected logits [{n}] or "
                                                     f"[{n}, 1]")  # fmt: skip
        return out.reshape(n)


def factory_arguments(spec, data_shape, num_classes: int = 0) -> dict:
    """Return the contract's keywords for a model factory."""
    return {"data_shape": tuple(int(s) for s in data_shape), "num_classes": int(num_classes), "z_dim": int(spec.z_dim)}


def build_plugin_models(spec, data_shape, num_classes: int = 0) -> tuple[PluginGenerator, PluginDiscriminator]:
    """Return the wrapped (generator, discriminator) of plugin model `spec.model` with `spec.model_args`.

    Raises PluginError (naming the plugin) when it cannot be imported or breaks the contract, and
    PluginArgumentError (a ValueError naming `model_args.<key>`) when it refuses its arguments.
    """
    name = spec.model
    factory = load_factory("models", name)
    args = dict(getattr(spec, "model_args", {}) or {})
    pair = call_factory("models", name, factory, factory_arguments(spec, data_shape, num_classes), args,
                        "model_args", "model")  # fmt: skip
    if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(m, nn.Module) for m in pair)):
        raise PluginError("models", name, f"its factory returned {type(pair).__name__}, expected a "
                                          "(generator, discriminator) pair of torch.nn.Module")  # fmt: skip
    return PluginGenerator(pair[0], name, spec.z_dim, data_shape), PluginDiscriminator(pair[1], name)


def check_plugin_spec(spec, data_shape=None, num_classes: int = 0) -> None:
    """Check a spec's plugin arguments before a job exists (the service's submit); raise PluginArgumentError.

    model_args and dataset_args are bound to their factories' signatures (an unknown keyword names
    `model_args.<key>`). When the data shape is known without loading the data (`data_shape`), the
    model factory also runs once on the meta device (no memory, no weights) with `num_classes`, so a
    value it refuses is refused here. A plugin that cannot be imported or fails otherwise is not refused
    here: its job fails with a reason naming it, as the contract says.
    """
    from gansvc.runtime import registry
    from gansvc.runtime.plugins import PluginArgumentError, check_arguments

    try:
        if registry.is_plugin("datasets", spec.dataset):
            fixed = {"split": "train", "root": None, "image_size": 0}
            check_arguments("datasets", spec.dataset, load_factory("datasets", spec.dataset), fixed,
                            dict(spec.dataset_args), "dataset_args")  # fmt: skip
        if registry.is_plugin("models", spec.model):
            factory = load_factory("models", spec.model)
            fixed = factory_arguments(spec, data_shape or (1, 8, 8), num_classes)
            check_arguments("models", spec.model, factory, fixed, dict(spec.model_args), "model_args")
            if data_shape is not None:
                with torch.device("meta"):
                    call_factory("models", spec.model, factory, fixed, dict(spec.model_args), "model_args", "model")
    except PluginArgumentError:
        raise
    except PluginError:
        return


def known_data_shape(spec, learnt=None) -> tuple[int, ...] | None:
    """Return one sample's shape as the trainer will see it (image_size applied) when it is known without loading
    the data: the registry's (built-in data sets) or `learnt`, a plugin data set's probed native shape; else None
    (folders, a plugin not probed)."""
    from gansvc.runtime import registry

    info = registry.dataset_info(spec.dataset)
    shape = tuple(int(s) for s in (info.shape if info is not None and info.shape else learnt or ()))
    if not shape:
        return None
    if len(shape) == 3 and spec.image_size:
        return (shape[0], spec.image_size, spec.image_size)
    return shape
