"""A hyperparameter sweep's spec: the TOML file of `gansvc sweep --spec`, its SweepSpec message, its checks.

    [base]                       # a training spec (TrainSpec's fields), shared by every trial; what it leaves
                                 # out takes each trial's defaults (a searched model brings its own optimiser)
    dataset = "fashion-mnist"
    model = "mlp"
    steps = 600
    eval_every = 200
    eval_samples = 500

    [search]
    method = "tpe"               # grid | random | tpe
    trials = 8                   # grid: default (and at most) the number of grid points
    max_concurrent = 2           # trials running at once (default: as many as the devices or cluster hold;
                                 # `parallel` is its older name)
    seed = 0                     # the sampler's seed

    [search.space]               # any TrainSpec field: a list of choices or a range
    lr_g = [2e-4, 1e-3]
    lr_d = {low = 1e-5, high = 1e-3, log = true}
    mlp_hidden = {low = 64, high = 512, step = 64}

    [objective]
    metric = "fid"               # a metric the trials report (default fid)
    direction = "minimize"       # or maximize

    [pruner]                     # optional: stop poor trials on their intermediate values
    method = "median"            # median | asha
    startup_trials = 1           # median: finished trials before pruning starts
    warmup_steps = 0             # median: steps before a trial can be pruned
    # min_resource = 200         # asha: steps of the first rung (default: base eval_every)
    # reduction_factor = 3       # asha

The same checks run in the CLI (before anything is sent) and in the server (SubmitSweep); every failure is
a SweepSpecError naming the field (`search.space.lr_g`, `objective.direction`, ...). This module needs no
torch and no server code: the client imports it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

METHODS = ("grid", "random", "tpe")
DIRECTIONS = {"minimize": "minimize", "minimise": "minimize", "maximize": "maximize", "maximise": "maximize"}
PRUNERS = ("median", "asha")
DEFAULT_TRIALS = 10  # random / tpe without `trials`
MAX_TRIALS = 1000
MAX_PARALLEL = 64
_SECTIONS = {"base", "search", "objective", "pruner"}
_SEARCH_KEYS = {"method", "trials", "max_concurrent", "parallel", "seed", "space"}
_RANGE_KEYS = {"low", "high", "log", "step"}
_PRUNER_KEYS = {"method", "startup_trials", "warmup_steps", "min_resource", "reduction_factor"}
_METRIC = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")


class SweepSpecError(ValueError):
    """A bad sweep setting; `field` names it (e.g. 'search.space.lr_g'), str() says what was expected."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


# ---------------------------------------------------------------------- the file
def load_sweep_file(path: str | Path) -> dict:
    """Return the raw sweep of a TOML file ({"base", "search", "objective", "pruner"}); SweepSpecError when it
    cannot be read or has tables or keys that do not belong."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SweepSpecError("spec", f"cannot read {str(path)!r}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SweepSpecError("spec", f"{str(path)!r} is not valid TOML: {error}") from None
    return check_layout(data)


def check_layout(data: dict) -> dict:
    """Check a raw sweep's tables and keys (not yet its values); return it."""
    unknown = set(data) - _SECTIONS
    if unknown:
        raise SweepSpecError(sorted(unknown)[0], f"unknown table (expected {', '.join(sorted(_SECTIONS))})")
    for name in _SECTIONS:
        if not isinstance(data.get(name, {}), dict):
            raise SweepSpecError(name, f"must be a table, got {data[name]!r}")
    search, pruner = data.get("search", {}), data.get("pruner", {})
    for table, keys, name in ((search, _SEARCH_KEYS, "search"), (pruner, _PRUNER_KEYS, "pruner"),
                              (data.get("objective", {}), {"metric", "direction"}, "objective")):  # fmt: skip
        extra = set(table) - keys
        if extra:
            raise SweepSpecError(f"{name}.{sorted(extra)[0]}", f"unknown key (expected {', '.join(sorted(keys))})")
    space = search.get("space")
    if not isinstance(space, dict) or not space:
        raise SweepSpecError("search.space", "give at least one setting to search, e.g. lr_g = [2e-4, 1e-3]")
    return data


# ---------------------------------------------------------------------- checks
def _field(name: str) -> str:
    return f"search.space.{name}"


