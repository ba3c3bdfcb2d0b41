"""Shared test fixtures: the devices to test kernels on, and the Fashion-MNIST files."""

from __future__ import annotations

import pytest
import torch

from gansvc.data.datasets import DEBIAN_FASHION_MNIST


def devices() -> list:
    """CPU always; CUDA as a parameter that skips with a reason where no GPU is present."""
    cuda = pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
    )
    return ["cpu", cuda]


@pytest.fixture(scope="session")
def fashion_mnist_root():
    """The Debian package's Fashion-MNIST folder; scripts/setup.sh installs it."""
    assert DEBIAN_FASHION_MNIST.is_dir(), "run scripts/setup.sh (apt-get install -y dataset-fashion-mnist)"
    return DEBIAN_FASHION_MNIST


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests run on one intra-op thread: on a 2-core machine with the other core busy, 2-thread
    OpenMP makes small ATen ops up to 70x slower, and results then depend on nothing but timing."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A private statistics cache for this module (the test set's statistics are computed once)."""
    path = tmp_path_factory.mktemp("gansvc-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("GANSVC_CACHE_DIR", str(path))
    yield path
    patch.undo()
