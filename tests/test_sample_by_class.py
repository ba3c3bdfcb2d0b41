"""Sampling and scoring by class (issue 12): `gansvc sample --class`, GetSamples' class_label, per-class
evaluation (intra-class FID, the classifier's agreement), and the slow end-to-end check of conditioning."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from gansvc.cli import main
from gansvc.train import Trainer, TrainSpec
from gansvc.train.conditional import sample_labels
from gansvc.train.sampling import load_generator

TINY = {"width": 8, "batch_size": 16, "log_every": 1, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0,
        "tensorboard": False, "threads": 1}  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("conditional-run")
    Trainer(TrainSpec.from_dict({**TINY, "steps": 3, "conditional": True}), path).run()
    return path


def _expected(generator, n: int, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The samples of `generate` rebuilt by hand: noise from a generator seeded with `seed`, one forward."""
    z = torch.randn(n, generator.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return generator(z, labels).clamp(-1, 1)


def test_sample_class_k_writes_images_and_labels(run_dir, tmp_path, capsys):
    out = tmp_path / "k.npz"
    assert main(["sample", str(run_dir), "-n", "12", "--class", "4", "-o", str(out)]) == 0
    data = np.load(out)
    assert data["labels"].tolist() == [4] * 12
    generator, _ = load_generator(run_dir)
    expected = _expected(generator, 12, torch.full((12,), 4))
    assert torch.allclose(torch.from_numpy(data["images"]), expected, atol=1e-6)
    # a class name works as well as its index
    assert main(["sample", str(run_dir), "-n", "3", "--class", "Coat", "-o", str(tmp_path / "c.npz")]) == 0
    assert np.load(tmp_path / "c.npz")["labels"].tolist() == [4] * 3


def test_sample_without_class_draws_labels_as_in_training(run_dir, tmp_path, capsys):
    out = tmp_path / "all.npz"
    assert main(["sample", str(run_dir), "-n", "400", "--seed", "7", "-o", str(out)]) == 0
    data = np.load(out)
    labels = torch.from_numpy(data["labels"])
    assert set(labels.tolist()) == set(range(10))  # uniform over ten classes: every one in 400 draws
    generator, _ = load_generator(run_dir)
    assert torch.equal(labels, sample_labels(generator, 400, 7))
    expected = _expected(generator, 400, labels, seed=7)
    assert torch.allclose(torch.from_numpy(data["images"]), expected, atol=1e-6)


@pytest.mark.parametrize("value", ["10", "-1", "Unicorn"])
def test_a_bad_class_exits_2(run_dir, tmp_path, capsys, value):
    assert main(["sample", str(run_dir), "-n", "2", "--class", value, "-o", str(tmp_path / "x.npz")]) == 2
    assert "--class" in capsys.readouterr().err


def test_get_samples_by_class(run_dir):
    from gansvc.service.errors import InvalidField
    from gansvc.service.messages import pb
    from gansvc.service.samples import SampleRenderer

    renderer = SampleRenderer(64 << 20)
    answer = renderer.render(run_dir, pb.GetSamplesRequest(class_label=7, count=5, include_tensor=True))
    images = torch.from_numpy(np.frombuffer(answer.tensor.data, dtype="<f4").reshape(list(answer.tensor.shape)).copy())
    generator, _ = load_generator(run_dir / "generator.pt")
    assert torch.allclose(images, _expected(generator, 5, torch.full((5,), 7)), atol=1e-6)
    with pytest.raises(InvalidField) as caught:
        renderer.render(run_dir, pb.GetSamplesRequest(class_label=10, count=5))
    assert caught.value.field == "class_label"


def _fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID of two feature sets in float64 with SciPy's sqrtm: the independent reference."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_per_class_scores_against_an_independent_computation(tmp_path, monkeypatch):
    from gansvc.data import load_images
    from gansvc.images import uint8_to_unit_range
    from gansvc.metrics.fmnist_cnn import load_classifier
    from gansvc.metrics.per_class import evaluate_per_class

    monkeypatch.setenv("GANSVC_CACHE_DIR", str(tmp_path / "cache"))
    test = load_images("fashion-mnist", "test")
    rng = torch.Generator().manual_seed(0)
    pick = torch.randperm(test.images.shape[0], generator=rng)[:1500]
    fake = uint8_to_unit_range(test.images[pick])
    labels = test.labels[pick].clone()
    labels[:300] = (labels[:300] + 1) % 10  # some samples "asked for" another class than they show
    scores = evaluate_per_class(fake, labels, "fashion-mnist:test")
    classifier = load_classifier()
    with torch.no_grad():
        predicted = classifier(fake).argmax(1)
        fake_features = classifier.features(fake).double().numpy()
        real_features = classifier.features(uint8_to_unit_range(test.images)).double().numpy()
    assert scores["class_agreement"] == pytest.approx(float((predicted == labels).double().mean()), abs=1e-12)
    for k in (0, 5, 9):
        rows = (labels == k).numpy()
        expected = _fid(fake_features[rows], real_features[(test.labels == k).numpy()])
        assert scores["intra_fid_per_class"][k] == pytest.approx(expected, rel=1e-3, abs=1e-3)
        share = float((predicted[labels == k] == k).double().mean())
        assert scores["class_agreement_per_class"][k] == pytest.approx(share, abs=1e-12)
    assert scores["intra_fid"] == pytest.approx(np.mean(list(scores["intra_fid_per_class"].values())))
    # the per-class statistics are cached: a second call reads them back and agrees
    assert len(list((tmp_path / "cache" / "fid-stats").glob("*class*"))) == 10
    again = evaluate_per_class(fake, labels, "fashion-mnist:test")
    assert again["intra_fid_per_class"] == pytest.approx(scores["intra_fid_per_class"])


def test_eval_cli_reports_per_class_scores_of_a_labelled_npz(run_dir, tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.setenv("GANSVC_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "s.npz"
    assert main(["sample", str(run_dir), "-n", "200", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", "--fake", str(out), "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.0 <= report["class_agreement"] <= 1.0 and report["intra_fid"] > 0
    assert len(report["intra_fid_per_class"]) == len(set(np.load(out)["labels"].tolist()))


@pytest.mark.slow
def test_conditional_dcgan_samples_are_classified_as_the_class_asked_for(tmp_path, capsys):
    """The issue's check, short: 400 steps (0.43 epochs) of the default conditional DCGAN on Fashion-MNIST, then
    1000 samples of each class; the shipped classifier agrees with the class asked for well above chance (10%).

    Measured on the shared 2-core machine: 30.2% after 400 steps of batch 64 (per class 9% .. 55%), 28.0% after
    400 of batch 32 with the auxiliary classifier (issue 22's defaults; 8% .. 59%); the issue's goal (>= 85%
    after 3 epochs: 91.9% now) needs the full run of bench/quality.py."""
    from gansvc.metrics.fmnist_cnn import load_classifier

    run = tmp_path / "run"
    assert main(["train", "--conditional", "--steps", "400", "--threads", "1", "--eval-samples", "0",
                 "--sample-every", "0", "--checkpoint-every", "0", "--no-tensorboard", "--quiet",
                 "--out", str(run)]) == 0  # fmt: skip
    classifier = load_classifier()
    shares = []
    for k in range(10):
        out = tmp_path / f"class{k}.npz"
        assert main(["sample", str(run), "-n", "1000", "--class", str(k), "-o", str(out)]) == 0
        with torch.no_grad():
            predicted = classifier(torch.from_numpy(np.load(out)["images"])).argmax(1)
        shares.append(float((predicted == k).double().mean()))
    print("class agreement per class:", [round(s, 3) for s in shares], "mean", round(float(np.mean(shares)), 3))
    assert np.mean(shares) > 0.2  # twice chance


def test_service_validation_of_class_labels_and_the_resolved_loss(tmp_path):
    from gansvc.service.devices import DevicePool
    from gansvc.service.errors import InvalidField
    from gansvc.service.messages import pb
    from gansvc.service.validation import DataRoots, evaluation_spec, training_spec

    roots, pool = DataRoots.of([tmp_path]), DevicePool([], 1)
    assert training_spec(pb.TrainingSpec(steps=5, model="resnet"), roots, pool)["loss"] == "hinge"
    assert training_spec(pb.TrainingSpec(steps=5), roots, pool)["loss"] == "bce"
    images = np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    samples = pb.Tensor(shape=[4, 1, 28, 28], dtype=pb.DTYPE_UINT8, data=images.tobytes())
    good = evaluation_spec(pb.EvaluationSpec(samples=samples, sample_labels=[0, 1, 2, 3]), roots, pool, None, tmp_path)
    assert good.spec["sample_labels"] == [0, 1, 2, 3]
    for message, field in [
        (pb.EvaluationSpec(samples=samples, sample_labels=[0, 1]), "sample_labels"),
        (pb.EvaluationSpec(samples=samples, sample_labels=[0, 1, 2, -3]), "sample_labels"),
        (pb.EvaluationSpec(samples=samples, class_labels=[1]), "class_labels"),
    ]:
        with pytest.raises(InvalidField) as caught:
            evaluation_spec(message, roots, pool, None, tmp_path)
        assert caught.value.field == field
