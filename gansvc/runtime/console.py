"""What the command lines share: the usage error every subcommand raises, durations as people read them, and
sizes as people write them."""

from __future__ import annotations

import re

_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


class UsageError(Exception):
    """Bad command-line input: printed as `gansvc CMD: error: ...` and exit code 2."""


def format_duration(seconds: float) -> str:
    """Return a duration as '5s', '1m05s' or '1h02m05s'."""
    total = int(round(max(seconds, 0.0)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def parse_size(text: str | int) -> int:
    """Return a size in bytes from '4G', '512M', '1.5g', '64KiB' or '1000000' (binary units); ValueError if bad."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"got {text}, expected a size >= 0")
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"got {text!r}, expected a size such as 4G, 512M or a number of bytes")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def size_argument(text: str) -> str:
    """argparse type of a size option (4G, 512M, ...): the text, checked; argparse reports a bad one (exit 2)."""
    import argparse

    try:
        parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text.strip()


def run_commands(prog: str, description: str, names, add_arguments, run, argv: list[str] | None = None) -> int:
    """Parse `prog COMMAND ...` for the commands `names` and run one; return its exit code (2 on a UsageError).

    The `python -m` entry of a command module (gansvc.clients.cli, gansvc.service.cli): the same parsing and
    error handling as the `gansvc` dispatcher, without its imports.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in names:
        add_arguments(name, sub.add_parser(name))
    args = parser.parse_args(argv)
    try:
        return run(args.command, args)
    except UsageError as error:
        print(f"gansvc {args.command}: error: {error}", file=sys.stderr)
        return 2
