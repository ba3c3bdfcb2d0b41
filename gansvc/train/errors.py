"""The errors a training run ends with, as classes a caller can `isinstance`-check, and the failure kinds
that cross a process boundary (a rank's failure file) as stable codes rather than class names.

- `SpecError` (gansvc.train.spec): a bad setting, naming the field.
- `TrainingDiverged`: a loss or statistic became NaN or infinite.
- `DistributedRunFailed`: a launched run failed; `.failure` is the `RankFailure` that caused it and
  `.kind` its `FailureKind`.
- out of memory: torch.cuda.OutOfMemoryError (GPU) and MemoryError (host), as Python raises them.

`failure_kind(error)` gives the FailureKind of any of them, so the service tells a diverged run, an
out-of-memory run or a bad spec apart the same way on one process and on several.
"""

from __future__ import annotations

import enum
import signal
import sys
from dataclasses import dataclass

from gansvc.train.spec import SpecError

__all__ = ["DistributedRunFailed", "FailureKind", "RankFailure", "TrainingDiverged", "failure_kind"]


class TrainingDiverged(RuntimeError):
    """A loss or statistic became NaN or infinite; training stops with no checkpoint of the bad state."""


class FailureKind(str, enum.Enum):
    """Why a run (or one of its ranks) failed: the codes written to a rank's failure file and read by the service."""

    INVALID_SPEC = "invalid_spec"  # a bad setting or missing data: the user's to fix
    DIVERGED = "diverged"  # TrainingDiverged
    GPU_OUT_OF_MEMORY = "gpu_out_of_memory"  # torch.cuda.OutOfMemoryError
    HOST_OUT_OF_MEMORY = "host_out_of_memory"  # MemoryError
    INTERRUPTED = "interrupted"  # KeyboardInterrupt
    PEER_LOST = "peer_lost"  # a collective failed because another rank died or hung: a consequence, not a cause
    ERROR = "error"  # anything else (a bug, an I/O error, ...)

    @classmethod
    def parse(cls, text: object) -> FailureKind:
        """Return the kind a failure file names (ERROR for a code this version does not know)."""
        try:
            return cls(str(text))
        except ValueError:
            return cls.ERROR


def failure_kind(error: BaseException | None) -> FailureKind:
    """Return the FailureKind of an error (a DistributedRunFailed gives its failing rank's kind)."""
    if error is None:
        return FailureKind.ERROR
    if isinstance(error, DistributedRunFailed):
        return error.kind
    if isinstance(error, SpecError):
        return FailureKind.INVALID_SPEC
    if isinstance(error, TrainingDiverged):
        return FailureKind.DIVERGED
    if isinstance(error, KeyboardInterrupt):
        return FailureKind.INTERRUPTED
    if isinstance(error, MemoryError):
        return FailureKind.HOST_OUT_OF_MEMORY
    torch = sys.modules.get("torch")  # an error from torch means torch is imported; the launcher never imports it
    if torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
        return FailureKind.GPU_OUT_OF_MEMORY
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and isinstance(error, getattr(distributed, "DistError", ())):
        return FailureKind.PEER_LOST
    return FailureKind.ERROR


@dataclass
class RankFailure:
    """The rank whose failure ended a run: where it ran, how it exited and why.

    `kind` is what a program acts on; `error` (the exception's class name) and `message` are for people.
    """

    rank: int | None
    exit_code: int
    error: str = ""
    message: str = ""
    traceback: str = ""
    host: str = ""
    kind: FailureKind = FailureKind.ERROR

    def describe(self) -> str:
        """Return the failure in one line, e.g. 'rank 1 failed (exit code 1): ValueError: bad value'."""
        who = f"rank {self.rank}" if self.rank is not None else "a rank"
        if self.exit_code < 0:
            try:
                how = f"was killed by {signal.Signals(-self.exit_code).name}"
            except ValueError:
                how = f"died of signal {-self.exit_code}"
        else:
            how = f"failed (exit code {self.exit_code})"
        what = f"{self.error}: {self.message}" if self.error and self.message else self.error or self.message
        return f"{who} {how}" + (f": {what}" if what else "")


class DistributedRunFailed(RuntimeError):
    """A launched run failed; str() names the failing rank and its error, `kind` says what kind of failure it was.

    `result` is the launcher's LaunchResult (exit code, failure, ...).
    """

    def __init__(self, result):
        self.result = result
        self.failure: RankFailure | None = result.failure
        super().__init__(result.failure.describe() if result.failure else f"exit code {result.exit_code}")

    @property
    def kind(self) -> FailureKind:
        """Return the failing rank's kind (ERROR when no rank said why)."""
        return self.failure.kind if self.failure is not None else FailureKind.ERROR

    @property
    def process_died(self) -> bool:
        """Return whether the run ended because a process of it was killed by a signal (a rank, or torchrun's
        agent when no rank said why) rather than failing by itself: a death, not an error of the job."""
        # a rank's own error is recorded with a positive exit code; only torchrun's view of a silent rank
        # (or of the agent) carries the negative signal number
        code = self.failure.exit_code if self.failure is not None else self.result.exit_code
        return code < 0
