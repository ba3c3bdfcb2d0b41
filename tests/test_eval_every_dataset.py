"""FID during training for every data set: a CIFAR-like RGB folder run is scored with inception-v3 from the
operator's weights file (a seeded random network in pytorch-fid's layout stands in for the real one, which
cannot be downloaded here), its numbers equal an outside evaluate() of the run's generator, the reference
statistics are cached per weights digest and reused, and without weights the run says why it has no FID."""

from __future__ import annotations

import pytest
import torch

from gansvc.runtime import events as ev
from gansvc.train import Trainer, TrainSpec

inception = pytest.importorskip("gansvc.metrics.inception")
reference_module = pytest.importorskip("gansvc.metrics.reference")

SPEC = {"model": "dcgan", "width": 8, "batch_size": 8, "steps": 2, "log_every": 1, "sample_every": 0,
        "checkpoint_every": 0, "eval_samples": 6, "image_size": 32, "tensorboard": False, "threads": 1}  # fmt: skip


def weights_file(folder, seed: int):
    """A randomly initialised FID Inception saved as pytorch-fid's file is (no num_batches_tracked)."""
    torch.manual_seed(seed)
    net = inception.build_fid_inception()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = folder / f"pt_inception-random-{seed}.pth"
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return path


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("cifar-like")
    pixels = torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for i, image in enumerate(pixels):
        Image.fromarray(image.numpy(), mode="RGB").save(folder / f"{i}.png")
    return folder


def test_a_folder_run_is_scored_with_the_configured_inception_weights(tmp_path, rgb_folder, monkeypatch):
    from gansvc.metrics import evaluate
    from gansvc.train.sampling import generate, load_generator

    weights = weights_file(tmp_path, seed=0)
    cache = tmp_path / "cache"
    monkeypatch.setenv("GANSVC_CACHE_DIR", str(cache))
    monkeypatch.setenv("GANSVC_INCEPTION_WEIGHTS", str(weights))
    spec = TrainSpec.from_dict({**SPEC, "dataset": f"folder:{rgb_folder}"})
    events = []
    summary = Trainer(spec, tmp_path / "run", on_event=events.append).run()
    said = [e.message for e in events if isinstance(e, ev.Log) and "inception-v3" in e.message]
    assert len(said) == 1 and "trained on imagenet" in said[0] and weights.name in said[0]
    assert not [e for e in events if isinstance(e, ev.Warning)]  # the standard FID network: nothing to warn
    scores = [e for e in events if isinstance(e, ev.Metrics) and "fid" in e.values]
    assert len(scores) == 1 and scores[0].step == 2
    # the same numbers from outside: the exported generator, the trainer's evaluation noise, the folder itself
    generator, _ = load_generator(tmp_path / "run")
    expected = evaluate(generate(generator, 6, seed=spec.seed + 4), real=f"folder:{rgb_folder}",
                        extractor="inception-v3", inception_weights=weights, image_size=32)  # fmt: skip
    assert summary["eval"]["fid"] == pytest.approx(expected["fid"], rel=1e-6)
    assert summary["eval"]["is_mean"] == pytest.approx(expected["is_mean"], rel=1e-6)
    # the kept best is that evaluation
    assert summary["best"]["step"] == 2 and summary["best"]["value"] == summary["eval"]["fid"]
    # one statistics file, named by the weights' digest; a second run (a fresh process's view) reads it
    from gansvc.metrics.features import file_digest

    files = list((cache / "fid-stats").glob("*.npz"))
    assert len(files) == 1 and file_digest(weights) in files[0].name and "inception-v3" in files[0].name

    def fail(*args, **kwargs):
        raise AssertionError("the reference statistics were computed again instead of read from the cache")

    reference_module._MEMO.clear()
    monkeypatch.setattr(reference_module, "_compute", fail)
    again = Trainer(spec.with_overrides(seed=1), tmp_path / "again").run()
    assert "fid" in again["eval"]
    # other weights are another network: their own statistics
    monkeypatch.undo()
    monkeypatch.setenv("GANSVC_CACHE_DIR", str(cache))
    monkeypatch.setenv("GANSVC_INCEPTION_WEIGHTS", str(weights_file(tmp_path, seed=1)))
    other = Trainer(spec, tmp_path / "other").run()
    assert len(list((cache / "fid-stats").glob("*.npz"))) == 2 and other["eval"]["fid"] != summary["eval"]["fid"]


def test_without_weights_the_run_says_why_it_has_no_fid(tmp_path, rgb_folder, monkeypatch):
    monkeypatch.delenv("GANSVC_INCEPTION_WEIGHTS", raising=False)
    events = []
    spec = TrainSpec.from_dict({**SPEC, "dataset": f"folder:{rgb_folder}"})
    summary = Trainer(spec, tmp_path, on_event=events.append).run()
    warnings = [e for e in events if isinstance(e, ev.Warning)]
    assert [w.code for w in warnings] == ["eval_unavailable"]
    assert "no Inception weights are configured" in warnings[0].message and "--inception-weights" in warnings[0].message
    assert not any(isinstance(e, ev.Metrics) and "fid" in e.values for e in events) and not summary["eval"]
    assert summary["best"] is None


def test_a_weights_file_of_another_layout_is_said_once_and_scores_nothing(tmp_path, rgb_folder, monkeypatch):
    bad = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, bad)
    monkeypatch.setenv("GANSVC_INCEPTION_WEIGHTS", str(bad))
    events = []
    spec = TrainSpec.from_dict({**SPEC, "dataset": f"folder:{rgb_folder}", "steps": 4, "eval_every": 2})
    summary = Trainer(spec, tmp_path / "run", on_event=events.append).run()
    warnings = [e for e in events if isinstance(e, ev.Warning)]
    assert [w.code for w in warnings] == ["eval_unavailable"] and "not the FID Inception layout" in warnings[0].message
    assert not summary["eval"]


def test_eval_extractor_is_the_spec_s_choice(tmp_path, rgb_folder):
    from gansvc.train.spec import SpecError

    with pytest.raises(SpecError) as caught:
        TrainSpec.from_dict({**SPEC, "dataset": f"folder:{rgb_folder}", "eval_extractor": "resnet"})
    assert caught.value.field == "eval_extractor"
    # fmnist-cnn named for RGB images: no FID, and the run says the extractor does not fit
    events = []
    spec = TrainSpec.from_dict({**SPEC, "dataset": f"folder:{rgb_folder}", "eval_extractor": "fmnist-cnn"})
    Trainer(spec, tmp_path, on_event=events.append).run()
    warnings = [e for e in events if isinstance(e, ev.Warning)]
    assert [w.code for w in warnings] == ["eval_unavailable"] and "cannot take" in warnings[0].message
