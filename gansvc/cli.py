"""The `gansvc` command: one subcommand per job, each defined in the module that owns it."""

from __future__ import annotations

import argparse
import importlib
import sys

# UsageError lives beneath the subcommand modules (they raise it, this module imports them); it stays
# importable from here for older callers.
from gansvc.runtime.console import UsageError

# name -> (module, help). Each module defines `add_arguments(name, parser)` and
# `run(name, args) -> int`; modules are imported only when their command runs, so that
# `gansvc --help` and the light commands do not pay for torch or grpc imports they do not use.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("gansvc.train.cli", "train a GAN locally and write a run directory"),
    "sample": ("gansvc.train.cli", "write generated images from a run or checkpoint: N, by seed, or interpolated"),
    "export": ("gansvc.export_cli", "export a generator as TorchScript or ONNX that runs without gansvc"),
    "eval": ("gansvc.metrics.cli", "score generated images: FID, Inception Score, KID"),
    "serve": ("gansvc.service.cli", "run the gRPC service"),
    "submit": ("gansvc.clients.cli", "submit a training job to a running service"),
    "watch": ("gansvc.clients.cli", "follow a job's events until it ends"),
    "jobs": ("gansvc.clients.cli", "list the service's jobs"),
    "samples": ("gansvc.clients.cli", "download a job's sample grid"),
    "cancel": ("gansvc.clients.cli", "cancel a job"),
    "download": ("gansvc.clients.cli", "download a job's checkpoint or exported generator"),
    "upload": ("gansvc.clients.cli", "upload a checkpoint to start runs from (prints its upload:SHA256)"),
    "health": ("gansvc.clients.cli", "check that a service answers SERVING"),
    "info": ("gansvc.clients.info_cli", "what a service offers: models, data sets, extractors, devices, kernels"),
    "plugins": ("gansvc.plugin_check", "check an installed plugin: `gansvc plugins check NAME`"),
    "doctor": ("gansvc.doctor", "self-test gansvc's kernels on every device and print a table"),
    "sweep": ("gansvc.clients.sweep_cli", "run a hyperparameter sweep (Optuna) on a running service"),
    "web": ("gansvc.web.cli", "serve the web dashboard: live jobs, curves, sample grids (a client of a service)"),
}


def main(argv: list[str] | None = None) -> int:
    """Run the gansvc command line; return the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="gansvc", description="GAN training and evaluation service")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = COMMANDS
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in commands.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(name, sub_parser)
    args = parser.parse_args(argv)
    module = importlib.import_module(commands[args.command][0])
    try:
        return int(module.run(args.command, args) or 0)
    except UsageError as error:
        print(f"gansvc {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gansvc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
