"""Loading of the compiled extension gansvc._C and the choice between it and the reference.

GANSVC_KERNELS=ext uses the fused kernels (an error if they were not built), GANSVC_KERNELS=ref the
pure-PyTorch reference; unset, the kernels are used when built and the reference otherwise.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings

import torch


class ExtensionNotBuilt(RuntimeError):
    """GANSVC_KERNELS=ext was asked for but gansvc._C could not be imported."""


@functools.cache
def _import_extension():
    try:
        module = importlib.import_module("gansvc._C")
    except ImportError as error:
        return None, error
    from gansvc.ops import _fake  # noqa: F401  (registers shapes for torch.compile)

    return module, None


def load_extension():
    """Return the gansvc._C module, or None when it was not built (or cannot load here)."""
    return _import_extension()[0]


def cuda_compiled() -> bool:
    """Return whether the extension was built with its CUDA kernels."""
    module = load_extension()
    return bool(module is not None and module.cuda_compiled)


# torch.compile evaluates the choice once while tracing instead of tracing the import machinery.
@torch.compiler.assume_constant_result
def use_extension() -> bool:
    """Return True when the fused kernels serve the ops, False for the pure-PyTorch reference."""
    choice = os.environ.get("GANSVC_KERNELS", "").strip().lower()
    if choice not in ("", "ext", "ref"):
        raise ValueError(f"GANSVC_KERNELS must be 'ext' or 'ref', got {choice!r}")
    if choice == "ref":
        return False
    module, error = _import_extension()
    if module is None:
        if choice == "ext":
            raise ExtensionNotBuilt(f"GANSVC_KERNELS=ext but gansvc._C did not load ({error}); run scripts/setup.sh")
        _warn_once(error)
        return False
    return True


@functools.cache
def _warn_once(error) -> None:
    warnings.warn(f"gansvc._C not available ({error}); using the pure-PyTorch reference kernels", stacklevel=3)
