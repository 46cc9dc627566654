"""The one error type services raise, with stable codes, and its mapping to wire statuses.

Every layer raises `ServiceError` (or lets an unexpected exception escape); the RPC and REST edges
translate it here and nowhere else. Unexpected exceptions never leak `str(exc)`: clients see INTERNAL
with a trace id that operators can find in the server log.
"""

from __future__ import annotations

import enum
from http import HTTPStatus

from connectrpc.code import Code


class ErrorCode(enum.StrEnum):
    """Stable codes, named as gRPC names its statuses."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"


class ServiceError(Exception):
    """A failure with a stable code and a message fit for the caller."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ServiceError({self.code.value}, {self.message!r})"


def invalid_argument(field: str, problem: str) -> ServiceError:
    """INVALID_ARGUMENT whose message always names the offending field first."""
    return ServiceError(ErrorCode.INVALID_ARGUMENT, f"{field}: {problem}")


def not_found(what: str, ident: str) -> ServiceError:
    return ServiceError(ErrorCode.NOT_FOUND, f"{what} {ident!r} not found")


_CONNECT_CODES: dict[ErrorCode, Code] = {
    ErrorCode.INVALID_ARGUMENT: Code.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: Code.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: Code.ALREADY_EXISTS,
    ErrorCode.FAILED_PRECONDITION: Code.FAILED_PRECONDITION,
    ErrorCode.ABORTED: Code.ABORTED,
    ErrorCode.RESOURCE_EXHAUSTED: Code.RESOURCE_EXHAUSTED,
    ErrorCode.UNAUTHENTICATED: Code.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: Code.PERMISSION_DENIED,
    ErrorCode.DEADLINE_EXCEEDED: Code.DEADLINE_EXCEEDED,
    ErrorCode.UNAVAILABLE: Code.UNAVAILABLE,
    ErrorCode.UNIMPLEMENTED: Code.UNIMPLEMENTED,
    ErrorCode.CANCELLED: Code.CANCELED,
    ErrorCode.INTERNAL: Code.INTERNAL,
}

_HTTP_STATUSES: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    ErrorCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: HTTPStatus.CONFLICT,
    ErrorCode.FAILED_PRECONDITION: HTTPStatus.PRECONDITION_FAILED,
    ErrorCode.ABORTED: HTTPStatus.CONFLICT,
    ErrorCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    ErrorCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    ErrorCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    ErrorCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    ErrorCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    ErrorCode.CANCELLED: 499,  # the de-facto "client closed request" status, as Connect uses
    ErrorCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
}


def connect_code(code: ErrorCode) -> Code:
    return _CONNECT_CODES[code]


def http_status(code: ErrorCode) -> int:
    return _HTTP_STATUSES[code]
