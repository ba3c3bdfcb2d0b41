"""`gansvc export RUN_OR_JOB --format torchscript|onnx -o PATH [--best] [--ema | --no-ema]`.

A local run directory, checkpoint or generator file is exported here (gansvc.train.export); anything
else is taken for a job id on a server (--server ...), which exports with the ExportGenerator RPC into
the job's run directory, and both files are downloaded (SHA-256 checked). Either way PATH is a
verified generator and PATH.json its input contract.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gansvc.runtime.console import UsageError

FORMATS = ("torchscript", "onnx")  # gansvc.train.export.FORMATS, named here without importing torch


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Add the options of `gansvc export` to `parser`."""
    from gansvc.clients import cli_args

    parser.add_argument("source", metavar="RUN_OR_JOB",
                        help="a run directory, checkpoint or generator.pt here, else a job id on --server")  # fmt: skip
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="torchscript (torch.jit.load) or onnx (onnxruntime; a dynamic batch axis)")  # fmt: skip
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="file to write; its input contract goes beside it as OUTPUT.json")  # fmt: skip
    parser.add_argument("--best", action="store_true", help="the run's best generator (generator_best.pt)")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                        help="the EMA of G's weights (--no-ema: G's own); default: what the run samples with")  # fmt: skip
    cli_args.add_arguments(name, parser)  # the connection options of the client commands (a job id)


def run(name: str, args) -> int:
    """Export a generator locally or through a server; return the exit code."""
    from gansvc.runtime import paths

    if paths.check_path(Path(args.source)).kind in ("dir", "file"):
        return _export_here(args)
    return _export_on_server(args)


def _export_here(args) -> int:
    from gansvc.runtime.plugins import PluginError
    from gansvc.train.export import ExportError, ExportUnavailable, contract_path, export_generator_file
    from gansvc.train.latents import SamplingError
    from gansvc.train.sampling import open_generator

    try:
        loaded = open_generator(args.source, "cpu", best=args.best, ema=args.ema)
    except SamplingError as error:
        raise UsageError(f"--{error.field}: {error.message}") from None
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"RUN_OR_JOB: {error}") from None
    _check_output(args.output, contract_path(args.output))
    try:
        result = export_generator_file(loaded, args.format, args.output)
    except (ExportError, ExportUnavailable, PluginError) as error:
        print(f"gansvc export: error: {error}", file=sys.stderr)
        return 1
    _report(result.path, result.contract_path, result.contract)
    return 0


def _export_on_server(args) -> int:
    import json

    import grpc

    from gansvc.clients.cli import _connect

    contract_file = args.output.with_name(args.output.name + ".json")
    _check_output(args.output, contract_file)
    try:
        with _connect(args) as client:
            reply = client.export_generator(args.source, args.format, best=args.best, ema=args.ema)
            client.download(args.source, reply.artifact, args.output)
            client.download(args.source, reply.contract_artifact, contract_file)
    except grpc.RpcError as error:
        code = error.code()
        hint = ""
        if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
            hint = f" ({args.source!r} is no run directory or file here either)"
        print(f"gansvc export: {code.name if code else 'error'}: {error.details()}{hint}", file=sys.stderr)
        return 2 if code == grpc.StatusCode.INVALID_ARGUMENT else 1
    _report(args.output, contract_file, json.loads(contract_file.read_text(encoding="utf-8")))
    return 0


def _check_output(output: Path, contract: Path) -> None:
    for path in (output, contract):
        if path.is_dir():
            raise UsageError(f"--output: {str(path)!r} is a folder; name the file to write")


def _report(path: Path, contract_file: Path, contract: dict) -> None:
    inputs = ", ".join(f"{i['name']} {i['dtype']} [{', '.join(map(str, i['shape']))}]" for i in contract["inputs"])
    output = contract["output"]
    check = contract["verification"]
    print(f"gansvc export: wrote {path} ({contract['format']}, {contract['size_bytes']} bytes) and its contract "
          f"{contract_file}")  # fmt: skip
    print(f"  inputs {inputs} -> {output['name']} {output['dtype']} [{', '.join(map(str, output['shape']))}]"
          + (f" in [{output['range'][0]:g}, {output['range'][1]:g}]" if output["range"] else ""))  # fmt: skip
    print(f"  verified: max abs error {check['max_abs_error']:.3g} against gansvc on seeds "
          f"{check['seeds'][0]}-{check['seeds'][-1]} (batches of {' and '.join(map(str, check['batch_sizes']))})")
    print(f"  a seed's latent: {contract['latent']['seed_recipe']}")
