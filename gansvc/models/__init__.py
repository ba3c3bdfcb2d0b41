"""Generators and discriminators: the seeds' MLP GAN, DCGAN, the residual model and installed plugin models
(gansvc.models.plugin), with spectral normalisation of D as an option (always on in the residual D); with
`num_classes`, class-conditional."""

from __future__ import annotations

from torch import nn

from gansvc.models.dcgan import DCGANDiscriminator, DCGANGenerator
from gansvc.models.mlp import MLPDiscriminator, MLPGenerator
from gansvc.models.resnet import ResNetDiscriminator, ResNetGenerator


def build_models(spec, data_shape: tuple[int, ...], num_classes: int = 0,
                 label_classes: int = 0) -> tuple[nn.Module, nn.Module]:  # fmt: skip
    """Return (generator, discriminator) that `spec` names for samples of `data_shape` (D spectrally normalised
    if asked); num_classes > 0 builds class-conditional networks (called with labels).

    A plugin model's factory is called once for both (its modules are initialised in its own order).
    label_classes: the data's class count, for the classifier of an unconditional D (class_entropy).
    """
    if _is_plugin(spec.model):
        from gansvc.models.plugin import build_plugin_models

        generator, discriminator = build_plugin_models(spec, data_shape, num_classes)
        if spec.spectral_norm:
            apply_spectral_norm(discriminator)
        return generator, discriminator
    return (build_generator(spec, data_shape, num_classes),
            build_discriminator(spec, data_shape, num_classes, label_classes))  # fmt: skip


def _is_plugin(name: str) -> bool:
    from gansvc.runtime import registry

    return registry.is_plugin("models", name)


def build_generator(spec, data_shape: tuple[int, ...], num_classes: int = 0) -> nn.Module:
    """Return the generator that `spec` (a TrainSpec) names, producing samples of `data_shape`.

    num_classes > 0 builds the class-conditional generator (called as G(z, labels)).
    """
    if _is_plugin(spec.model):  # the factory builds both; the discriminator is dropped
        return build_models(spec, data_shape, num_classes)[0]
    if spec.model == "mlp":
        return MLPGenerator(spec.z_dim, data_shape, spec.mlp_hidden, tanh=len(data_shape) == 3, num_classes=num_classes)
    if spec.model == "dcgan":
        channels, height, width = _image_shape(data_shape)
        return DCGANGenerator(spec.z_dim, channels, height, getattr(spec, "g_width", 0) or spec.width,
                              num_classes=num_classes, upsample=getattr(spec, "g_upsample", False))
    if spec.model == "resnet":
        channels, height, width = _image_shape(data_shape)
        return ResNetGenerator(spec.z_dim, channels, height, spec.width, num_classes, getattr(spec, "attention", 0))
    raise ValueError(f"model: unknown model {spec.model!r}, expected mlp, dcgan or resnet")


def has_aux_classifier(spec, num_classes: int) -> bool:
    """Return whether D gets the auxiliary classifier (AC-GAN): a conditional run with a non-zero ac_weight."""
    return bool(num_classes) and getattr(spec, "ac_weight", 0.0) > 0


def discriminator_norm(spec) -> str:
    """Return D's normalisation: BatchNorm for a plain DCGAN; none with spectral norm or a gradient penalty.

    Spectral norm replaces it, and the input-gradient penalties (WGAN-GP, R1) are per-sample, which
    BatchNorm's mixing across the batch would break.
    """
    if spec.model == "dcgan" and not (spec.spectral_norm or spec.gradient_penalty > 0 or spec.r1_gamma > 0):
        return "batch"
    return "none"


def build_discriminator(spec, data_shape: tuple[int, ...], num_classes: int = 0, label_classes: int = 0) -> nn.Module:
    """Return the discriminator that `spec` names for samples of `data_shape`, spectrally normalised if asked.

    num_classes > 0 builds the projection discriminator (called as D(x, labels)); with class_entropy an
    unconditional DCGAN D gets a classifier of `label_classes` classes (the data's) and no projection.
    """
    if _is_plugin(spec.model):
        return build_models(spec, data_shape, num_classes)[1]
    aux = has_aux_classifier(spec, num_classes)
    if spec.model == "mlp":
        model = MLPDiscriminator(data_shape, spec.mlp_hidden, num_classes=num_classes, aux_classifier=aux)
    elif spec.model == "dcgan":
        channels, height, width = _image_shape(data_shape)
        model = DCGANDiscriminator(channels, height, spec.width, discriminator_norm(spec), num_classes=num_classes,
                                   aux_classifier=aux, minibatch_std=getattr(spec, "minibatch_std", 0),
                                   pack=getattr(spec, "pack", 1),
                                   classifier_classes=label_classes if getattr(spec, "class_entropy", 0) > 0 else 0)
    elif spec.model == "resnet":  # spectrally normalised by construction, whatever spec.spectral_norm says
        channels, height, width = _image_shape(data_shape)
        return ResNetDiscriminator(channels, height, spec.width, num_classes, getattr(spec, "attention", 0),
                                   aux_classifier=aux)  # fmt: skip
    else:
        raise ValueError(f"model: unknown model {spec.model!r}, expected mlp, dcgan or resnet")
    if spec.spectral_norm:
        apply_spectral_norm(model)
    return model


def apply_spectral_norm(model: nn.Module) -> nn.Module:
    """Return `model` with every Linear/Conv weight divided by its largest singular value (power iteration)."""
    from torch.nn.utils.parametrizations import spectral_norm

    for module in list(model.modules()):
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            spectral_norm(module)
    return model


def discriminator_blocks(discriminator: nn.Module) -> list[nn.Module]:
    """Return D's blocks in input order (its `feature_blocks()`: FreezeD freezes the first K); ValueError when the
    model defines none (a plugin may, with a method of that name)."""
    blocks = getattr(discriminator, "feature_blocks", None)
    if blocks is None:
        raise ValueError(f"{type(discriminator).__name__} defines no blocks (a feature_blocks() method)")
    return list(blocks())


def freeze_blocks(discriminator: nn.Module, count: int) -> list[nn.Parameter]:
    """Make the parameters of D's first `count` blocks require no gradient; return them (ValueError: too many)."""
    blocks = discriminator_blocks(discriminator)
    if count > len(blocks):
        raise ValueError(f"got {count}, but {type(discriminator).__name__} has {len(blocks)} blocks")
    frozen = [p for block in blocks[:count] for p in block.parameters()]
    for parameter in frozen:
        parameter.requires_grad_(False)
    return frozen


def has_batchnorm(model: nn.Module) -> bool:
    """Return whether any BatchNorm layer is in `model`."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _image_shape(data_shape) -> tuple[int, int, int]:
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ValueError(f"model: dcgan and resnet need square images [C, S, S], got data of shape {tuple(data_shape)}")
    return tuple(data_shape)


__all__ = [
    "DCGANDiscriminator",
    "DCGANGenerator",
    "MLPDiscriminator",
    "MLPGenerator",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "apply_spectral_norm",
    "build_discriminator",
    "build_generator",
    "build_models",
    "discriminator_blocks",
    "discriminator_norm",
    "freeze_blocks",
    "has_aux_classifier",
    "has_batchnorm",
]
