"""The low-diversity (mode collapse) check fires from a real training run: a generator that ignores its noise
(a plugin model, `collapsed`) gets the warning at the first sample grid the check looks at; the same network
fed its noise (`good-flat`) trains as long and gets none. Whether the samples are alike is measured here on
the trained generators with SciPy, independently of the trainer's own check."""

from __future__ import annotations

import numpy as np
import pytest
from plugin_packages import plugins_visible
from scipy.spatial.distance import pdist

from gansvc.runtime import events as ev
from gansvc.train import Trainer, TrainSpec
from gansvc.train.evaluation import COLLAPSE_CHECKS_FROM

RUN = {"dataset": "fashion-mnist", "steps": COLLAPSE_CHECKS_FROM, "batch_size": 16, "z_dim": 8, "log_every": 100,
       "sample_every": COLLAPSE_CHECKS_FROM // 2, "checkpoint_every": 0, "eval_samples": 0, "tensorboard": False,
       "threads": 1, "device": "cpu"}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def visible(tmp_path_factory):
    with plugins_visible(tmp_path_factory.mktemp("plugins")):
        yield


def _spread_ratio(run_dir, real: np.ndarray) -> float:
    """Return the mean pairwise distance of 64 samples of the run's generator over that of 64 real images."""
    from gansvc.train.sampling import generate, load_generator

    generator, _ = load_generator(run_dir / "generator.pt")
    fake = generate(generator, 64, seed=7).double().numpy().reshape(64, -1)
    return float(pdist(fake).mean() / pdist(real).mean())


@pytest.fixture(scope="module")
def real_images(fashion_mnist_root):
    from gansvc.data import load_dataset

    images = load_dataset("fashion-mnist", "test", fashion_mnist_root).images[:64]
    return images.double().numpy().reshape(64, -1) / 127.5 - 1.0  # the generator's [-1, 1]


@pytest.mark.parametrize("model", ["collapsed", "good-flat"])
def test_the_low_diversity_warning_comes_from_a_collapsed_run_only(model, tmp_path, fashion_mnist_root, real_images):
    seen = []
    spec = TrainSpec.from_dict({**RUN, "model": model, "data_root": str(fashion_mnist_root)})
    summary = Trainer(spec, tmp_path, on_event=seen.append).run()
    assert summary["step"] == COLLAPSE_CHECKS_FROM
    grids = [e.step for e in seen if isinstance(e, ev.Samples)]
    assert grids == [COLLAPSE_CHECKS_FROM // 2, COLLAPSE_CHECKS_FROM]  # the first grid is before the check starts
    warnings = [(e.step, e.code, e.message) for e in seen if isinstance(e, ev.Warning)]
    ratio = _spread_ratio(tmp_path, real_images)
    if model == "collapsed":
        assert ratio < 1e-6  # every noise gives the same image
        assert [(step, code) for step, code, _ in warnings] == [(COLLAPSE_CHECKS_FROM, "mode_collapse")]
        assert "low sample diversity" in warnings[0][2] and "differ 0.00x" in warnings[0][2]
    else:
        assert ratio > 0.5  # as varied as real images, to a factor of two
        assert warnings == []
