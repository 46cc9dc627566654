"""The SDK's one error type. Every failure a client call can meet is an `IronflowError` with a code."""

from __future__ import annotations


class IronflowError(Exception):
    """A failed call. `code` is a stable string such as "INVALID_ARGUMENT", "NOT_FOUND", "UNAVAILABLE"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
