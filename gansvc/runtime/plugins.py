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
        why = f"cannot be imported from {found.value}: {type(error).__name__}: {error}"
        raise PluginError(kind, name, why) from error
    if not callable(factory):
        raise PluginError(kind, name, f"{found.value} is not callable")
    return factory


def distribution_of(kind: str, name: str) -> str:
    """Return 'package version' of the distribution that provides a plugin ('' when unknown)."""
    found = entry_points(kind).get(name)
    dist = getattr(found, "dist", None)
    return f"{dist.metadata['Name']} {dist.version}" if dist is not None else ""


class PluginArgumentError(ValueError):
    """A plugin factory refused its arguments; `field` is the spec field to name (e.g. 'model_args.width')."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def check_arguments(kind: str, name: str, factory: Callable, fixed: dict, extra: dict, field: str) -> None:
    """Raise PluginArgumentError naming `field.<key>` when `factory` cannot take `extra` as keywords.

    `fixed` are the contract's own keywords (data_shape, ...): they are bound too, so a factory that
    lacks one is told apart (a PluginError: the plugin breaks the contract). Uses
    inspect.signature().bind, never the text of a TypeError.
    """
    import inspect

    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable without a signature: the call itself will tell
        return
    params = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in extra:
        if key in fixed:
            raise PluginArgumentError(f"{field}.{key}", f"{key!r} is set by gansvc, not in {field}")
        if not takes_any and (key not in params or params[key].kind is inspect.Parameter.POSITIONAL_ONLY):
            keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            known = [p for p, v in params.items() if p not in fixed and v.kind in keyword]
            takes = ", ".join(known) or "none"
            why = f"{GROUPS[kind]}:{name} takes no argument {key!r} (it takes: {takes})"
            raise PluginArgumentError(f"{field}.{key}", why)
    try:
        signature.bind(**fixed, **extra)
    except TypeError as error:
        raise PluginError(kind, name, f"its factory does not follow the contract's signature: {error}") from None


def argument_field(message: str, args: dict, field: str, fallback: str) -> str:
    """Return the spec field a factory's ValueError is about: `field.<key>` for the first key of `args`
    its message names (as a whole word), else `field` when args were given, else `fallback`."""
    import re

    for key in args:
        if re.search(rf"(?<![\w]){re.escape(str(key))}(?![\w])", message):
            return f"{field}.{key}"
    return field if args else fallback


def call_factory(kind: str, name: str, factory: Callable, fixed: dict, extra: dict, field: str, fallback: str):
    """Call a plugin factory with the contract's keywords plus the spec's `extra` ones.

    A ValueError or TypeError from the factory becomes a PluginArgumentError naming the argument
    (`field.<key>`) it is about; any other exception is a PluginError naming the plugin.
    """
    check_arguments(kind, name, factory, fixed, extra, field)
    try:
        return factory(**fixed, **extra)
    except (ValueError, TypeError) as error:
        text = f"{GROUPS[kind]}:{name} refused: {error}"
        raise PluginArgumentError(argument_field(str(error), extra, field, fallback), text) from None
    except Exception as error:  # noqa: BLE001 - a third party's code: any failure is the plugin's
        raise PluginError(kind, name, f"its factory raised {type(error).__name__}: {error}") from error
