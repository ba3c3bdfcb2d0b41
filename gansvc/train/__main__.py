"""`python -m gansvc.train ARGS` runs `gansvc train ARGS`; it is what torchrun starts on every rank.

    torchrun --nproc-per-node 2 -m gansvc.train --model mlp --steps 1000 --out runs/ddp

Under gansvc.train.launch (`gansvc train --nproc-per-node N`, the service) a rank that fails also
records its exit code and error for the launcher, which reports the first failing rank.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Run `gansvc train` with these arguments on this rank; return the exit code."""
    from gansvc.runtime.console import UsageError
    from gansvc.train import cli
    from gansvc.train.errors import FailureKind
    from gansvc.train.sidechannel import record_failure

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m gansvc.train", description="train a GAN (as `gansvc train`)")
    cli.add_arguments("train", parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:
        if exit.code:
            record_failure(int(exit.code), message="invalid command line: " + " ".join(argv),
                           kind=FailureKind.INVALID_SPEC)  # fmt: skip
        raise
    try:
        code = int(cli.run("train", args) or 0)
    except UsageError as error:
        world = os.environ.get("WORLD_SIZE", "1")
        where = f" [rank {os.environ.get('RANK', '?')} of {world}]" if world != "1" else ""
        print(f"gansvc train{where}: error: {error}", file=sys.stderr)
        record_failure(2, error, kind=FailureKind.INVALID_SPEC)  # a bad setting or missing data, named by the message
        return 2
    except KeyboardInterrupt as error:
        print("gansvc train: interrupted", file=sys.stderr)
        record_failure(130, error, "interrupted")
        return 130
    except BaseException as error:
        record_failure(1, error)
        raise
    if code:
        record_failure(code, message=f"gansvc train ended with exit code {code} (see the rank's error output)")
    return code


if __name__ == "__main__":
    sys.exit(main())
