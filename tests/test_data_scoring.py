"""Scores of folder:PATH and zip:PATH data sets, held in memory or streamed (issue 18, items 4 and 8): FID during
training on a ZIP archive and on a folder larger than the memory budget, reference statistics streamed chunk by
chunk that equal NumPy's on the same features, conditional training on streamed data identical to in memory, and
intra-class FID against labelled folders and archives. Every data set is PNGs written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gansvc.data.sources import ImageFiles, folder_files, zip_files
from gansvc.data.streaming import READ_CHUNK, StreamedData, open_training_data
from gansvc.images import uint8_to_unit_range
from gansvc.metrics import reference as reference_module
from gansvc.metrics.evaluate import evaluate, get_extractor
from gansvc.metrics.per_class import evaluate_per_class
from gansvc.runtime import events as ev
from gansvc.runtime import registry
from gansvc.train import Trainer, TrainSpec
from gansvc.train.batches import StreamedBatches
from gansvc.train.evaluation import reference_split
from gansvc.train.sampling import generate, load_generator

from tests.test_data_streaming import random_images, write_dataset_tool_zip, write_folder

SPEC = {"model": "mlp", "mlp_hidden": 16, "z_dim": 8, "batch_size": 8, "image_size": 28, "log_every": 1,
        "sample_every": 0, "checkpoint_every": 0, "eval_samples": 40, "tensorboard": False, "threads": 1,
        "ema_decay": 0.0}  # fmt: skip
CLASSES = 3


def classes_of(count: int) -> list[int]:
    return [i % CLASSES for i in range(count)]


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test computes its own reference statistics (a cache folder of its own, nothing kept in memory)."""
    monkeypatch.setenv("GANSVC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GANSVC_DATA_WORKERS", "0")
    reference_module._MEMO.clear()
    yield
    reference_module._MEMO.clear()


@pytest.fixture
def labelled_zip(tmp_path):
    path = tmp_path / "set.zip"
    write_dataset_tool_zip(path, random_images(120, 28, 1, seed=1), classes_of(120))
    return path


@pytest.fixture
def labelled_folder(tmp_path):
    """600 images (over two loader chunks) in class sub-folders c0, c1, c2."""
    folder = tmp_path / "images"
    write_folder(folder, random_images(600, 28, 1, seed=2), [f"c{k}" for k in classes_of(600)])
    return folder


def never_whole(monkeypatch):
    """Make reading a folder or archive whole into memory fail: what streams must never do it."""

    def refuse(self):
        raise AssertionError(f"{self.name} was read whole into memory")

    monkeypatch.setattr(ImageFiles, "read_all", refuse)


class Recording:
    """An extractor that records how many images each call was given (the chunks a reference is read in)."""

    def __init__(self, net):
        self.net, self.sizes = net, []

    def __getattr__(self, name):
        return getattr(self.net, name)

    def __call__(self, images, *args, **kwargs):
        self.sizes.append(images.shape[0])
        return self.net(images, *args, **kwargs)