def _spec_error(field: str, error) -> SweepSpecError:
    return SweepSpecError(field, getattr(error, "message", str(error)))


def _check_value(base: dict, name: str, value, field: str):
    """Return `value` as TrainSpec field `name`'s type, checked with the base settings given around it."""
    from gansvc.train.spec import SpecError, TrainSpec, _coerce

    try:
        value = _coerce(name, TrainSpec.__dataclass_fields__[name].type, value)
        TrainSpec.from_dict({**base, name: value})
    except SpecError as error:
        raise _spec_error(field, error) from None
    return value


def _check_parameter(base: dict, name: str, raw, method: str) -> dict:
    """Return one searched setting as {"choices": [...]} or {"low", "high", "log", "step"}."""
    from gansvc.train.spec import TrainSpec

    field = _field(name)
    known = TrainSpec.__dataclass_fields__
    if name not in known:
        raise SweepSpecError(field, f"unknown setting {name!r} (known: {', '.join(known)})")
    kind = known[name].type if isinstance(known[name].type, str) else known[name].type.__name__
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise SweepSpecError(field, "an empty list of choices")
        choices = [_check_value(base, name, value, field) for value in raw]
        if len(set(map(repr, choices))) != len(choices):
            raise SweepSpecError(field, f"repeats a choice: {list(raw)!r}")
        return {"choices": choices}
    if not isinstance(raw, dict):
        raise SweepSpecError(field, f"expected a list of choices or a range {{low, high, log}}, got {raw!r}")
    if method == "grid":
        raise SweepSpecError(field, "a grid search needs a list of values, not a range")
    if kind not in ("int", "float"):
        raise SweepSpecError(field, f"{name} is a {kind} setting: give a list of choices, not a range")
    extra = set(raw) - _RANGE_KEYS
    if extra:
        raise SweepSpecError(field, f"unknown range key {sorted(extra)[0]!r} (expected low, high, log, step)")
    for key in ("low", "high"):
        if key not in raw:
            raise SweepSpecError(field, f"a range needs {key}")
    low, high = (_check_value(base, name, raw[key], f"{field}.{key}") for key in ("low", "high"))
    log, step = raw.get("log", False), raw.get("step")
    if not isinstance(log, bool):
        raise SweepSpecError(f"{field}.log", f"expected true or false, got {log!r}")
    if not low < high:
        raise SweepSpecError(field, f"expected low < high, got low={low}, high={high}")
    if log and low <= 0:
        raise SweepSpecError(f"{field}.low", f"a log range needs low > 0, got {low}")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0:
            raise SweepSpecError(f"{field}.step", f"expected a number > 0, got {step!r}")
        if log:
            raise SweepSpecError(f"{field}.step", "log and step exclude each other")
        if kind == "int" and not float(step).is_integer():
            raise SweepSpecError(f"{field}.step", f"{name} is an integer setting: expected an integer step, got {step}")
        step = int(step) if kind == "int" else float(step)
    return {"low": low, "high": high, "log": log, "step": step}


