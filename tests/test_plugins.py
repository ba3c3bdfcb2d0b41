"""Plugins (issue 11, docs/plugins.md): installed models, data sets and extractors, named in a spec like built-ins;
plugins that break the contract fail their job naming the plugin; the worked example trains through the service."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import grpc
import pytest
import torch
import torch.nn.functional as F
from plugin_packages import (
    PICKY, PICKY_ENTRY_POINTS, PICKY_MODULE, picky_plugins_visible, plugins_visible, write_package,
)  # fmt: skip

from gansvc.runtime import registry
from gansvc.runtime.plugins import PluginArgumentError, PluginError, load_factory

SMALL = {"model": "stylish", "dataset": "shapes", "model_args": {"width": 8}, "dataset_args": {"count": 64},
         "steps": 2, "batch_size": 16, "z_dim": 16, "eval_samples": 0, "sample_every": 0, "checkpoint_every": 0,
         "log_every": 1, "tensorboard": False, "device": "cpu", "threads": 1}  # fmt: skip


# submitting a plugin model on plugin data learns the data set's shape into the cache folder: a private one
pytestmark = pytest.mark.usefixtures("cache_dir")


@pytest.fixture(scope="module", autouse=True)
def visible(tmp_path_factory):
    with plugins_visible(tmp_path_factory.mktemp("plugins")):
        yield


def tiny(**overrides):
    from gansvc.train.spec import TrainSpec

    return TrainSpec.from_dict({**SMALL, **overrides})


# ---------------------------------------------------------------------- discovery and the spec
def test_installed_plugins_stand_next_to_the_built_ins():
    assert {"mlp", "dcgan", "stylish"} <= set(registry.model_names())
    assert {"fashion-mnist", "shapes", "shapes-stream"} <= set(registry.dataset_names())
    assert {"fmnist-cnn", "shapes-features"} <= set(registry.extractor_names())
    assert registry.model_info("stylish").plugin == "gansvc-example-plugins 0.1.0"
    assert registry.model_info("dcgan").plugin == "" and not registry.is_plugin("models", "dcgan")
    assert registry.is_plugin("datasets", "shapes") and registry.dataset_info("shapes").shape == ()


def test_plugin_arguments_travel_through_dict_toml_and_the_proto(tmp_path):
    from gansvc.api.convert import training_spec_from_dict, training_spec_to_dict
    from gansvc.train.spec import SpecError, TrainSpec

    spec = tiny(model_args={"width": 8, "mapping_layers": 1})
    assert TrainSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    (tmp_path / "spec.toml").write_text('model = "stylish"\ndataset = "shapes"\nsteps = 2\n[model_args]\nwidth = 8\n'
                                        '[dataset_args]\ncount = 64\n')  # fmt: skip
    from_toml = TrainSpec.from_file(tmp_path / "spec.toml")
    assert from_toml.model_args == {"width": 8} and from_toml.dataset_args == {"count": 64}
    assert TrainSpec.from_dict({**SMALL, "model_args": '{"width": 8}'}).model_args == {"width": 8}  # CLI text
    message = training_spec_from_dict(spec.to_dict())
    back = training_spec_to_dict(message)
    assert back["model_args"] == {"width": 8, "mapping_layers": 1} and isinstance(back["model_args"]["width"], int)
    assert TrainSpec.from_dict(back) == spec
    with pytest.raises(SpecError) as caught:
        TrainSpec.from_dict({"steps": 1, "model": "dcgan", "model_args": {"width": 8}})
    assert caught.value.field == "model_args"
    with pytest.raises(SpecError) as caught:
        TrainSpec.from_dict({"steps": 1, "model": "stylish", "model_args": "[1, 2]"})
    assert caught.value.field == "model_args"


def test_refused_arguments_name_the_argument_at_submit():
    from gansvc.service.devices import DevicePool
    from gansvc.service.errors import InvalidField
    from gansvc.service.messages import pb, training_spec_from_dict
    from gansvc.service.validation import DataRoots, training_spec

    roots, pool = DataRoots(()), DevicePool([], 1)
    cases = [  # (settings, field named): an unknown keyword, a value the factory refuses (built on the meta device)
        ({**SMALL, "model_args": {"depth": 3}}, "model_args.depth"),
        ({**SMALL, "dataset": "fashion-mnist", "dataset_args": {}, "model_args": {"width": 1000}}, "model_args.width"),
        ({**SMALL, "dataset_args": {"colour": True}}, "dataset_args.colour"),
    ]
    for settings, field in cases:
        with pytest.raises(InvalidField) as caught:
            training_spec(training_spec_from_dict(settings), roots, pool)
        assert caught.value.field == field, caught.value
    accepted = training_spec(training_spec_from_dict(SMALL), roots, pool)
    assert accepted["model_args"] == {"width": 8}
    assert pb  # the message module the conversions use


# ---------------------------------------------------------------------- the wrappers' checks
def _built(name, shape=(1, 8, 8), **args):
    from gansvc.models import build_models

    return build_models(tiny(model=name, model_args=args, dataset="fashion-mnist", dataset_args={}), shape)


def test_discriminator_logits_of_either_shape_come_out_flat():
    torch.manual_seed(0)
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    for name in ("good-flat", "bad-range"):  # [N] and [N, 1] logits (bad-range's D is fine)
        _, D = _built(name)
        assert torch.equal(D(x), D.net(x).reshape(-1)) and D(x).shape == (5,)
    G, _ = _built("good-flat")
    z = torch.randn(5, 16)
    assert torch.equal(G(z), torch.tanh(G.net.fc(z)).view(5, 1, 8, 8))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("bad-range", "outside [-1, 1]"), ("bad-shape", "expected [3, 1, 8, 8]"), ("raises", "boom inside forward")],
)
def test_contract_breaches_name_the_plugin(name, expected):
    G, _ = _built(name)
    with pytest.raises(PluginError, match=re.escape(expected)) as caught:
        G(torch.randn(3, 16))
    assert f"gansvc.models:{name}" in str(caught.value)


def test_import_failures_and_refused_values_name_the_plugin_or_argument():
    with pytest.raises(PluginError, match="gansvc.models:bad-import: cannot be imported"):
        load_factory("models", "bad-import")
    with pytest.raises(PluginArgumentError) as caught:
        _built("good-flat", scale=-1.0)
    assert caught.value.field == "model_args.scale" and "scale must be > 0" in str(caught.value)


# ---------------------------------------------------------------------- extractors
def test_a_plugin_extractor_gets_resized_three_channel_images():
    from gansvc.metrics.features import PluginExtractor

    net = PluginExtractor("rgb-features")
    grey = torch.rand(4, 1, 28, 28, dtype=torch.float64).float() * 2 - 1
    features, logits = net(grey)
    resized = F.interpolate(grey.double(), size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    expected = resized.repeat(1, 3, 1, 1).flatten(1) @ net.model.weight.double().t()
    torch.testing.assert_close(features.double(), expected, rtol=1e-5, atol=1e-5)
    assert logits.shape == (4, 0) and net.feature_dim == 5  # no logits method: no IS
    shapes = PluginExtractor("shapes-features")
    assert shapes.fits((1, 64, 64)) and not shapes.fits((3, 32, 32)) and shapes.num_classes == 3


# ---------------------------------------------------------------------- the trainer, unchanged
def test_a_plugin_model_resumes_exactly(tmp_path):
    from gansvc.train import Trainer

    straight = tiny(steps=4, checkpoint_every=2, ema_decay=0.9, spectral_norm=True, loss="hinge")
    Trainer(straight, tmp_path / "straight").run()
    Trainer(straight.with_overrides(steps=2), tmp_path / "split").run()
    assert Trainer(straight, tmp_path / "split").run()["resumed_from"] == 2
    a = torch.load(tmp_path / "straight" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoints" / "latest.pt", weights_only=True)
    assert a["spec"]["model_args"] == {"width": 8}
    for part in ("G", "D"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)


@pytest.mark.parametrize(
    "recipe",
    [{"loss": "wasserstein", "gradient_penalty": 10.0, "n_critic": 2}, {"r1_gamma": 1.0, "precision": "bf16"},
     {"loss": "bce", "g_saturating": True, "real_label": 0.9}, {"dataset": "shapes-stream"}],
)  # fmt: skip
def test_a_plugin_model_trains_with_every_recipe(tmp_path, recipe):
    from gansvc.train import Trainer

    summary = Trainer(tiny(steps=3, sample_every=2, **recipe), tmp_path).run()
    assert summary["step"] == 3 and (tmp_path / "generator.pt").is_file()
    from gansvc.train.sampling import generate, load_generator

    generator, spec = load_generator(tmp_path)
    assert spec.model_args == {"width": 8} and generate(generator, 3, seed=1).shape == (3, 1, 32, 32)


# ---------------------------------------------------------------------- through the service
@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from gansvc.service.server import GanServer, ServerConfig

    server = GanServer(ServerConfig(state_dir=tmp_path_factory.mktemp("state"), listen="127.0.0.1:0", cpu_jobs=2))
    server.start()
    yield server
    server.shutdown(timeout=20)


@pytest.mark.slow
def test_the_example_trains_and_is_scored_through_the_service_and_broken_plugins_fail_alone(service):
    from gansvc.client import GanClient, state_name

    with GanClient(service.address, timeout=60) as client:
        good = client.submit_training({**SMALL, "steps": 3, "checkpoint_every": 3})
        broken = client.submit_training({**SMALL, "model": "bad-range", "model_args": {}})
        finished = {job_id: client.wait(job_id, timeout=300) for job_id in (good.id, broken.id)}
        assert state_name(finished[good.id].state) == "SUCCEEDED", finished[good.id].message
        assert state_name(finished[broken.id].state) == "FAILED"
        assert "gansvc.models:bad-range" in finished[broken.id].message and "[-1, 1]" in finished[broken.id].message
        assert finished[good.id].training.model_args["width"] == 8
        scored = client.submit_evaluation(good.id, real="shapes:test", extractor="shapes-features",
                                          num_samples=64, seed=3)  # fmt: skip
        scored = client.wait(scored.id, timeout=300)
        assert state_name(scored.state) == "SUCCEEDED", scored.message
        assert scored.summary["extractor"] == "shapes-features" and scored.summary["fid"] > 0
        assert scored.summary["n_real"] == 1000 and scored.summary["is_mean"] >= 1.0
        try:
            client.submit_training({**SMALL, "model_args": {"depth": 3}})
            raise AssertionError("an unknown model argument was accepted")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("model_args.depth")
        assert client.health() == "SERVING"  # the server lives on


# ---------------------------------------------------------------------- a plugin data set's shape, learnt once
PICKY_SPEC = {"model": "picky", "dataset": "dots", "steps": 2, "batch_size": 8, "z_dim": 4, "eval_samples": 0,
              "sample_every": 0, "checkpoint_every": 0, "tensorboard": False, "device": "cpu",
              "threads": 1}  # fmt: skip


@pytest.fixture
def picky(tmp_path, monkeypatch):
    """A third party's package with a model and a data set (tests/plugin_packages.py), a fresh cache folder and a
    process that has probed nothing yet; yields the package's module folder."""
    from gansvc.service import dataset_probe

    monkeypatch.setenv("GANSVC_CACHE_DIR", str(tmp_path / "cache"))
    dataset_probe.forget()
    with picky_plugins_visible(tmp_path / "site") as module:
        yield module
    dataset_probe.forget()


