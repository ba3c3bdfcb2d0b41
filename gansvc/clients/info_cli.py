"""`gansvc info`: ask a server what it offers (GetServerInfo, built in gansvc.service.info) and print it."""

from __future__ import annotations

import argparse
import json
import sys


# ---------------------------------------------------------------------- gansvc info
def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Add `gansvc info`'s options (the connection options of every client command, and its own)."""
    from gansvc.clients.cli_args import _client_arguments

    _client_arguments(parser)
    parser.add_argument("--probe-datasets", action="store_true",
                        help="have the server call each plugin data set's factory once to learn its size, shape "
                        "and classes")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")


def run(name: str, args) -> int:
    """Ask the server what it offers and print it; return the exit code."""
    import grpc
    from google.protobuf import json_format

    from gansvc.clients.cli import _connect

    try:
        with _connect(args) as client:
            info = client.server_info(probe_datasets=args.probe_datasets)
    except grpc.RpcError as error:
        code = error.code()
        print(f"gansvc {name}: {code.name if code else 'error'}: {error.details()}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(json_format.MessageToDict(info, preserving_proto_field_name=True), indent=2))
    else:
        print(render(info))
    return 0


def render(info) -> str:
    """Return ServerInfo as a person reads it."""
    def plugin(offer):
        return f"  [{offer.plugin}]" if offer.plugin else ""

    lines = [f"gansvc {info.version} (torch {info.torch_version})", "models:"]
    for m in info.models:
        sizes = f" ({', '.join(map(str, m.image_sizes))} px)" if m.image_sizes else ""
        lines.append(f"  {m.name}{sizes}: {m.description}{plugin(m)}")
    lines.append("data sets:")
    for d in info.datasets:
        shape = "x".join(map(str, d.shape)) if d.shape else "shape unknown"
        size = f"{d.train_size} train" if d.train_size >= 0 else "size unknown"
        classes = {-1: "classes unknown", 0: "unlabelled"}.get(d.num_classes, f"{d.num_classes} classes")
        lines.append(f"  {d.name}: {shape}, {size}, {classes}: {d.description}{plugin(d)}")
    lines.append(f"losses: {', '.join(info.losses)}   precisions: {', '.join(info.precisions)}")
    lines.append("extractors:")
    lines += [f"  {e.name}: {e.description}{plugin(e)}" for e in info.extractors]
    lines.append("devices:")
    for d in info.devices:
        state = f"busy ({', '.join(d.jobs)})" if d.busy else f"free ({d.free_slots} of {d.slots} slots)"
        if not d.busy and d.jobs:
            state = f"{d.free_slots} of {d.slots} slots free ({', '.join(d.jobs)})"
        lines.append(f"  {d.name} ({d.description}): {state}")
    lines.append("nodes:")
    for node in info.nodes:
        state = "alive" if node.alive else "dead"
        if node.problem:
            state += f", gets no work: {node.problem}"
        devices = "; ".join(f"{d.name} {d.free_slots} of {d.slots} free" + (f" ({', '.join(d.jobs)})" if d.jobs else "")
                            for d in node.devices)  # fmt: skip
        lines.append(f"  {node.address} ({node.id[:8]}): {state}; {devices or 'no devices'}")
    archs = ", ".join(info.cuda_architectures) or "none"
    lines.append(f"kernels: CPU {info.cpu_capability}; CUDA architectures {archs}; CUDA "
                 f"{'available' if info.cuda_available else 'not available'} here")  # fmt: skip
    if info.HasField("kernel_selftest"):
        lines.append(f"kernel self-test: {json.dumps(dict(info.kernel_selftest.items()), default=str)}")
    lines.append(f"limits: max attempts {info.max_attempts}; data roots {', '.join(info.data_roots) or 'none'}")
    for problem in info.plugin_problems:
        lines.append(f"plugin problem: {problem.kind}:{problem.name}: {problem.message}")
    return "\n".join(lines)
