"""Exported generators (issue 21 item 2): `gansvc export` writes TorchScript / ONNX files that a Python without
gansvc loads and runs to gansvc's own images for the same seeds (within 1e-5, any batch size), with the input
contract beside them; generators the formats cannot hold are refused naming the operator."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from gansvc.cli import main
from gansvc.train import Trainer, TrainSpec
from gansvc.train.export import ExportError, export_generator_file
from gansvc.train.sampling import LoadedGenerator, open_generator

TINY = {"width": 8, "batch_size": 16, "log_every": 1, "sample_every": 0, "checkpoint_every": 0, "eval_samples": 0,
        "tensorboard": False, "threads": 1, "steps": 2}  # fmt: skip
RUNS = {"dcgan": {}, "mlp": {"model": "mlp", "mlp_hidden": 32}, "conditional": {"conditional": True}}
SEEDS = list(range(10))

# Runs in `python -I` from an empty folder, after taking gansvc's editable-install finder and any path holding a
# gansvc package away, so the file is loaded as a user without gansvc would: only torch / onnxruntime / numpy.
CONSUMER = textwrap.dedent('''
    import importlib.util, json, os, sys
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "gansvc"))]
    assert importlib.util.find_spec("gansvc") is None, "gansvc is importable here"
    import numpy as np
    import torch

    job = json.load(open(sys.argv[1]))
    z = torch.stack([torch.randn(job["z_dim"], generator=torch.Generator().manual_seed(s)) for s in job["seeds"]])
    labels = None if job["labels"] is None else torch.tensor(job["labels"], dtype=torch.int64)
    if job["format"] == "torchscript":
        model = torch.jit.load(job["file"])
        run = lambda z, y: (model(z) if y is None else model(z, y)).detach().numpy()
    else:
        import onnxruntime
        session = onnxruntime.InferenceSession(job["file"], providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        assert names == (["z"] if labels is None else ["z", "labels"]), names
        assert session.get_inputs()[0].shape[0] == "batch" and session.get_outputs()[0].shape[0] == "batch"
        run = lambda z, y: session.run(None, {"z": z.numpy()} | ({} if y is None else {"labels": y.numpy()}))[0]
    results = {}
    for batch in job["batch_sizes"]:
        parts = [run(z[i:i + batch], None if labels is None else labels[i:i + batch]) for i in range(0, len(z), batch)]
        results[f"batch{batch}"] = np.concatenate(parts)
    np.savez(job["out"], **results)
''')


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs of each kind (generator.pt holds the EMA weights; checkpoints/latest.pt G's own too)."""
    root = tmp_path_factory.mktemp("export-runs")
    for name, extra in RUNS.items():
        Trainer(TrainSpec.from_dict({**TINY, **extra}), root / name).run()
    return {name: root / name for name in RUNS}


def own_samples(run, tmp_path, *extra) -> dict:
    """gansvc's own images (and labels) of SEEDS, from `gansvc sample --seeds`."""
    out = tmp_path / "own.npz"
    assert main(["sample", str(run), "--seeds", f"{SEEDS[0]}-{SEEDS[-1]}", "-o", str(out), *extra]) == 0
    with np.load(out) as data:
        return {key: data[key] for key in data.files}


