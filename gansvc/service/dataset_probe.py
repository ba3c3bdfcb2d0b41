"""What a plugin data set holds (one sample's shape, its size, its classes), learnt by calling its factory once
(split train, no root, default arguments) in a child process, and kept per installed version of the package
that provides it.

Submit needs the shape to build a plugin model on the meta device, so that a model argument the factory
refuses is INVALID_ARGUMENT naming it with plugin data as with built-in data; GetServerInfo shows it
(`probe_datasets`). A factory may draw or read its whole split (seconds), so what it showed is kept in
`<cache dir>/plugin-datasets/<name>.json` ($GANSVC_CACHE_DIR, default ~/.cache/gansvc) with the entry point
and the distribution ('package version') it came from: a restarted server reads it back, and an installed
version other than the recorded one (an upgrade) is probed again. A probe that fails is kept in this process
only: the plugin may be fixed without a new version, and the next server asks again.

The factory runs in `python -m gansvc.service.dataset_probe NAME`, not in the server: a plugin that crashes,
hangs or fills the memory takes that process down, and the server lives (docs/plugins.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote

FOLDER = "plugin-datasets"  # under the cache folder
PROBE_TIMEOUT = 300.0  # seconds a factory may take to make its train split
_ANSWER = "gansvc-probe: "  # the child's answer line (the factory may print lines of its own)
_LOCK = threading.Lock()
_PROBED: dict[str, tuple[tuple[str, str], dict]] = {}  # name -> ((entry point, distribution), what it showed)


def cache_file(name: str, folder: Path | None = None) -> Path:
    """Return the file that keeps what plugin data set `name` showed (folder: default the cache folder's)."""
    if folder is None:
        from gansvc.metrics.reference import cache_dir

        folder = cache_dir() / FOLDER
    return Path(folder) / f"{quote(name, safe='')}.json"


def probe_dataset(name: str, folder: Path | None = None) -> dict:
    """Return what plugin data set `name`'s factory shows (split train, default arguments), probing it at most
    once per installed version: {"shape", "size", "num_classes" (-1 unknown), "class_names"}, or
    {"problem": text naming the plugin}. A map-style Dataset is not read beyond its first item.
    """
    from gansvc.runtime import plugins

    found = plugins.entry_points("datasets").get(name)
    key = (found.value if found is not None else "", plugins.distribution_of("datasets", name))
    with _LOCK:
        kept = _PROBED.get(name)
        if kept is not None and kept[0] == key:
            return kept[1]
        path = cache_file(name, folder)
        facts = _read(path, name, key)
        if facts is None:
            facts = _probe(name)
            if "problem" not in facts and key[1]:
                _write(path, name, key, facts)
        _PROBED[name] = (key, facts)
        return facts


def probe_problems() -> dict[str, str]:
    """Return {plugin data set: why its probe failed} for the probes this process made."""
    with _LOCK:
        return {name: facts["problem"] for name, (_, facts) in _PROBED.items() if "problem" in facts}


def forget() -> None:
    """Forget this process's probes (what the cache files keep stays): a restarted server's view."""
    with _LOCK:
        _PROBED.clear()


def _read(path: Path, name: str, key: tuple[str, str]) -> dict | None:
    """Return the kept facts when `path` holds them for this entry point and distribution, else None."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    wanted = {"dataset": name, "entry_point": key[0], "distribution": key[1]}
    if not isinstance(record, dict) or any(record.get(field) != value for field, value in wanted.items()):
        return None
    facts = record.get("facts")
    return facts if isinstance(facts, dict) and "shape" in facts else None


def _write(path: Path, name: str, key: tuple[str, str], facts: dict) -> None:
    from gansvc.atomic import atomic_write_text

    record = {"dataset": name, "entry_point": key[0], "distribution": key[1], "facts": facts}
    try:
        atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    except OSError:  # a read-only cache: the answer is still kept in this process
        pass


def _probe(name: str, timeout: float = PROBE_TIMEOUT) -> dict:
    """Return what data set `name`'s factory shows, asked in a child process, or {"problem": ...} naming the plugin."""
    import gansvc
    from gansvc.runtime.plugins import PluginError
    from gansvc.runtime.process import signal_group

    env = dict(os.environ)  # the child imports this same gansvc and sees the plugins this server's workers see
    package_parent = str(Path(gansvc.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "gansvc.service.dataset_probe", "--parent-pid", str(os.getpid()), name]
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, start_new_session=True)  # fmt: skip
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(child.pid, signal.SIGKILL)  # with whatever it started (DataLoader workers, ...)
        child.communicate()
        return {"problem": str(PluginError("datasets", name, f"its factory took more than {timeout:.0f} s"))}
    answers = [line for line in out.decode(errors="replace").splitlines() if line.startswith(_ANSWER)]
    if child.returncode == 0 and answers:
        return json.loads(answers[-1][len(_ANSWER) :])
    how = f"exited with code {child.returncode}"
    if child.returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-child.returncode).name}"
        except ValueError:
            how = f"died of signal {-child.returncode}"
    said = [line.strip() for line in err.decode(errors="replace").splitlines() if line.strip()][-1:]
    why = f"the process calling its factory {how}" + (f": {said[0]}" if said else "")
    return {"problem": str(PluginError("datasets", name, why))}


def _probe_here(name: str) -> dict:
    """Call the factory once in this process; return what its result shows, or {"problem": ...} naming the plugin."""
    import torch

    from gansvc.runtime.plugins import PluginError, call_factory, load_factory

    try:
        factory = load_factory("datasets", name)
        found = call_factory("datasets", name, factory, {"split": "train", "root": None, "image_size": 0}, {},
                             "dataset_args", "dataset")  # fmt: skip
        class_names = getattr(found, "class_names", None)
        if hasattr(found, "images"):
            shape, size = list(found.images.shape[1:]), int(found.images.shape[0])
            labels = getattr(found, "labels", None)
            classes = len(class_names) if class_names else (int(labels.max()) + 1 if labels is not None else 0)
        else:
            size = len(found)
            image, label = found[0]
            shape = list(torch.as_tensor(image).shape)
            classes = len(class_names) if class_names else (-1 if label is not None else 0)
        names = [str(c) for c in class_names or ()]
        return {"shape": [int(s) for s in shape], "size": size, "num_classes": classes, "class_names": names}
    except (PluginError, ValueError) as error:
        return {"problem": str(error)}
    except Exception as error:  # noqa: BLE001 - a third party's code
        return {"problem": str(PluginError("datasets", name, f"{type(error).__name__}: {error}"))}


def main(argv: list[str] | None = None) -> int:
    """Probe one plugin data set and print the answer line (the child process of `_probe`); return 0."""
    from gansvc.runtime.process import die_with_parent

    parser = argparse.ArgumentParser(prog="python -m gansvc.service.dataset_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("name")
    args = parser.parse_args(argv)
    die_with_parent(args.parent_pid)
    answer = _probe_here(args.name)
    print(_ANSWER + json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
