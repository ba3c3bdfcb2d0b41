"""Plugin packages for the tests: the worked example (examples/plugins) and a package of broken plugins.

scripts/setup.sh installs the example editable into .venv; where it is not installed (a venv set up
otherwise), `make_plugins_visible` installs it into a temporary folder. The broken package is written
by hand (a module and a .dist-info with entry_points.txt, what pip would write). Both folders go on
sys.path and PYTHONPATH, so the server's worker processes find them too.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BROKEN_MODULE = '''
"""Plugins that break the contract, each in one way; and `collapsed`, which keeps it but ignores its noise."""
import torch
from torch import nn


class G(nn.Module):
    def __init__(self, data_shape, z_dim, how):
        super().__init__()
        self.data_shape, self.how = tuple(data_shape), how
        self.fc = nn.Linear(z_dim, int(torch.tensor(data_shape).prod()))

    def forward(self, z, labels=None):
        if self.how == "raises":
            raise RuntimeError("boom inside forward")
        if self.how == "collapsed":  # every noise gives the same image: mode collapse by construction
            z = torch.zeros_like(z)
        x = torch.tanh(self.fc(z)).view(z.shape[0], *self.data_shape)
        if self.how == "range":
            return x * 3.0
        if self.how == "shape":
            return x[:, :, :-1]
        return x


class D(nn.Module):
    def __init__(self, data_shape, column):
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(data_shape).prod()), 1)
        self.column = column

    def forward(self, x, labels=None):
        out = self.fc(x.flatten(1))
        return out if self.column else out.view(-1)


def _pair(how, column=True):
    def build(*, data_shape, num_classes, z_dim, scale: float = 1.0):
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        return G(data_shape, z_dim, how), D(data_shape, column)
    return build


good_flat = _pair("good", column=False)
bad_range = _pair("range")
bad_shape = _pair("shape")
raises = _pair("raises")
collapsed = _pair("collapsed", column=False)


class RGBFeatures(nn.Module):
    input_size = 16
    input_channels = 3

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.weight = nn.Parameter(torch.randn(5, 3 * 16 * 16, generator=generator), requires_grad=False)

    def forward(self, x):
        return x.flatten(1) @ self.weight.t()


def rgb_features(*, device):
    return RGBFeatures().to(device)
'''

BROKEN_ENTRY_POINTS = """[gansvc.models]
bad-import = gansvc_broken_plugins.missing:build
bad-range = gansvc_broken_plugins:bad_range
bad-shape = gansvc_broken_plugins:bad_shape
raises = gansvc_broken_plugins:raises
good-flat = gansvc_broken_plugins:good_flat
collapsed = gansvc_broken_plugins:collapsed

[gansvc.extractors]
rgb-features = gansvc_broken_plugins:rgb_features
"""


@contextlib.contextmanager
def plugins_visible(folder: Path):
    """Install the example plugins (unless installed) and the broken ones under `folder`; register them;
    on leaving, restore sys.path, PYTHONPATH and the registry."""
    saved_path, saved_env = list(sys.path), os.environ.get("PYTHONPATH")
    try:
        make_plugins_visible(folder)
        yield
    finally:
        from gansvc.runtime import registry

        sys.path[:] = saved_path
        if saved_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_env
        importlib.invalidate_caches()
        registry.refresh_plugins()


def make_plugins_visible(folder: Path) -> None:
    """Install the example plugins (unless installed) and the broken ones under `folder`; register them."""
    from gansvc.runtime import plugins, registry

    paths = []
    if "stylish" not in plugins.plugin_names("models"):
        target = folder / "example"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet",
             "--no-build-isolation", "--no-deps", "--target", str(target), str(REPO / "examples" / "plugins")],
            check=True, cwd=folder,
        )  # fmt: skip
        paths.append(target)
    paths.append(write_package(folder / "broken", "gansvc-broken-plugins", "0.1", BROKEN_MODULE, BROKEN_ENTRY_POINTS))
    for path in paths:
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    os.environ["PYTHONPATH"] = os.pathsep.join([*map(str, paths), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    importlib.invalidate_caches()
    registry.refresh_plugins()
    assert "stylish" in registry.model_names() and "bad-range" in registry.model_names()


def write_package(folder: Path, name: str, version: str, source: str, entry_points: str) -> Path:
    """Write an installed package by hand under `folder`: its module (the name with underscores) and a .dist-info
    for `version` (what pip would write; an older version's .dist-info is removed); return `folder`."""
    module = name.replace("-", "_")
    (folder / module).mkdir(parents=True, exist_ok=True)
    (folder / module / "__init__.py").write_text(source)
    for old in folder.glob(f"{module}-*.dist-info"):
        shutil.rmtree(old)
    info = folder / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points)
    importlib.invalidate_caches()
    return folder


# A third party's package (issue 18, item 11): a model that refuses odd widths, and a data set whose channels
# the file `channels` beside the module sets (so a test changes what the factory shows; "crash" kills the
# process that calls it); every call of the data set's factory adds a line to `calls`.
PICKY = "gansvc-picky-plugins"
PICKY_MODULE = '''
"""A model that refuses odd widths, and random dots."""
import os
import signal
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).parent


def model(*, data_shape, num_classes, z_dim, width: int = 8):
    if width % 2:
        raise ValueError(f"width must be even, got {width}")
    size = int(torch.Size(data_shape).numel())
    generator = nn.Sequential(nn.Linear(z_dim, width), nn.Tanh(), nn.Linear(width, size), nn.Tanh(),
                              nn.Unflatten(1, tuple(data_shape)))
    return generator, nn.Sequential(nn.Flatten(), nn.Linear(size, 1))


class Dots:
    def __init__(self, channels, size, count):
        noise = torch.rand(count, channels, size, size, generator=torch.Generator().manual_seed(0))
        self.images = (noise > 0.9).to(torch.uint8) * 255
        self.labels = torch.arange(count) % 2
        self.class_names = ["even", "odd"]


def dots(*, split, root=None, image_size=0, count: int = 32):
    with open(HERE / "calls", "a") as log:
        log.write(split + "\\n")
    channels = (HERE / "channels").read_text()
    if channels == "crash":  # a factory that takes its process down (a segfault, the out-of-memory killer)
        os.kill(os.getpid(), signal.SIGKILL)
    return Dots(int(channels), image_size or 16, count)
'''
PICKY_ENTRY_POINTS = """[gansvc.models]
picky = gansvc_picky_plugins:model

[gansvc.datasets]
dots = gansvc_picky_plugins:dots
"""


@contextlib.contextmanager
def picky_plugins_visible(folder: Path, version: str = "0.1", channels: int = 1):
    """Install the picky package (`version`, its dots of `channels` channels) under `folder` and register it;
    on leaving, restore sys.path, PYTHONPATH and the registry. Yields the package's module folder."""
    from gansvc.runtime import registry

    saved_path, saved_env = list(sys.path), os.environ.get("PYTHONPATH")
    write_package(folder, PICKY, version, PICKY_MODULE, PICKY_ENTRY_POINTS)
    module = folder / PICKY.replace("-", "_")
    (module / "channels").write_text(str(channels))
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), saved_env) if p)  # for child processes
    importlib.invalidate_caches()
    registry.refresh_plugins()
    try:
        yield module
    finally:
        sys.path[:] = saved_path
        if saved_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_env
        sys.modules.pop(PICKY.replace("-", "_"), None)
        importlib.invalidate_caches()
        registry.refresh_plugins()