def _factory_calls(module) -> list[str]:
    return (module / "calls").read_text().splitlines() if (module / "calls").exists() else []


def test_a_plugin_models_refused_argument_is_refused_at_submit_on_plugin_data_too(picky, service):
    from gansvc.client import GanClient
    from gansvc.service.devices import DevicePool
    from gansvc.service.messages import training_spec_from_dict
    from gansvc.service.validation import DataRoots, training_spec

    with GanClient(service.address, timeout=60) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.submit_training({**PICKY_SPEC, "model_args": {"width": 7}})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("model_args.width"), caught.value.details()
    assert "width must be even, got 7" in caught.value.details()
    assert _factory_calls(picky) == ["train"]  # the data set's shape was learnt from its factory, once
    accepted = training_spec(training_spec_from_dict({**PICKY_SPEC, "model_args": {"width": 8}}), DataRoots(()),
                             DevicePool([], 1))  # fmt: skip
    assert accepted["model_args"] == {"width": 8} and _factory_calls(picky) == ["train"]


def test_a_plugin_data_sets_shape_is_kept_per_installed_version_and_learnt_again_after_an_upgrade(picky):
    from gansvc.models.plugin import known_data_shape
    from gansvc.service import dataset_probe

    first = dataset_probe.probe_dataset("dots")
    assert first == {"shape": [1, 16, 16], "size": 32, "num_classes": 2, "class_names": ["even", "odd"]}
    kept = json.loads(dataset_probe.cache_file("dots").read_text())
    assert (kept["dataset"], kept["entry_point"], kept["distribution"]) == ("dots", "gansvc_picky_plugins:dots",
                                                                           f"{PICKY} 0.1")  # fmt: skip
    assert kept["facts"] == first
    assert known_data_shape(tiny(**PICKY_SPEC, image_size=8), first["shape"]) == (1, 8, 8)  # image_size applies
    (picky / "channels").write_text("3")  # what the factory shows from now on, under the same version
    dataset_probe.forget()  # a restarted server reads what the cache keeps: the factory does not run again
    assert dataset_probe.probe_dataset("dots") == first and _factory_calls(picky) == ["train"]
    # an upgrade while the server runs: another version installed, so the data set is probed again
    write_package(picky.parent, PICKY, "0.2", PICKY_MODULE, PICKY_ENTRY_POINTS)
    upgraded = dataset_probe.probe_dataset("dots")
    assert upgraded["shape"] == [3, 16, 16] and _factory_calls(picky) == ["train", "train"]
    assert json.loads(dataset_probe.cache_file("dots").read_text())["distribution"] == f"{PICKY} 0.2"
    assert dataset_probe.probe_dataset("dots") == upgraded and len(_factory_calls(picky)) == 2