def numpy_moments(net, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The independent reference: features of all images at once, mean and covariance by NumPy in float64."""
    rows = net(images)[0].double().numpy()
    return rows.mean(0), np.cov(rows, rowvar=False)


# ---------------------------------------------------------------------- the real side of a run
def test_a_zip_or_folder_run_is_scored_against_the_set_itself():
    # 'zip:PATH:test' named the file 'PATH:test': the archive, like a folder, has no splits
    assert reference_split("zip:/d/set.zip") == "zip:/d/set.zip"
    assert registry.parse_real(reference_split("zip:/d/set.zip")).path == "/d/set.zip"
    assert reference_split("folder:/d/images") == "folder:/d/images"
    assert reference_split("fashion-mnist") == "fashion-mnist:test"


def test_fid_during_training_on_a_zip_set(tmp_path, labelled_zip):
    dataset = f"zip:{labelled_zip}"
    spec = TrainSpec.from_dict({**SPEC, "dataset": dataset, "steps": 6, "eval_every": 2,
                                "early_stop_patience": 1, "early_stop_min_delta": 1e9})  # fmt: skip
    events = []
    summary = Trainer(spec, tmp_path / "run", on_event=events.append).run()
    assert not [e for e in events if isinstance(e, ev.Warning) and e.code == "eval_unavailable"]
    scores = [e for e in events if isinstance(e, ev.Metrics) and "fid" in e.values]
    assert [e.step for e in scores] == [2, 4]
    # the best checkpoint is the first evaluation; the second, not better by 1e9, ends the run
    assert summary["best"]["step"] == 2 and (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    assert summary["status"] == "early_stopped" and summary["step"] == 4
    # the same number from outside: the run's generator and evaluation noise against the archive itself
    generator, _ = load_generator(tmp_path / "run")
    expected = evaluate(generate(generator, 40, seed=spec.seed + 4), real=dataset, image_size=28)
    assert summary["eval"]["fid"] == pytest.approx(expected["fid"], rel=1e-6)


def test_fid_during_training_on_a_folder_larger_than_the_memory_budget(tmp_path, labelled_folder, monkeypatch):
    dataset = f"folder:{labelled_folder}"
    spec = TrainSpec.from_dict({**SPEC, "dataset": dataset, "steps": 2, "eval_every": 2})
    monkeypatch.setenv(registry.DATASET_MEMORY_ENV, "100K")  # 600 x 784 bytes = 470 KB: streamed
    with monkeypatch.context() as streaming:
        never_whole(streaming)
        trainer = Trainer(spec, tmp_path / "run")
        summary = trainer.run()
    assert isinstance(trainer.batches, StreamedBatches)
    assert summary["eval"]["fid"] > 0
    # the folder read into memory (a budget it fits, a cache of its own) scores the run's samples the same
    monkeypatch.setenv(registry.DATASET_MEMORY_ENV, "1G")
    monkeypatch.setenv("GANSVC_CACHE_DIR", str(tmp_path / "memory-cache"))
    reference_module._MEMO.clear()
    generator, _ = load_generator(tmp_path / "run")
    expected = evaluate(generate(generator, 40, seed=spec.seed + 4), real=dataset, image_size=28)
    assert summary["eval"]["fid"] == pytest.approx(expected["fid"], rel=1e-6)


# ---------------------------------------------------------------------- streamed reference statistics
def test_streamed_reference_statistics_equal_numpy_on_the_same_features(labelled_folder, monkeypatch):
    real = f"folder:{labelled_folder}"
    data = folder_files(labelled_folder, 28).read_all()
    net = Recording(get_extractor("fmnist-cnn"))
    mu, sigma = numpy_moments(net, data.images)
    monkeypatch.setenv(registry.DATASET_MEMORY_ENV, "100K")
    never_whole(monkeypatch)
    assert isinstance(open_training_data(real, image_size=28), StreamedData)
    net.sizes.clear()
    streamed = reference_module.real_reference(real, net, image_size=28)
    # read chunk by chunk through the loader: never more than a chunk of images at once, all of them once
    assert max(net.sizes) <= READ_CHUNK and sum(net.sizes) == 600 and len(net.sizes) == 3
    assert streamed.count == 600 and streamed.kid_features.shape == (600, net.feature_dim)
    np.testing.assert_allclose(streamed.stats.mu, mu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(streamed.stats.sigma, sigma, rtol=1e-9, atol=1e-9 * np.abs(sigma).max())
    # one class of it: the rows of that class, streamed
    rows = (data.labels == 1).numpy()
    one = reference_module.real_reference(real, net, image_size=28, label=1)
    mu1, sigma1 = numpy_moments(net, data.images[rows])
    assert one.count == int(rows.sum()) == 200
    np.testing.assert_allclose(one.stats.mu, mu1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(one.stats.sigma, sigma1, rtol=1e-9, atol=1e-9 * np.abs(sigma1).max())


def test_streamed_and_in_memory_sets_share_their_cached_statistics(labelled_zip, monkeypatch):
    real = f"zip:{labelled_zip}"
    net = get_extractor("fmnist-cnn")
    monkeypatch.setenv(registry.DATASET_MEMORY_ENV, "10K")
    with monkeypatch.context() as streaming:
        never_whole(streaming)
        streamed = reference_module.real_reference(real, net, n_real=50, image_size=28)
    # in memory now: the images' digest is the same, so the streamed run's file is read back, not recomputed
    monkeypatch.setenv(registry.DATASET_MEMORY_ENV, "1G")
    reference_module._MEMO.clear()

    def fail(*args, **kwargs):
        raise AssertionError("the statistics were computed again instead of read from the cache")

    with monkeypatch.context() as patched:
        patched.setattr(reference_module, "_compute", fail)
        held = reference_module.real_reference(real, net, n_real=50, image_size=28)
    assert held.cache_path == streamed.cache_path and held.count == 50
    # and the same 50-image subset computed in memory from scratch agrees with the streamed one
    monkeypatch.setenv("GANSVC_CACHE_DIR", str(labelled_zip.parent / "another-cache"))
    reference_module._MEMO.clear()
    fresh = reference_module.real_reference(real, net, n_real=50, image_size=28)
    np.testing.assert_allclose(fresh.stats.mu, streamed.stats.mu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fresh.stats.sigma, streamed.stats.sigma, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------- conditional training on streamed data
def test_conditional_training_on_streamed_data_equals_in_memory(tmp_path, labelled_zip, monkeypatch):
    spec = TrainSpec.from_dict({**SPEC, "dataset": f"zip:{labelled_zip}", "steps": 6, "eval_samples": 0,
                                "conditional": True, "label_sampling": "data", "checkpoint_every": 6})  # fmt: skip
    monkeypatch.setenv(registry.DATASET_MEMORY_ENV, "1G")
    held = Trainer(spec, tmp_path / "memory")
    held.run()
    monkeypatch.setenv(registry.DATASET_MEMORY_ENV, "10K")  # 120 x 784 bytes: streamed
    never_whole(monkeypatch)
    streamed = Trainer(spec, tmp_path / "streamed")
    streamed.run()
    assert isinstance(streamed.batches, StreamedBatches)
    assert streamed.num_classes == held.num_classes == CLASSES
    assert torch.equal(streamed.label_probs, held.label_probs)
    a = torch.load(tmp_path / "memory" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "streamed" / "checkpoints" / "latest.pt", weights_only=True)
    for part in ("G", "D"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


def test_streamed_labels_are_the_archives_and_the_folders(labelled_zip, labelled_folder):
    for name, files in ((f"zip:{labelled_zip}", zip_files(labelled_zip, 28)),
                        (f"folder:{labelled_folder}", folder_files(labelled_folder, 28))):  # fmt: skip
        data = open_training_data(name, image_size=28, budget=1)
        assert isinstance(data, StreamedData) and torch.equal(data.labels, files.read_all().labels)


# ---------------------------------------------------------------------- intra-class FID
def _fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID of two feature sets by NumPy in float64, the independent reference: Tr((S1 S2)^1/2) as the trace of
    (A S2 A)^1/2 with A = S1^1/2, both by eigh (exact where the per-class covariances are singular, as here)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(s1)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    trace = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace)


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_intra_class_fid_against_a_labelled_folder_or_zip(kind, labelled_folder, labelled_zip, monkeypatch):
    path = labelled_folder if kind == "folder" else labelled_zip
    real = f"{kind}:{path}"
    data = (folder_files if kind == "folder" else zip_files)(path, 28).read_all()
    monkeypatch.setenv(registry.DATASET_MEMORY_ENV, "10K")  # streamed, labels in memory
    never_whole(monkeypatch)
    fake = uint8_to_unit_range(torch.from_numpy(random_images(90, 28, 1, seed=5)).unsqueeze(1))
    labels = torch.tensor(classes_of(90))
    scores = evaluate_per_class(fake, labels, real, image_size=28)
    net = get_extractor("fmnist-cnn")
    fake_features = net(fake)[0].double().numpy()
    real_features = net(data.images)[0].double().numpy()
    assert sorted(scores["intra_fid_per_class"]) == list(range(CLASSES))
    for k in range(CLASSES):
        expected = _fid(fake_features[(labels == k).numpy()], real_features[(data.labels == k).numpy()])
        assert scores["intra_fid_per_class"][k] == pytest.approx(expected, rel=1e-6)
    assert scores["class_agreement"] is None  # fmnist-cnn's classes are not this set's


def test_per_class_scores_of_an_unlabelled_set_are_refused_by_name(tmp_path):
    folder = tmp_path / "flat"
    write_folder(folder, random_images(20, 28, 1, seed=6))
    fake = torch.zeros(4, 1, 28, 28)
    with pytest.raises(reference_module.NoClassLabels, match="carry no class labels"):
        evaluate_per_class(fake, torch.tensor([0, 0, 1, 1]), f"folder:{folder}")
    with pytest.raises(reference_module.NoClassLabels, match="labelled data set"):
        evaluate_per_class(fake, torch.tensor([0, 0, 1, 1]), str(folder))


def test_an_evaluation_job_scores_per_class_against_a_zip_and_warns_for_a_flat_folder(tmp_path, labelled_zip):
    from gansvc.service.worker import _per_class_scores

    class Channel:
        def __init__(self):
            self.sent = []

        def send(self, event):
            self.sent.append(event)

    folder = tmp_path / "flat"
    write_folder(folder, random_images(20, 28, 1, seed=6))
    fake = uint8_to_unit_range(torch.from_numpy(random_images(30, 28, 1, seed=7)).unsqueeze(1))
    labels = torch.tensor(classes_of(30))
    spec = {"real": f"zip:{labelled_zip}", "extractor": "fmnist-cnn"}
    scores = _per_class_scores(fake, labels, spec, "cpu", Channel())
    assert set(scores["intra_fid_per_class"]) == {"0", "1", "2"} and scores["intra_fid"] > 0
    channel = Channel()
    assert _per_class_scores(fake, labels, {**spec, "real": f"folder:{folder}"}, "cpu", channel) == {}
    warned = [e for e in channel.sent if getattr(e, "level", "") == "warning"]
    assert len(warned) == 1 and "carry no class labels" in warned[0].message


def test_an_evaluation_against_a_folder_reads_it_at_the_generated_images_size(labelled_folder):
    # A folder's images have no size of their own: without image_size they were read at 64 px, which the
    # 28×28 fmnist-cnn refused. Now the real side is read at the generated images' size, as a run reads it.

    fake = uint8_to_unit_range(torch.from_numpy(random_images(90, 28, 1, seed=6)).unsqueeze(1))
    result = evaluate(fake, f"folder:{labelled_folder}", kid_subsets=2)
    net = get_extractor("fmnist-cnn")
    real_features = net(folder_files(labelled_folder, 28).read_all().images)[0].double().numpy()
    expected = _fid(net(fake)[0].double().numpy(), real_features)
    assert result["n_real"] == 600 and result["fid"] == pytest.approx(expected, rel=1e-6)
