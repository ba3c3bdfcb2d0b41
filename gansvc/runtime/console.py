"""What the command lines share: the usage error every subcommand raises, and durations as people read them."""

from __future__ import annotations


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
