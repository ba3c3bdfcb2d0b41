"""The Docker image as a Ray head, worker or gansvc server (issue 19), and examples/cluster-compose.yaml: the compose
file parses, has one head, two workers and the server, and every command it runs is one the real command lines
accept (`ray start`'s own click parser, `gansvc serve`'s own argparse parser); the Dockerfile passes hadolint."""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "examples" / "cluster-compose.yaml"


def _serve_args(words: list[str]) -> argparse.Namespace:
    """Parse `gansvc serve WORDS` with the real parser (SystemExit on an unknown or malformed option)."""
    from gansvc.service import cli

    parser = argparse.ArgumentParser(prog="gansvc serve")
    cli.add_arguments("serve", parser)
    return parser.parse_args(words)


def _ray_start(words: list[str]) -> dict:
    """Parse `ray start WORDS` with Ray's own parser; return its options."""
    pytest.importorskip("ray")
    from ray.scripts.scripts import start

    return start.make_context("start", list(words)).params


def _mounts(service: dict) -> dict[str, str]:
    return {volume.split(":")[1]: volume.split(":")[0] for volume in service.get("volumes", [])}


def test_the_compose_file_runs_a_head_two_workers_and_the_server():
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    subnet = ipaddress.ip_network(compose["networks"]["cluster"]["ipam"]["config"][0]["subnet"])
    ips = {name: service["networks"]["cluster"]["ipv4_address"] for name, service in services.items()}
    assert len(set(ips.values())) == len(ips) and all(ipaddress.ip_address(ip) in subnet for ip in ips.values())
    assert all(service["image"] == "gansvc" for service in services.values())

    ray_nodes = {}
    for name, service in services.items():
        if service.get("entrypoint") == ["ray"]:
            assert service["command"][0] == "start"
            ray_nodes[name] = _ray_start(service["command"][1:])
    heads = [name for name, options in ray_nodes.items() if options["head"]]
    workers = [name for name, options in ray_nodes.items() if not options["head"]]
    assert len(heads) == 1 and len(workers) == 2
    head = ray_nodes[heads[0]]
    head_address = f"{ips[heads[0]]}:{head['port']}"
    for name, options in ray_nodes.items():
        assert options["block"] and options["node_ip_address"] == ips[name]  # named by its fixed address
    assert all(ray_nodes[name]["address"] == head_address for name in workers)
    for name in ray_nodes:
        check = services[name]["healthcheck"]["test"]
        assert check[1:3] == ["ray", "health-check"] and check[check.index("--address") + 1] == head_address

    (server_name,) = [name for name in services if name not in ray_nodes]
    server = services[server_name]
    assert server["entrypoint"] == ["bash", "-c"]
    joined, served = server["command"][0].split("&&")
    join = shlex.split(joined)
    assert join[:2] == ["ray", "start"]
    options = _ray_start(join[2:])
    assert options["address"] == head_address and options["node_ip_address"] == ips[server_name]
    assert options["num_cpus"] == 0 and options["num_gpus"] == 0  # a node that runs no job: the driver's
    serve = shlex.split(served)
    assert serve[:3] == ["exec", "gansvc", "serve"]
    args = _serve_args(serve[3:])
    assert args.backend == "ray" and args.ray_address == head_address
    # the run directories: one volume at the same path in the server and on every Ray node (shared storage)
    jobs_dir = str(args.jobs_dir)
    volume = _mounts(server)[jobs_dir]
    assert volume in compose["volumes"]
    assert all(_mounts(services[name]).get(jobs_dir) == volume for name in ray_nodes)
    # and the store elsewhere: the server's own volume
    assert _mounts(server)["/var/lib/gansvc"] != volume
    health_listen = serve[serve.index("--health-listen") + 1]
    assert health_listen.startswith("127.0.0.1:")


def test_the_dockerfile_documents_the_three_roles_with_commands_that_parse():
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines, current = [], ""
    for line in text.splitlines():
        if not line.startswith("#   docker run") and not current:
            continue
        body = line.lstrip("#").strip()
        current += " " + body.rstrip("\\").strip()
        if not body.endswith("\\"):
            lines.append(shlex.split(current))
            current = ""
    roles = []
    for words in lines:
        image = words.index("gansvc")  # the image, after docker run's own options
        entry = words[words.index("--entrypoint") + 1] if "--entrypoint" in words else "gansvc serve"
        if entry == "ray":
            options = _ray_start(words[image + 2:])
            roles.append("head" if options["head"] else "worker")
        elif entry == "bash":
            joined, served = words[image + 2].split("&&")
            assert _ray_start(shlex.split(joined)[2:])["num_cpus"] == 0
            args = _serve_args(shlex.split(served)[3:])
            assert args.backend == "ray" and args.jobs_dir
            roles.append("server")
        else:
            roles.append("single")
    assert sorted(roles) == ["head", "server", "single", "worker"]
    assert "RAY_USAGE_STATS_ENABLED=0" in text


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed")
    run = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
