"""Class-conditional MLP and DCGAN: equal to the unconditional network when the classes are equal,
the label entering D only through the projection term, and labels checked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gansvc.models.dcgan import DCGANDiscriminator, DCGANGenerator
from gansvc.models.mlp import MLPDiscriminator, MLPGenerator


def _copy_shared(source: nn.Module, target: nn.Module) -> None:
    """Copy every parameter and buffer of source into target where target has the same name (BatchNorm
    statistics inside conditional BatchNorm live under .bn)."""
    target_state = target.state_dict()
    for name, value in source.state_dict().items():
        for candidate in (name, name.rsplit(".", 1)[0] + ".bn." + name.rsplit(".", 1)[1]):
            if candidate in target_state and target_state[candidate].shape == value.shape:
                target_state[candidate] = value
    target.load_state_dict(target_state)


@pytest.mark.parametrize("size", [28, 32])
def test_conditional_dcgan_generator_with_identity_classes_is_the_plain_one(size):
    torch.manual_seed(0)
    plain = DCGANGenerator(z_dim=16, channels=1, image_size=size, width=8)
    for m in plain.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    conditional = DCGANGenerator(z_dim=16, channels=1, image_size=size, width=8, num_classes=10)
    _copy_shared(plain, conditional)
    z = torch.randn(6, 16)
    assert torch.allclose(plain(z), conditional(z, torch.randint(0, 10, (6,))), atol=1e-6)
    assert set(plain.state_dict()) == set(DCGANGenerator(16, 1, size, 8).state_dict())  # plain layout unchanged


@pytest.mark.parametrize("make", [
    lambda c: DCGANDiscriminator(channels=1, image_size=28, width=8, norm="none", num_classes=c),
    lambda c: MLPDiscriminator((1, 28, 28), hidden=32, num_classes=c),
], ids=["dcgan", "mlp"])  # fmt: skip
def test_labels_enter_the_discriminator_only_through_the_projection(make):
    torch.manual_seed(1)
    plain, conditional = make(0), make(5)
    _copy_shared(plain, conditional)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        conditional.embed.weight.zero_()
        assert torch.allclose(conditional(x, torch.tensor([0, 1, 2, 3])), plain(x), atol=1e-6)
        nn.init.normal_(conditional.embed.weight)
        a, b = conditional(x, torch.zeros(4, dtype=torch.long)), conditional(x, torch.full((4,), 3))
        h = conditional.main[:-1](x if isinstance(conditional, DCGANDiscriminator) else x.flatten(1))
        h = h.sum(dim=(2, 3)) if h.dim() == 4 else h
        expected = h @ (conditional.embed.weight[0] - conditional.embed.weight[3])
    assert not torch.allclose(a, b)
    assert torch.allclose(a - b, expected, atol=1e-4)


def test_conditional_mlp_generator_embeds_the_label():
    torch.manual_seed(2)
    G = MLPGenerator(z_dim=10, out_shape=(1, 28, 28), hidden=32, num_classes=3)
    z = torch.randn(2, 10)
    assert G(z, torch.tensor([0, 1])).shape == (2, 1, 28, 28)
    assert not torch.allclose(G(z, torch.tensor([0, 0])), G(z, torch.tensor([2, 2])))
    assert G.main[0].in_features == 10 + 10  # min(z_dim, 50) embedding dimensions beside the noise


@pytest.mark.parametrize("model", [
    DCGANGenerator(z_dim=4, num_classes=3), MLPGenerator(z_dim=4, num_classes=3),
], ids=["dcgan", "mlp"])  # fmt: skip
def test_a_conditional_model_refuses_missing_or_misshapen_labels(model):
    z = torch.randn(2, 4)
    with pytest.raises(ValueError, match="labels"):
        model(z)
    with pytest.raises(ValueError, match="labels"):
        model(z, torch.tensor([1]))