def _integer(table: dict, key: str, field: str, default: int, low: int, high: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SweepSpecError(field, f"expected an integer in [{low}, {high}], got {value!r}")
    return value


def check_sweep(raw: dict, base: dict) -> dict:
    """Return the checked, complete sweep spec of a raw one; `base` is the trials' validated TrainSpec dict.

    The result: {"base", "base_given", "method", "trials", "max_concurrent" (0: as many as fit), "seed",
    "space": {name: {...}},
    "objective": {"metric", "direction"}, "pruner": {"method", ...} or {}}; "base_given" names the settings
    raw's [base] gives (without a [base]: all of `base`), the others being defaults that a trial of another model
    takes from that model (trial_settings). Raises SweepSpecError naming the field.
    """
    check_layout({k: v for k, v in raw.items() if k != "base"})
    given = sorted(name for name in (raw["base"] if isinstance(raw.get("base"), dict) else base) if name in base)
    search = raw.get("search", {})
    method = search.get("method", "tpe")
    if method not in METHODS:
        raise SweepSpecError("search.method", f"got {method!r}, expected one of {', '.join(METHODS)}")
    trial_base = trial_settings({"base": base, "base_given": given}, {})  # each value is checked as trials run it
    space = {str(name): _check_parameter(trial_base, str(name), value, method)
             for name, value in search["space"].items()}  # fmt: skip
    if method == "grid":
        points = math.prod(len(p["choices"]) for p in space.values())
        trials = _integer(search, "trials", "search.trials", points, 1, points)
    else:
        trials = _integer(search, "trials", "search.trials", DEFAULT_TRIALS, 1, MAX_TRIALS)
    max_concurrent = min(trials, _max_concurrent(search))
    seed = _integer(search, "seed", "search.seed", 0, 0, 2**63 - 1)
    objective = raw.get("objective", {})
    metric = objective.get("metric", "fid")
    if not isinstance(metric, str) or not _METRIC.match(metric):
        raise SweepSpecError("objective.metric", f"expected a metric name such as 'fid', got {metric!r}")
    direction = objective.get("direction", "minimize")
    if direction not in DIRECTIONS:
        raise SweepSpecError("objective.direction", f"got {direction!r}, expected minimize or maximize")
    evaluates = base.get("eval_samples", 0) > 0 or "eval_samples" in space
    if metric in ("fid", "is_mean", "kid_mean") and not evaluates:
        raise SweepSpecError("objective.metric", f"the trials report no {metric}: set base.eval_samples > 0")
    return {
        "base": base, "base_given": given, "method": method, "trials": trials, "max_concurrent": max_concurrent,
        "seed": seed, "space": space,
        "objective": {"metric": metric, "direction": DIRECTIONS[direction]},
        "pruner": _check_pruner(raw.get("pruner", {}), base, space),
    }  # fmt: skip


def _max_concurrent(search: dict) -> int:
    """Return the [search] table's limit of trials at once (0 when it sets none: as many as fit). `parallel` is its
    older name, still taken; both may be given only with the same value."""
    given = {key: _integer(search, key, f"search.{key}", 1, 1, MAX_PARALLEL)
             for key in ("max_concurrent", "parallel") if key in search}  # fmt: skip
    if len(set(given.values())) > 1:
        raise SweepSpecError("search.max_concurrent", f"got {given['max_concurrent']} and search.parallel (its older "
                                                      f"name) {given['parallel']}: give one of them")  # fmt: skip
    return next(iter(given.values()), 0)


def concurrency(spec: dict, fits: int) -> int:
    """Return how many trials of a checked sweep run at once: its max_concurrent, or `fits` (as many as the devices
    or the cluster hold, at least 1) when it sets none. A sweep stored before max_concurrent kept `parallel`."""
    limit = spec.get("max_concurrent", spec.get("parallel", 0))
    return int(limit) if limit else max(1, int(fits))


def _check_pruner(table: dict, base: dict, space: dict) -> dict:
    method = table.get("method", "")
    if method in ("", "none"):
        if set(table) - {"method"}:
            raise SweepSpecError("pruner.method", f"set it ({' or '.join(PRUNERS)}) to use the pruner's settings")
        return {}
    if method not in PRUNERS:
        raise SweepSpecError("pruner.method", f"got {method!r}, expected {' or '.join(PRUNERS)}")
    if base.get("eval_every", 0) <= 0 and "eval_every" not in space:
        raise SweepSpecError("pruner.method", "pruning needs intermediate values: set base.eval_every > 0")
    if method == "median":
        return {
            "method": method, "startup_trials": _integer(table, "startup_trials", "pruner.startup_trials", 1, 0, 10**6),
            "warmup_steps": _integer(table, "warmup_steps", "pruner.warmup_steps", 0, 0, 10**12),
        }  # fmt: skip
    return {
        "method": method,
        "min_resource": _integer(table, "min_resource", "pruner.min_resource", max(1, base.get("eval_every", 1)), 1,
                                 10**12),
        "reduction_factor": _integer(table, "reduction_factor", "pruner.reduction_factor", 3, 2, 100),
    }  # fmt: skip


def trial_settings(spec: dict, params: dict) -> dict:
    """Return the TrainSpec settings of a checked spec's trial with `params`: the base settings given and the
    trial's. The base's defaults are left out so that TrainSpec applies the trial's own: a trial whose model is
    searched gets that model's optimiser settings and loss, not the base model's."""
    base = spec["base"]
    given = spec.get("base_given", base)  # a sweep stored before base_given: every base setting
    return {**{name: base[name] for name in given}, **params}


def grid_size(spec: dict) -> int:
    """Return the number of points of a checked spec's grid (its choices' product)."""
    return math.prod(len(p.get("choices", ())) for p in spec["space"].values())


# ---------------------------------------------------------------------- the message
def _value(value):
    from google.protobuf import struct_pb2

    message = struct_pb2.Value()
    if isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, (int, float)):
        message.number_value = value
    elif isinstance(value, str):
        message.string_value = value
    else:
        raise SweepSpecError("search.space", f"choices must be numbers, strings or booleans, got {value!r}")
    return message


