"""Visible placement on a real Ray cluster (issue 19): Job.nodes, ServerInfo.nodes and each RUNNING event's node;
`--jobs-dir`; a node that joins later is probed before it gets work (a blind one never does); a sweep's trials
spread over the nodes. Runs tests/ray_nodes_scenarios.py in a loopback-only network namespace, as
tests/test_ray_backend.py does, and asserts on what it observed."""

from __future__ import annotations

import pytest
from test_ray_backend import run_scenarios


@pytest.fixture(scope="module")
def seen(tmp_path_factory, fashion_mnist_root):
    return run_scenarios("ray_nodes_scenarios.py", tmp_path_factory.mktemp("ray-nodes"), fashion_mnist_root, 1500)


def _alive_addresses(info: list[dict]) -> dict[str, dict]:
    return {n["address"]: n for n in info if n["alive"]}


@pytest.mark.slow
def test_jobs_on_three_nodes_name_three_different_nodes_everywhere(seen):
    placed = seen["placed"]
    assert set(placed["states"].values()) == {"SUCCEEDED"}
    nodes = {job: where for job, where in placed["jobs"].items()}
    assert all(len(where) == 1 for where in nodes.values())
    assert len({where[0] for where in nodes.values()}) == 3  # three jobs, three nodes
    # ServerInfo.nodes: the head (no slots) and the three workers, each holding the job placed there
    alive = _alive_addresses(placed["info"])
    assert len(alive) == 4 and all(a.startswith("127.0.0.1:") for a in alive)
    for job, (address,) in nodes.items():
        cpu = [d for d in alive[address]["devices"] if d["name"] == "cpu"]
        assert cpu and cpu[0]["jobs"] == [job] and cpu[0]["slots"] == 1
    assert all(not n["problem"] for n in alive.values())
    # each RUNNING event names the node Job.nodes names
    assert placed["running_events"] == {job: where for job, where in nodes.items()}
    # the CLI's --json output carries the same, under `nodes`
    assert {j["id"]: j["nodes"] for j in placed["cli_jobs"]} == nodes
    assert {n["address"] for n in placed["cli_info"] if n.get("alive")} == set(alive)


@pytest.mark.slow
def test_run_directories_live_in_jobs_dir(seen):
    placed = seen["placed"]
    assert set(placed["jobs"]) <= set(placed["run_dirs"])
    assert placed["state_dir_jobs"] is False


@pytest.mark.slow
def test_a_node_that_joins_blind_to_the_jobs_directory_gets_no_work_and_is_named(seen):
    late = seen["late"]
    blind = late["blind"]
    assert blind["alive"] and "cannot read" in blind["problem"]
    shown = next(n for n in late["info"] if n["id"] == blind["id"])
    assert "cannot read" in shown["problem"] and all(not d["jobs"] for d in shown["devices"])
    assert f"node 127.0.0.1 ({blind['id'][:8]}) gets no work: it does not see the jobs directory" in seen["server_log"]
    # four usable one-slot nodes: four jobs at once, none on the blind node; a fifth waits though it has a free slot
    assert set(late["states"].values()) == {"SUCCEEDED"}
    everywhere = [node for nodes in late["running_events"].values() for node in nodes]
    assert blind["address"] not in everywhere
    assert len({where[0] for where in late["jobs"].values()}) == 4
    assert late["fifth_state_while_four_run"] == "QUEUED"
    assert late["fifth_waiting"].startswith("waiting for 1 CPU slot on one node")


@pytest.mark.slow
def test_a_node_that_joins_later_is_probed_then_gets_work(seen):
    late = seen["late"]
    good = next(n for n in late["info"] if n["id"] == late["good"])
    assert good["alive"] and good["problem"] == ""
    assert good["address"] in {where[0] for where in late["jobs"].values()}


@pytest.mark.slow
def test_a_sweep_runs_as_many_trials_as_the_usable_nodes_hold_on_different_nodes(seen):
    sweep = seen["sweep"]
    assert sweep["state"] == "SUCCEEDED", sweep["message"]
    assert sweep["running_reason"].endswith("as many at a time as fit (4 now)")
    nodes = [where[0] for where in sweep["trials"].values()]
    assert len(nodes) == 4 and len(set(nodes)) == 4
    assert seen["late"]["blind"]["address"] not in nodes
