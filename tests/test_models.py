"""Models: the seeds' MLP GAN exactly, DCGAN shapes at every size, spectral normalisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gansvc.models import build_discriminator, build_generator, discriminator_norm, has_batchnorm
from gansvc.models.dcgan import layout
from gansvc.train.spec import TrainSpec


def _spec(**kw):
    return TrainSpec.from_dict({"steps": 1, **kw})


class SeedGenerator(nn.Module):  # seed 003's code, verbatim in structure
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(100, 256), nn.ReLU(True), nn.Linear(256, 256), nn.ReLU(True),
                                  nn.Linear(256, 784), nn.Tanh())  # fmt: skip

    def forward(self, input):
        return self.main(input)


class SeedDiscriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(784, 256), nn.ReLU(True), nn.Linear(256, 256), nn.ReLU(True),
                                  nn.Linear(256, 1), nn.Sigmoid())  # fmt: skip

    def forward(self, input):
        return self.main(input)


def test_mlp_is_the_seeds_network():
    spec = _spec(model="mlp", loss="bce", spectral_norm=False)
    generator, discriminator = build_generator(spec, (1, 28, 28)), build_discriminator(spec, (1, 28, 28))
    seed_g, seed_d = SeedGenerator(), SeedDiscriminator()
    seed_g.load_state_dict(generator.state_dict())  # same parameter names and shapes, or this raises
    seed_d.load_state_dict(discriminator.state_dict())
    z = torch.randn(5, 100)
    images = generator(z)
    assert images.shape == (5, 1, 28, 28)
    torch.testing.assert_close(images.flatten(1), seed_g(z))
    # D gives logits; the seeds' D is the sigmoid of them
    torch.testing.assert_close(torch.sigmoid(discriminator(images)), seed_d(images.flatten(1)).view(-1))


def test_mlp_for_points_has_no_tanh():
    spec = _spec(dataset="gaussian-mixture", model="mlp", spectral_norm=False)
    generator = build_generator(spec, (2,))
    assert not any(isinstance(m, nn.Tanh) for m in generator.modules())
    assert generator(torch.randn(3, 100)).shape == (3, 2)
    assert build_discriminator(spec, (2,))(torch.randn(3, 2)).shape == (3,)


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (32, 3), (64, 3), (128, 1)])
def test_dcgan_shapes(size, channels):
    spec = _spec(width=8, image_size=size)
    generator = build_generator(spec, (channels, size, size))
    discriminator = build_discriminator(spec, (channels, size, size))
    images = generator(torch.randn(4, 100))
    assert images.shape == (4, channels, size, size)
    assert images.abs().max() <= 1
    assert discriminator(images).shape == (4,)


def test_dcgan_layout_and_bad_sizes():
    assert layout(28) == (7, 2) and layout(32) == (4, 3) and layout(64) == (4, 4)
    with pytest.raises(ValueError, match="image_size"):
        layout(50)


def test_discriminator_normalisation_choice():
    assert discriminator_norm(_spec(spectral_norm=False)) == "batch"
    assert discriminator_norm(_spec(spectral_norm=True)) == "none"
    assert discriminator_norm(_spec(spectral_norm=False, gradient_penalty=10.0)) == "none"
    assert discriminator_norm(_spec(spectral_norm=False, r1_gamma=1.0)) == "none"
    assert has_batchnorm(build_discriminator(_spec(spectral_norm=False, width=8), (1, 28, 28)))
    assert not has_batchnorm(build_discriminator(_spec(width=8, spectral_norm=True), (1, 28, 28)))


@pytest.mark.parametrize("model", ["mlp", "dcgan"])
def test_spectral_norm_makes_every_layer_1_lipschitz(model):
    torch.manual_seed(0)
    discriminator = build_discriminator(_spec(model=model, width=8, spectral_norm=True), (1, 28, 28))
    discriminator.train()
    for _ in range(100):  # power iterations run in train-mode forwards (one each)
        discriminator(torch.randn(2, 1, 28, 28))
    layers = [m for m in discriminator.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert layers and all(hasattr(m, "parametrizations") for m in layers)
    for layer in layers:
        weight = layer.weight.detach().flatten(1)  # the normalised weight, as a matrix [out, in * k * k]
        raw = layer.parametrizations.weight.original.detach().flatten(1)
        sigma = torch.linalg.matrix_norm(weight.double(), ord=2)
        assert sigma == pytest.approx(1.0, rel=1e-2)  # power iteration converges slowly for near-equal top values
        torch.testing.assert_close(weight, raw / torch.linalg.matrix_norm(raw.double(), ord=2).float(), rtol=1e-2,
                                   atol=1e-6)  # fmt: skip