def _plain(value):
    kind = value.WhichOneof("kind")
    return {"bool_value": value.bool_value, "number_value": value.number_value,
            "string_value": value.string_value}.get(kind)  # fmt: skip


def sweep_spec_to_proto(raw: dict, request_id: str = ""):
    """Return the SweepSpec of a raw or checked sweep (ValueError naming a bad base setting). A checked sweep's
    base holds the settings given only: the message means what was submitted, defaults and all."""
    from gansvc.api.convert import pb, training_spec_from_dict

    search = raw.get("search", raw)  # a raw file's [search] table, or a checked spec (flat)
    base = raw.get("base", {})
    if "base_given" in raw:
        base = {name: base[name] for name in raw["base_given"]}
    message = pb.SweepSpec(base=training_spec_from_dict(base), method=search.get("method", ""),
                           request_id=request_id or "")  # fmt: skip
    for key in ("trials", "max_concurrent", "parallel", "seed"):
        if search.get(key) or (key in search and key not in ("max_concurrent", "parallel")):  # 0: as many as fit
            setattr(message, key, search[key])
    for name, parameter in search.get("space", {}).items():
        entry = message.space.add(name=name)
        if isinstance(parameter, (list, tuple)) or "choices" in parameter:
            choices = parameter if isinstance(parameter, (list, tuple)) else parameter["choices"]
            entry.choices.extend(_value(v) for v in choices)
            continue
        if not isinstance(parameter, dict):
            raise SweepSpecError(_field(name), f"expected a list of choices or a range {{low, high, log}}, got "
                                               f"{parameter!r}")  # fmt: skip
        for key in ("low", "high", "step"):
            if parameter.get(key) is not None:
                try:
                    setattr(entry, key, parameter[key])
                except (TypeError, ValueError):
                    problem = f"expected a number, got {parameter[key]!r}"
                    raise SweepSpecError(f"{_field(name)}.{key}", problem) from None
        entry.log = bool(parameter.get("log", False))
    objective = raw.get("objective", {})
    message.metric, message.direction = objective.get("metric", ""), objective.get("direction", "")
    pruner = raw.get("pruner", {})
    message.pruner.method = pruner.get("method", "")
    for key in ("startup_trials", "warmup_steps", "min_resource", "reduction_factor"):
        if key in pruner:
            setattr(message.pruner, key, pruner[key])
    return message


def sweep_spec_to_raw(message) -> tuple[object, dict]:
    """Return (the base TrainingSpec message, the raw sweep of a SweepSpec) for check_sweep; the raw sweep's
    base holds the settings the message gives."""
    from gansvc.api.convert import training_spec_to_dict

    search: dict = {"method": message.method or "tpe", "space": {}}
    for key in ("trials", "max_concurrent", "parallel", "seed"):
        if message.HasField(key):
            search[key] = getattr(message, key)
    for entry in message.space:
        if entry.choices:
            parameter = [_plain(v) for v in entry.choices]
        else:
            parameter = {key: getattr(entry, key) for key in ("low", "high", "step") if entry.HasField(key)}
            parameter["log"] = entry.log
        if entry.name in search["space"]:
            raise SweepSpecError(_field(entry.name), "given twice")
        search["space"][entry.name] = parameter
    raw = {"base": training_spec_to_dict(message.base), "search": search, "objective": {}}
    if message.metric:
        raw["objective"]["metric"] = message.metric
    if message.direction:
        raw["objective"]["direction"] = message.direction
    pruner = {"method": message.pruner.method} if message.pruner.method else {}
    for key in ("startup_trials", "warmup_steps", "min_resource", "reduction_factor"):
        if message.pruner.HasField(key):
            pruner[key] = getattr(message.pruner, key)
    if pruner:
        raw["pruner"] = pruner
    return message.base, raw
