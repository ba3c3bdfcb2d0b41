"""Class-conditional training and the residual model through the Trainer (issue 12): labels reach G and D,
exact resume, per-class grids, the resolved default loss, and a data set without labels refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from gansvc.images import encode_png
from gansvc.train import Trainer
from gansvc.train.batches import DeviceBatches
from gansvc.train.conditional import GRID_COLUMNS, draw_labels
from gansvc.train.sampling import load_generator
from gansvc.train.spec import SpecError

from tests.test_train import losses, tiny, unlabelled_image_folder  # the trainer tests' tiny runs


RECIPES = {
    "dcgan": {"conditional": True},
    "dcgan-wgan-gp-ncritic2": {"conditional": True, "loss": "wasserstein", "gradient_penalty": 10.0, "n_critic": 2},
    "mlp-r1-data-labels": {"conditional": True, "model": "mlp", "r1_gamma": 1.0, "label_sampling": "data"},
    "resnet-conditional": {"conditional": True, "model": "resnet"},
    "resnet-attention": {"model": "resnet", "attention": 14},
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_resume_is_exact(tmp_path, recipe):
    straight = tiny(steps=8, **RECIPES[recipe])
    Trainer(straight, tmp_path / "straight").run()
    Trainer(straight.with_overrides(steps=4), tmp_path / "split").run()
    second = Trainer(straight, tmp_path / "split").run()
    assert second["resumed_from"] == 4 and second["step"] == 8
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")
    a = torch.load(tmp_path / "straight" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoints" / "latest.pt", weights_only=True)
    for part in ("G", "D"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    if straight.conditional:
        assert a["num_classes"] == 10 and len(a["class_names"]) == 10


def test_models_are_conditional_and_d_sees_the_batches_labels(tmp_path, monkeypatch):
    """D is called with labels: the real rows' own labels (read independently from the data) and G's labels."""
    from gansvc.data import load_images

    data = load_images("fashion-mnist", "train")
    seen = []
    original = DeviceBatches.next

    def spy(self):
        batch = original(self)
        seen.append((batch.clone(), self.last_labels.clone()))
        return batch

    monkeypatch.setattr(DeviceBatches, "next", spy)
    trainer = Trainer(tiny(steps=2, conditional=True), tmp_path)
    trainer.run()
    assert trainer.G.num_classes == 10 and trainer.D.num_classes == 10
    # every real row's label is the data set's label of that image (found by its pixels)
    flat = data.images.flatten(1)
    for batch, labels in seen:
        pixels = ((batch + 1) * 127.5).round().to(torch.uint8).flatten(1)
        for row, label in zip(pixels[:4], labels[:4]):
            index = int((flat == row).all(1).nonzero()[0])
            assert int(data.labels[index]) == int(label)


def test_data_label_sampling_follows_the_class_frequencies():
    probs = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    labels = draw_labels(20000, 3, probs, torch.Generator().manual_seed(0), "cpu")
    shares = torch.bincount(labels, minlength=3).double() / 20000
    assert torch.allclose(shares, probs, atol=0.015)
    uniform = draw_labels(30000, 3, None, torch.Generator().manual_seed(0), "cpu")
    assert torch.allclose(torch.bincount(uniform).double() / 30000, torch.full((3,), 1 / 3, dtype=torch.float64),
                          atol=0.015)  # fmt: skip


def test_sample_grid_has_one_row_per_class(tmp_path):
    spec = tiny(steps=2, conditional=True)
    summary = Trainer(spec, tmp_path).run()
    assert summary["class_names"][0] == "T-shirt/top" and len(summary["class_names"]) == 10
    generator, _ = load_generator(tmp_path / "generator.pt")
    fixed = torch.randn(64, spec.z_dim, generator=torch.Generator().manual_seed(spec.seed + 2))[:GRID_COLUMNS]
    with torch.no_grad():
        rows = [generator(fixed, torch.full((GRID_COLUMNS,), k)) for k in range(10)]
    expected = encode_png(torch.cat(rows).clamp(-1, 1), GRID_COLUMNS)
    assert (tmp_path / "samples" / "latest.png").read_bytes() == expected


def test_a_data_set_without_labels_is_refused_naming_conditional(tmp_path):
    folder = unlabelled_image_folder(tmp_path / "images", 20)
    with pytest.raises(SpecError) as caught:
        Trainer(tiny(steps=1, dataset=f"folder:{folder}", image_size=32, conditional=True), tmp_path / "run").run()
    assert caught.value.field == "conditional"


def test_resnet_defaults_to_hinge_and_the_spec_shows_it_resolved(tmp_path):
    assert tiny(steps=1, model="resnet").loss == "hinge"
    assert tiny(steps=1).loss == "bce"
    assert tiny(steps=1, model="resnet", loss="bce").loss == "bce"
    Trainer(tiny(steps=1, model="resnet"), tmp_path).run()
    assert json.loads((tmp_path / "spec.json").read_text())["loss"] == "hinge"


def test_resnet_discriminator_is_spectrally_normalised_without_the_flag(tmp_path):
    trainer = Trainer(tiny(steps=1, model="resnet", spectral_norm=False), tmp_path)
    trainer.run()
    convs = [m for m in trainer.D.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)
    for m in convs:  # largest singular value of the effective weight, by SVD: at most 1 (power iteration estimate)
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert float(sigma) <= 1.05


@pytest.mark.parametrize(("settings", "field"), [
    ({"attention": 14}, "attention"),  # dcgan has no attention
    ({"model": "resnet", "attention": 9}, "attention"),
    ({"label_sampling": "data"}, "label_sampling"),
    ({"label_sampling": "often", "conditional": True}, "label_sampling"),
])  # fmt: skip
def test_bad_settings_name_the_field(tmp_path, settings, field):
    with pytest.raises(SpecError) as caught:
        Trainer(tiny(steps=1, **settings), tmp_path).run()
    assert caught.value.field == field
