"""The residual GAN: shapes at every size, 1-Lipschitz D layers, conditional inputs, self-attention."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from gansvc.models.resnet import ResNetDiscriminator, ResNetGenerator, SelfAttention


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3), (128, 3)])
@pytest.mark.parametrize("classes", [0, 10])
def test_shapes_and_range(size, channels, classes):
    torch.manual_seed(0)
    G = ResNetGenerator(z_dim=16, channels=channels, image_size=size, width=8, num_classes=classes)
    D = ResNetDiscriminator(channels=channels, image_size=size, width=8, num_classes=classes)
    labels = torch.randint(0, classes, (3,)) if classes else None
    x = G(torch.randn(3, 16), labels)
    assert x.shape == (3, channels, size, size) and x.abs().max() <= 1
    assert D(x, labels).shape == (3,)


def test_every_discriminator_layer_is_one_lipschitz():
    torch.manual_seed(1)
    D = ResNetDiscriminator(channels=3, image_size=32, width=16, num_classes=5, attention=8)
    D.train()
    for _ in range(30):  # power iteration converges over forward passes
        D(torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,)))
    D.eval()
    checked = 0
    for module in D.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
            assert hasattr(module, "parametrizations"), module  # spectral norm on every weight
            w = module.weight.detach().flatten(1) if not isinstance(module, nn.Embedding) else module.weight.detach()
            sigma = torch.linalg.matrix_norm(w, ord=2).item()  # independent: the exact largest singular value
            assert sigma == pytest.approx(1.0, abs=0.05), module
            checked += 1
    assert checked >= 10


def test_conditional_generator_uses_its_labels():
    torch.manual_seed(2)
    G = ResNetGenerator(z_dim=8, channels=1, image_size=28, width=8, num_classes=4).eval()
    for bn in (m for m in G.modules() if isinstance(m, nn.Embedding)):
        nn.init.normal_(bn.weight)  # make the classes differ (they start equal)
    z = torch.randn(2, 8)
    a, b = G(z, torch.tensor([0, 0])), G(z, torch.tensor([1, 1]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="labels"):
        G(z)


def test_projection_discriminator_term():
    # the label enters only through <embed(y), h>: logits differ between two labels by (E[a] - E[b]) . h
    torch.manual_seed(3)
    D = ResNetDiscriminator(channels=1, image_size=28, width=8, num_classes=3).eval()
    x = torch.randn(2, 1, 28, 28)
    features = []
    D.linear.register_forward_hook(lambda module, inputs, output: features.append(inputs[0]))
    with torch.no_grad():
        a, b = D(x, torch.tensor([0, 0])), D(x, torch.tensor([2, 2]))
        E = D.embed.weight
    h = features[0].double()
    assert torch.allclose((a - b).double(), h @ (E[0] - E[2]).double(), atol=1e-4)


def test_self_attention_starts_as_identity_and_refuses_a_wrong_resolution():
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(SelfAttention(8)(x), x)
    with pytest.raises(ValueError, match="attention"):
        ResNetGenerator(image_size=32, attention=5)


def test_resnet_brings_its_own_optimiser_defaults_that_explicit_settings_override(tmp_path):
    """A spec naming model resnet and no optimiser settings gets the residual model's two-time-scale rates and
    betas (its SN discriminator learns nothing under the DCGAN's G-heavy defaults); given settings win, and the
    other models keep TrainSpec's defaults. The resolved values are what the run records in spec.json."""
    from gansvc.runtime import registry
    from gansvc.train import Trainer, TrainSpec

    own = dict(registry.model_info("resnet").optimizer)
    spec = TrainSpec.from_dict({"model": "resnet", "steps": 1})
    assert {key: getattr(spec, key) for key in own} == own
    assert own["beta1"] == 0.0 and own["lr_g"] < TrainSpec().lr_g  # SNGAN's settings, not the DCGAN's G-heavy ones
    mixed = TrainSpec.from_dict({"model": "resnet", "steps": 1, "lr_g": 3e-4, "beta2": 0.99})
    assert (mixed.lr_g, mixed.lr_d, mixed.beta1, mixed.beta2) == (3e-4, own["lr_d"], own["beta1"], 0.99)
    plain = TrainSpec.from_dict({"model": "dcgan", "steps": 1})
    generic = TrainSpec()
    assert (plain.lr_g, plain.lr_d, plain.beta1, plain.beta2) == (generic.lr_g, generic.lr_d, generic.beta1,
                                                                  generic.beta2)  # fmt: skip
    tiny = {"model": "resnet", "width": 4, "batch_size": 8, "steps": 1, "sample_every": 0, "eval_samples": 0,
            "tensorboard": False, "threads": 1}  # fmt: skip
    Trainer(TrainSpec.from_dict(tiny), tmp_path).run()
    recorded = TrainSpec.from_dict(json.loads((tmp_path / "spec.json").read_text()))
    assert {key: getattr(recorded, key) for key in own} == own
    state = torch.load(tmp_path / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    assert state["opt_g"]["param_groups"][0]["lr"] == own["lr_g"]
    assert tuple(state["opt_d"]["param_groups"][0]["betas"]) == (own["beta1"], own["beta2"])
