"""The choices the proto's comments document (protos/gansvc/v1/gansvc.proto) are the registry's: models, data
set kinds, losses, precisions, extractors and the metrics of an evaluation job. The registry's metrics in turn
are what gansvc.metrics.evaluate reports, each with the option that adds it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from gansvc.api.convert import pb
from gansvc.runtime import registry

PROTO = Path(__file__).resolve().parents[1] / "protos" / "gansvc" / "v1" / "gansvc.proto"
# a documented set of choices: `a | b | c` (names such as folder:PATH, inception-v3, is_mean)
CHOICES = re.compile(r"[\w:.-]+(?: \| [\w:.-]+)+")
# the evaluation metrics: `a | b always` or `a | b with OPTION`
METRIC_GROUP = re.compile(r"((?:\w+ \| )+\w+) (always|with (\w+))")


def block(kind: str, name: str) -> str:
    """Return the text of `message NAME { ... }` (or `service NAME`), nested blocks included."""
    text = PROTO.read_text(encoding="utf-8")
    start = re.search(rf"^{kind} {name} {{", text, re.MULTILINE)
    assert start, f"no {kind} {name} in {PROTO}"
    depth = 0
    for index in range(start.end() - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start.start() : index + 1]
    raise AssertionError(f"{kind} {name} does not end")


def documentation(kind: str, name: str, member: str) -> str:
    """Return the comment of a field (`member = N;`) or rpc (`rpc member(`): the // lines right above it and
    the one after it on its line, one per line."""
    lines = block(kind, name).splitlines()
    for index, line in enumerate(lines):
        if re.search(rf"\b{member}\s*(=|\()", line.split("//")[0]):
            above = []
            for previous in reversed(lines[:index]):
                if not previous.strip().startswith("//"):
                    break
                above.insert(0, previous.strip().removeprefix("//").strip())
            trailing = line.split("//", 1)[1].strip() if "//" in line else ""
            return "\n".join([*above, trailing])
    raise AssertionError(f"{member} is not in {kind} {name}")


def documented_choices(kind: str, name: str, member: str) -> list[str]:
    """Return the first `a | b | c` of a field's or rpc's comment as a list."""
    found = CHOICES.search(documentation(kind, name, member))
    assert found, f"{name}.{member} documents no choices: {documentation(kind, name, member)!r}"
    return found.group(0).split(" | ")


def built_in(names, info) -> list[str]:
    """Return the names that are no installed plugin's (the proto documents plugins in words)."""
    return [n for n in names if not info(n).plugin]


def test_models_data_sets_losses_and_precisions_are_the_registrys():
    assert documented_choices("message", "TrainingSpec", "model") == built_in(registry.model_names(),
                                                                              registry.model_info)  # fmt: skip
    kinds = [*built_in(registry.dataset_names(), registry.dataset_info), f"{registry.FOLDER_PREFIX}PATH",
             f"{registry.ZIP_PREFIX}PATH"]  # fmt: skip
    assert documented_choices("message", "TrainingSpec", "dataset") == kinds
    assert documented_choices("message", "TrainingSpec", "loss") == list(registry.loss_names())
    assert documented_choices("message", "TrainingSpec", "precision") == list(registry.precision_names())
    for member in ("model", "dataset"):  # plugins are named too
        assert "plugin" in documentation("message", "TrainingSpec", member)


def test_extractors_are_the_registrys():
    extractors = built_in(registry.extractor_names(), registry.extractor_info)
    for message, member in (("TrainingSpec", "eval_extractor"), ("EvaluationSpec", "extractor")):
        assert documented_choices("message", message, member) == extractors, member
        text = documentation("message", message, member)
        assert "plugin" in text and f'"" = {registry.DEFAULT_EXTRACTOR}' in text, text


def test_the_evaluation_metrics_are_the_registrys():
    text = " ".join(documentation("service", "GanService", "SubmitEvaluation").splitlines())
    documented = {}
    for names, _, option in METRIC_GROUP.findall(text):
        for metric in names.split(" | "):
            assert metric not in documented, f"{metric} documented twice"
            documented[metric] = option
    assert documented == registry.EVALUATION_METRICS
    options = set(registry.EVALUATION_METRICS.values()) - {"", "labels"}
    assert options <= set(pb.EvaluationSpec.DESCRIPTOR.fields_by_name), options
    # labels come from a conditional checkpoint or from these fields
    assert {"class_labels", "sample_labels"} <= set(pb.EvaluationSpec.DESCRIPTOR.fields_by_name)


def test_an_evaluation_reports_the_registrys_metrics_by_option(tmp_path, monkeypatch):
    import torch

    from gansvc.metrics import evaluate

    monkeypatch.setenv("GANSVC_CACHE_DIR", str(tmp_path / "cache"))
    generator = torch.Generator().manual_seed(0)
    real = tmp_path / "real.npy"
    np.save(real, (torch.rand(48, 1, 28, 28, generator=generator) * 255).to(torch.uint8).numpy())
    fake = torch.rand(48, 1, 28, 28, generator=generator) * 2 - 1

    def reported(**options) -> set[str]:
        result = evaluate(fake, real=str(real), kid_subset_size=16, kid_subsets=4, **options)
        return {k for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def metrics(*options) -> set[str]:
        return {m for m, option in registry.EVALUATION_METRICS.items() if option in options}

    plain, full = reported(), reported(precision_recall=True, bootstrap=4)
    assert metrics("") <= plain and not metrics("precision_recall", "bootstrap") & plain
    assert metrics("", "precision_recall", "bootstrap") <= full