def run_without_gansvc(tmp_path, fmt, file, z_dim, labels, batch_sizes=(1, 7, 10)) -> dict:
    """Run the exported file in a Python without gansvc on SEEDS' latents; return {f'batch{n}': images}."""
    folder = tmp_path / "clean"
    folder.mkdir(exist_ok=True)
    (folder / "consumer.py").write_text(CONSUMER)
    job = {"format": fmt, "file": str(file), "z_dim": z_dim, "seeds": SEEDS, "out": str(folder / "out.npz"),
           "labels": None if labels is None else [int(k) for k in labels], "batch_sizes": list(batch_sizes)}  # fmt: skip
    (folder / "job.json").write_text(json.dumps(job))
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(folder)}
    result = subprocess.run([sys.executable, "-I", "consumer.py", "job.json"], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(folder / "out.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("name", list(RUNS))
def test_an_export_runs_without_gansvc_and_gives_gansvcs_images(runs, tmp_path, capsys, name, fmt):
    out = tmp_path / f"generator.{'pt' if fmt == 'torchscript' else 'onnx'}"
    assert main(["export", str(runs[name]), "--format", fmt, "-o", str(out)]) == 0
    assert "verified: max abs error" in capsys.readouterr().out
    own = own_samples(runs[name], tmp_path)
    z_dim = open_generator(runs[name]).generator.z_dim
    results = run_without_gansvc(tmp_path, fmt, out, z_dim, own.get("labels"))
    assert set(results) == {"batch1", "batch7", "batch10"}
    for images in results.values():  # one image per seed in batches of 1, 7 (+ 3) and 10
        assert images.shape == own["images"].shape == (10, 1, 28, 28) and images.dtype == np.float32
        assert np.abs(images - own["images"]).max() <= 1e-5
        assert images.min() >= -1.0 and images.max() <= 1.0


def test_the_contract_beside_the_file_states_the_inputs_and_output(runs, tmp_path):
    out = tmp_path / "conditional.onnx"
    assert main(["export", str(runs["conditional"]), "--format", "onnx", "-o", str(out)]) == 0
    contract = json.loads((tmp_path / "conditional.onnx.json").read_text())
    assert contract["format"] == "onnx" and contract["file"] == "conditional.onnx"
    assert contract["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert contract["size_bytes"] == out.stat().st_size
    assert contract["inputs"] == [
        {"name": "z", "dtype": "float32", "shape": ["N", 100]},
        {"name": "labels", "dtype": "int64", "shape": ["N"], "range": [0, 9]},
    ]
    assert contract["output"] == {"name": "images", "dtype": "float32", "shape": ["N", 1, 28, 28], "range": [-1, 1]}
    assert contract["latent"]["size"] == 100 and "manual_seed(seed)" in contract["latent"]["seed_recipe"]
    assert contract["classes"]["count"] == 10 and contract["classes"]["names"][0] == "T-shirt/top"
    assert contract["source"]["step"] == 2 and contract["source"]["ema"] is True
    assert contract["source"]["model"] == "dcgan" and contract["dynamic_batch"] is True
    assert 0 <= contract["verification"]["max_abs_error"] <= contract["verification"]["tolerance"] == 1e-5
    import onnx  # the file's own declaration of the dynamic axis agrees with the contract

    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["z", "labels"] and [o.name for o in graph.output] == ["images"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    unconditional = tmp_path / "dcgan.pt"
    assert main(["export", str(runs["dcgan"]), "--format", "torchscript", "-o", str(unconditional)]) == 0
    plain = json.loads((tmp_path / "dcgan.pt.json").read_text())
    assert plain["classes"] is None and [i["name"] for i in plain["inputs"]] == ["z"] and plain["onnx_opset"] is None


def test_ema_choice_exports_those_weights(runs, tmp_path):
    own, raw = tmp_path / "ema.pt", tmp_path / "raw.pt"
    assert main(["export", str(runs["dcgan"]), "--format", "torchscript", "-o", str(own), "--ema"]) == 0
    assert main(["export", str(runs["dcgan"]), "--format", "torchscript", "-o", str(raw), "--no-ema"]) == 0
    assert json.loads((tmp_path / "raw.pt.json").read_text())["source"]["ema"] is False
    z = torch.randn(4, 100, generator=torch.Generator().manual_seed(0))
    expected = open_generator(runs["dcgan"], ema=False).generator
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(raw))(z), expected(z).clamp(-1, 1), atol=1e-5)
        assert not torch.allclose(torch.jit.load(str(own))(z), torch.jit.load(str(raw))(z), atol=1e-3)


def test_bad_export_options_exit_2(runs, tmp_path, capsys):
    assert main(["export", str(runs["dcgan"]), "--format", "onnx", "-o", str(tmp_path / "x"), "--best"]) == 2
    assert "--best:" in capsys.readouterr().err
    assert main(["export", str(runs["dcgan"]), "--format", "onnx", "-o", str(tmp_path)]) == 2
    assert "--output:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["export", str(runs["dcgan"]), "--format", "tflite", "-o", str(tmp_path / "x")])
    assert caught.value.code == 2


def test_without_onnxruntime_the_onnx_export_says_what_to_install(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert main(["export", str(runs["mlp"]), "--format", "onnx", "-o", str(tmp_path / "x.onnx")]) == 1
    assert "pip install onnxruntime" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
    assert main(["export", str(runs["mlp"]), "--format", "torchscript", "-o", str(tmp_path / "x.pt")]) == 0


# ---------------------------------------------------------------------- what cannot be exported
UNEXPORTABLE = '''
"""Generators that the export formats cannot hold, each in one way (issue 21 tests)."""
import torch
from torch import nn


class Clip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(-1, 1)

    @staticmethod
    def backward(ctx, grad):
        return grad


class G(nn.Module):
    def __init__(self, data_shape, z_dim, how):
        super().__init__()
        self.data_shape, self.how = tuple(data_shape), how
        self.fc = nn.Linear(z_dim, int(torch.tensor(data_shape).prod()))

    def forward(self, z, labels=None):
        h = self.fc(z)
        if self.how == "svd":
            h = h * torch.linalg.svd(h.view(z.shape[0], 28, -1))[1].sum(1, keepdim=True) * 1e-3
        if self.how == "pyfunc":
            return Clip.apply(h).view(z.shape[0], *self.data_shape)
        if self.how == "branch" and h.mean() > 0:
            h = -h
        if self.how == "loop":  # a Python loop over the batch: a trace keeps the example's length
            h = torch.stack([h[i] for i in range(z.shape[0])])
        return torch.tanh(h).view(z.shape[0], *self.data_shape)


class D(nn.Module):
    def __init__(self, data_shape):
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(data_shape).prod()), 1)

    def forward(self, x, labels=None):
        return self.fc(x.flatten(1))


def build(*, data_shape, num_classes, z_dim, how: str = "svd"):
    return G(data_shape, z_dim, how), D(data_shape)
'''


@pytest.fixture(scope="module")
def unexportable(tmp_path_factory):
    """An installed plugin model (`unexportable`, model_args how=svd|pyfunc|branch|loop): a package on sys.path
    with a .dist-info entry point, as pip would write it."""
    import importlib
    import os

    from gansvc.runtime import registry

    folder = tmp_path_factory.mktemp("unexportable-plugin")
    (folder / "gansvc_unexportable").mkdir()
    (folder / "gansvc_unexportable" / "__init__.py").write_text(UNEXPORTABLE)
    info = folder / "gansvc_unexportable-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gansvc-unexportable\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gansvc.models]\nunexportable = gansvc_unexportable:build\n")
    saved_path, saved_env = list(sys.path), os.environ.get("PYTHONPATH")
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    registry.refresh_plugins()
    assert "unexportable" in registry.model_names()
    yield folder
    sys.path[:] = saved_path
    if saved_env is not None:
        os.environ["PYTHONPATH"] = saved_env
    importlib.invalidate_caches()
    registry.refresh_plugins()


def _plugin_generator(how: str) -> LoadedGenerator:
    from gansvc.models import build_generator

    spec = TrainSpec.from_dict({**TINY, "model": "unexportable", "model_args": {"how": how}, "z_dim": 16})
    generator = build_generator(spec, (1, 28, 28)).eval()
    return LoadedGenerator(generator, spec, "generator.pt", 0, False)


@pytest.mark.parametrize("how, fmt, names", [
    ("svd", "onnx", "the operator aten::linalg_svd cannot be exported to ONNX"),
    ("pyfunc", "torchscript", "the operator Clip (a Python function"),
    ("branch", "torchscript", "the operator Tensor.__bool__"),
    ("branch", "onnx", "the operator Tensor.__bool__"),
    ("loop", "torchscript", "fails on a batch of 7"),
])  # fmt: skip
def test_a_plugin_that_cannot_be_exported_is_refused_naming_the_operator(unexportable, tmp_path, how, fmt, names):
    out = tmp_path / "g.bin"
    with pytest.raises(ExportError) as caught:
        export_generator_file(_plugin_generator(how), fmt, out)
    assert names in str(caught.value)
    if how == "branch":  # and where it is
        assert "gansvc_unexportable/__init__.py:" in str(caught.value)
    assert not out.exists() and not (tmp_path / "g.bin.json").exists()  # nothing unverified is left behind


def test_what_a_format_can_hold_is_exported(unexportable, tmp_path):
    # the Python function is inlined by the ONNX exporter; SVD is an ordinary TorchScript operator
    assert export_generator_file(_plugin_generator("pyfunc"), "onnx", tmp_path / "a.onnx").max_abs_error <= 1e-5
    assert export_generator_file(_plugin_generator("svd"), "torchscript", tmp_path / "b.pt").max_abs_error <= 1e-5


def test_an_unexportable_plugin_run_exits_1_and_is_failed_precondition_naming_the_operator(unexportable, tmp_path,
                                                                                           capsys):  # fmt: skip
    from gansvc.service.errors import WrongState
    from gansvc.service.exports import export_job_generator
    from gansvc.service.messages import pb

    run = tmp_path / "run"
    Trainer(TrainSpec.from_dict({**TINY, "model": "unexportable", "model_args": {"how": "svd"}}), run).run()
    assert main(["export", str(run), "--format", "onnx", "-o", str(tmp_path / "g.onnx")]) == 1
    assert "gansvc export: error: the operator aten::linalg_svd" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "torchscript", "-o", str(tmp_path / "g.pt")]) == 0
    # ExportGenerator's answer (the servicer maps WrongState to FAILED_PRECONDITION)
    with pytest.raises(WrongState, match="format: .* cannot be exported as onnx: the operator aten::linalg_svd"):
        export_job_generator(run, pb.ExportGeneratorRequest(job_id="run", format=pb.EXPORT_FORMAT_ONNX))
    assert not (run / "exports" / "generator.onnx").exists()


def test_gansvc_imports_and_exports_torchscript_without_onnx(tmp_path):
    code = ("import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None\n"
            "import gansvc.train.export, gansvc.export_cli, gansvc.service.exports\n"
            "from gansvc.train.export import ExportUnavailable, require_onnx\n"
            "try:\n    require_onnx()\nexcept ExportUnavailable as error:\n    print(error)\n")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "needs onnx and onnxruntime" in result.stdout and "pip install onnx onnxruntime" in result.stdout

