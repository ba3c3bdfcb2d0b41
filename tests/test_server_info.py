"""GetServerInfo and `gansvc info`: what a server offers, plugins included, with the devices' free/busy state."""

from __future__ import annotations

import re
import subprocess
import sys
from types import SimpleNamespace

import grpc
import pytest
import torch
from plugin_packages import REPO, plugins_visible
from test_selftest import _wrong_loss, fresh_selftest, needs_extension  # noqa: F401 - fresh_selftest: a fixture

from gansvc.runtime import registry


# probing the plugin data sets keeps what they showed in the cache folder: a private one
pytestmark = pytest.mark.usefixtures("cache_dir")


@pytest.fixture(scope="module", autouse=True)
def visible(tmp_path_factory):
    with plugins_visible(tmp_path_factory.mktemp("plugins")):
        yield


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from gansvc.service.server import GanServer, ServerConfig

    folder = tmp_path_factory.mktemp("info")
    (folder / "tokens").write_text("secret\n")
    (folder / "data").mkdir()
    server = GanServer(ServerConfig(state_dir=folder / "state", listen="127.0.0.1:0", auth_token_file=folder / "tokens",
                                    data_roots=[folder / "data"], max_attempts=5))  # fmt: skip
    server.start()
    yield server, folder
    server.shutdown(timeout=10)


def test_server_info_lists_everything_offered(server):
    from gansvc import ops
    from gansvc.client import GanClient

    running, folder = server
    with GanClient(running.address, token="secret") as client:
        info = client.server_info(probe_datasets=True)
    assert [m.name for m in info.models] == list(registry.model_names())
    assert {m.name: m.plugin for m in info.models}["stylish"] == "gansvc-example-plugins 0.1.0"
    datasets = {d.name: d for d in info.datasets}
    assert list(datasets) == list(registry.dataset_names())
    fashion = datasets["fashion-mnist"]
    assert (list(fashion.shape), fashion.train_size, fashion.test_size, fashion.num_classes) == ([1, 28, 28], 60000,
                                                                                              10000, 10)  # fmt: skip
    from gansvc_example_plugins.shapes import CLASS_NAMES  # the plugin's own answer, probed by the server

    shapes = datasets["shapes"]
    assert (list(shapes.shape), shapes.train_size, shapes.num_classes) == ([1, 32, 32], 6000, len(CLASS_NAMES))
    assert list(shapes.class_names) == CLASS_NAMES and shapes.plugin.startswith("gansvc-example-plugins")
    assert datasets["shapes-stream"].train_size == 6000 and list(datasets["shapes-stream"].shape) == [1, 32, 32]
    assert {e.name for e in info.extractors} == set(registry.extractor_names())
    assert list(info.losses) == list(registry.loss_names())
    assert info.cpu_capability == ops.cpu_capability()
    assert all(re.fullmatch(r"sm_\d+a?", arch) for arch in info.cuda_architectures)
    assert bool(info.cuda_architectures) == ops.cuda_compiled()
    assert info.max_attempts == 5 and list(info.data_roots) == [str((folder / "data").resolve())]
    assert [d.name for d in info.devices] == ["cpu"] and not info.devices[0].busy


def _kernel_selftest(server) -> dict:
    """Return GetServerInfo's kernel_selftest of the running server as plain data."""
    from google.protobuf.json_format import MessageToDict

    from gansvc.client import GanClient

    with GanClient(server[0].address, token="secret") as client:
        info = client.server_info()
    assert info.HasField("kernel_selftest")
    return MessageToDict(info.kernel_selftest)


def test_server_info_reports_the_kernels_of_its_process(server, fresh_selftest):
    from gansvc import ops

    reported = _kernel_selftest(server)
    built = ops.load_extension() is not None
    assert reported["kernels"] == ("ext" if built else "ref") and reported["extension_built"] is built
    assert reported["cuda_compiled"] is ops.cuda_compiled()
    assert reported["selftest"] == "not run" and reported["devices"] == {} and reported["message"] == ""


@needs_extension
def test_server_info_reports_a_failed_kernel_self_test_and_the_fallback(server, fresh_selftest):
    from gansvc import ops
    from gansvc.ops import selftest

    fresh_selftest.setenv("GANSVC_SELFTEST", "all")  # the CPU gets the first-use self-test a GPU gets
    selftest.configure()
    fresh_selftest.setitem(selftest.KERNELS, "d_loss", _wrong_loss)
    with pytest.warns(RuntimeWarning, match="failed their self-test on cpu"):
        ops.d_loss(torch.randn(9, dtype=torch.float64), torch.randn(9, dtype=torch.float64), "bce")
    reported = _kernel_selftest(server)  # the server runs in this process: it reports the fallback just made
    assert reported["selftest"] == "failed" and reported["kernels"] == "ref"
    cpu = reported["devices"]["cpu"]
    assert cpu["passed"] is False and cpu["checks"] == len(selftest.check_device("cpu"))
    assert {f["op"] for f in cpu["failures"]} == {"d_loss"}
    assert all(f["max_error"] > f["tolerance"] for f in cpu["failures"])
    assert reported["message"] == selftest.failure_message() and "d_loss" in reported["message"]


def test_server_info_needs_what_list_jobs_needs(server):
    from gansvc.client import GanClient

    running, _ = server
    with GanClient(running.address) as anonymous:
        with pytest.raises(grpc.RpcError) as caught:
            anonymous.server_info()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_devices_are_busy_while_jobs_hold_them():
    from gansvc.service.devices import DevicePool
    from gansvc.service.info import server_info
    from gansvc.service.validation import DataRoots

    pool = DevicePool([], cpu_slots=2)
    jobs = [SimpleNamespace(id="train-a", device="cpu")]
    cpu = server_info(pool, DataRoots(()), 3, jobs).devices[0]
    assert (cpu.busy, list(cpu.jobs), cpu.slots, cpu.free_slots) == (False, ["train-a"], 2, 1)
    jobs.append(SimpleNamespace(id="train-b", device="cpu"))
    cpu = server_info(pool, DataRoots(()), 3, jobs).devices[0]
    assert (cpu.busy, cpu.free_slots) == (True, 0)


def test_gansvc_info_prints_what_the_server_offers(server):
    running, folder = server
    command = [sys.executable, "-m", "gansvc", "info", "--server", running.address, "--token-file",
               str(folder / "tokens")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in registry.model_names() + registry.extractor_names():
        assert f"  {name}" in done.stdout
    assert "max attempts 5" in done.stdout and "cpu (" in done.stdout
    done = subprocess.run([*command[:-2]], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 1 and "UNAUTHENTICATED" in done.stderr
