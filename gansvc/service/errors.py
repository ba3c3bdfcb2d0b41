"""The request errors the servicer maps to gRPC status codes; each names the field it is about."""

from __future__ import annotations


class InvalidField(ValueError):
    """A request field with a bad value (INVALID_ARGUMENT); str() is 'field: what is wrong, with the value'."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class MissingReference(LookupError):
    """A request names a job, step or file that does not exist (NOT_FOUND); str() names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def __str__(self) -> str:  # LookupError would quote the message
        return f"{self.field}: {self.message}"


class WrongState(Exception):
    """The job is not in a state that allows the request (FAILED_PRECONDITION)."""


class ShuttingDown(Exception):
    """The server is shutting down and takes no new jobs (UNAVAILABLE)."""


class TooLarge(InvalidField):
    """A request over a limit the operator set (RESOURCE_EXHAUSTED); str() names the field and the limit."""


class Busy(Exception):
    """Another request is doing the same thing now, e.g. uploading the same file (ABORTED: retry later)."""
