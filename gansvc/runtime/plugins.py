"""Installed plugins: Python entry points in three groups, loaded only from packages installed where
gansvc runs. A client names a plugin; it never sends code or a module path.

    gansvc.models      name = "pkg.module:factory"   factory(*, data_shape, num_classes, z_dim, **model_args)
    gansvc.datasets    name = "pkg.module:factory"   factory(*, split, root, image_size, **dataset_args)
    gansvc.extractors  name = "pkg.module:factory"   factory(*, device)

(docs/plugins.md is the contract.) Discovery reads the installed distributions' metadata only;
a plugin's module is imported when a job first uses it, and an import that fails is a PluginError
naming the plugin, never a crash of the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

GROUPS = {"models": "gansvc.models", "datasets": "gansvc.datasets", "extractors": "gansvc.extractors"}


class PluginError(Exception):
    """A plugin could not be loaded or misbehaved; the message names it (group and name)."""

    def __init__(self, kind: str, name: str, message: str):
        self.kind, self.name = kind, name
        super().__init__(f"plugin {GROUPS.get(kind, kind)}:{name}: {message}")


def entry_points(kind: str) -> dict[str, metadata.EntryPoint]:
    """Return the installed entry points of a group ('models' | 'datasets' | 'extractors') by name."""
    if kind not in GROUPS:
        raise ValueError(f"unknown plugin kind {kind!r}: expected one of {', '.join(GROUPS)}")
    return {ep.name: ep for ep in metadata.entry_points(group=GROUPS[kind])}


def plugin_names(kind: str) -> tuple[str, ...]:
    """Return the names of the installed plugins of a kind, sorted."""
    return tuple(sorted(entry_points(kind)))


def load_factory(kind: str, name: str) -> Callable:
    """Import and return plugin `name`'s factory; a PluginError names the plugin when that fails."""
    found = entry_points(kind).get(name)
    if found is None:
        raise PluginError(kind, name, f"not installed (installed: {', '.join(plugin_names(kind)) or 'none'})")
    try:
        factory = found.load()
    except Exception as error:  # noqa: BLE001 - a third party's import: any failure is the plugin's
        raise PluginError(kind, name, f"cannot be imported from {found.value}: {type(error).__name__}: {error}") from error
    if not callable(factory):
        raise PluginError(kind, name, f"{found.value} is not callable")
    return factory


def distribution_of(kind: str, name: str) -> str:
    """Return 'package version' of the distribution that provides a plugin ('' when unknown)."""
    found = entry_points(kind).get(name)
    dist = getattr(found, "dist", None)
    return f"{dist.metadata['Name']} {dist.version}" if dist is not None else ""