def test_a_data_set_factory_that_kills_its_process_is_a_problem_named_and_the_job_is_left_to_fail(picky):
    from gansvc.service import dataset_probe
    from gansvc.service.devices import DevicePool
    from gansvc.service.errors import InvalidField
    from gansvc.service.messages import training_spec_from_dict
    from gansvc.service.validation import DataRoots, training_spec

    (picky / "channels").write_text("crash")
    settings = training_spec_from_dict({**PICKY_SPEC, "model_args": {"width": 7}})
    # the shape stays unknown, so the model is not built at submit: the job fails when it runs, naming the plugin
    assert training_spec(settings, DataRoots(()), DevicePool([], 1))["model_args"] == {"width": 7}
    problem = dataset_probe.probe_problems()["dots"]  # this process (the server) lived
    assert problem == "plugin gansvc.datasets:dots: the process calling its factory was killed by SIGKILL"
    assert not dataset_probe.cache_file("dots").exists()  # a failure is not kept past this process
    (picky / "channels").write_text("1")
    dataset_probe.forget()
    with pytest.raises(InvalidField) as caught:  # fixed without a new version: the next server learns the shape
        training_spec(settings, DataRoots(()), DevicePool([], 1))
    assert caught.value.field == "model_args.width"


# ---------------------------------------------------------------------- gansvc plugins check
def _check(capsys, *args):
    from gansvc.cli import main

    code = main(["plugins", "check", *args])
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def test_plugins_check_reports_problems_with_its_exit_code(capsys):
    for name in ("stylish", "shapes-stream", "shapes-features"):
        done = _check(capsys, name, *(["--dataset-args", '{"count": 8}'] if name.startswith("shapes-s") else []))
        assert done.returncode == 0 and "no problems found" in done.stdout, done.stdout + done.stderr
    done = _check(capsys, "bad-range", "--data-shape", "1,8,8")
    assert done.returncode == 1 and "outside [-1, 1]" in done.stdout, done.stdout + done.stderr
    done = _check(capsys, "bad-import")
    assert done.returncode == 1 and "cannot be imported" in done.stdout
    done = _check(capsys, "no-such-plugin")
    assert done.returncode == 2 and "no installed plugin 'no-such-plugin'" in done.stderr
    done = _check(capsys, "stylish", "--kind", "datasets")
    assert done.returncode == 2 and "no installed datasets plugin" in done.stderr
