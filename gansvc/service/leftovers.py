"""Crash leftovers: the temp files of atomic writes a killed process never renamed into place.

gansvc.atomic writes `NAME` through `.NAME.XXXXXXXX.tmp` (tempfile.mkstemp beside the target) and
renames it; kill -9 between the two leaves the temp file (a checkpoint's is megabytes). Only a
directory no process writes may be swept: the server does it at start-up, before any worker runs.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)
# ".NAME." + mkstemp's 8 random characters + ".tmp", as gansvc.atomic.atomic_write names them
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_temp_leftovers(directory: str | os.PathLike) -> list[Path]:
    """Delete the atomic-write temp files under `directory` (recursively); return the paths removed."""
    removed = []
    for root, _, files in os.walk(directory):
        for name in files:
            if _TEMP_NAME.match(name):
                path = Path(root) / name
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as error:
                    log.warning("cannot remove the leftover %s: %s", path, error)
                    continue
                removed.append(path)
    return removed
