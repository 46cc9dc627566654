"""gRPC server reflection served as connect-python ASGI apps, so `buf curl` and grpcurl need no .proto.

Both protocol versions are served. `buf curl` (connect-go's grpcreflect) and newer grpcurl ask
`grpc.reflection.v1` first and fall back to `grpc.reflection.v1alpha` only on UNIMPLEMENTED; older
tools speak only v1alpha.

grpcio-reflection 1.85.1 ships message classes for v1alpha only. v1's reflection.proto is v1alpha's
with the package renamed: same messages, field names and numbers, so the bytes on the wire (and the
Connect JSON) are identical and the v1 endpoint reuses the v1alpha classes. The package name never
appears in a message. For the v1 service to be describable itself (`grpcurl describe`), its file is
rebuilt from v1alpha's under the upstream name "grpc/reflection/v1/reflection.proto" in a private
descriptor pool that lookups fall back to. It is kept out of the default pool on purpose: if a later
grpcio-reflection registered its own v1 file there, two definitions of the same symbols would make
that import fail.

The answers themselves (file lookups with transitive dependencies, extension queries, NOT_FOUND as an
in-band ErrorResponse) come from grpcio-reflection's `BaseReflectionServicer`, which needs no grpc
server: its lookup helpers take the request and return the response message. They are underscored
names, but the dependency is pinned to an exact version in pyproject.toml, and the unit of reuse
is the whole lookup logic rather than a copy of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Final, cast

from connectrpc.compression import Compression
from connectrpc.interceptor import Interceptor
from connectrpc.method import IdempotencyLevel, MethodInfo
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha._base import BaseReflectionServicer

__all__ = [
    "REFLECTION_SERVICE_NAMES",
    "REFLECTION_V1ALPHA_SERVICE_NAME",
    "REFLECTION_V1_SERVICE_NAME",
    "ReflectionService",
    "reflection_asgi_apps",
]

REFLECTION_V1_SERVICE_NAME: Final = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA_SERVICE_NAME: Final = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_SERVICE_NAMES: Final = (REFLECTION_V1_SERVICE_NAME, REFLECTION_V1ALPHA_SERVICE_NAME)

_V1ALPHA_PACKAGE: Final = "grpc.reflection.v1alpha"
_V1_PACKAGE: Final = "grpc.reflection.v1"
_V1_FILE_NAME: Final = "grpc/reflection/v1/reflection.proto"

# gRPC status numbers for the in-band ErrorResponse; these are wire values, fixed by the gRPC spec.
_INVALID_ARGUMENT: Final = 3


def _v1_descriptor_pool() -> descriptor_pool.DescriptorPool:
    """A pool holding only grpc/reflection/v1/reflection.proto, derived from the v1alpha file."""
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    file.name = _V1_FILE_NAME
    file.package = _V1_PACKAGE
    old_prefix, new_prefix = f".{_V1ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."
    for message in file.message_type:
        for field in message.field:
            if field.type_name.startswith(old_prefix):
                field.type_name = new_prefix + field.type_name.removeprefix(old_prefix)
    for service in file.service:
        for method in service.method:
            method.input_type = new_prefix + method.input_type.removeprefix(old_prefix)
            method.output_type = new_prefix + method.output_type.removeprefix(old_prefix)
    # v1alpha is marked deprecated in favour of v1, and its language options name v1alpha packages;
    # use upstream v1's values so generated code from a reflected schema lands in the right place.
    file.options.ClearField("deprecated")
    file.options.java_package = "io.grpc.reflection.v1"
    file.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(file.SerializeToString())
    return pool


# Built once at import: the file is derived from a fixed one, so every ReflectionService can share it.
_V1_POOL: Final = _v1_descriptor_pool()


def _invalid_argument(request: Message, kind: str | None) -> Message:
    return cast(
        "Message",
        reflection_pb2.ServerReflectionResponse(
            error_response=reflection_pb2.ErrorResponse(
                error_code=_INVALID_ARGUMENT, error_message=f"unsupported reflection request {kind!r}"
            ),
            original_request=request,
        ),
    )


def _lookup(
    servicer: Any, pool: descriptor_pool.DescriptorPool, request: Message, kind: str | None
) -> Message:
    """One servicer's answer to a lookup query (`servicer` is a `BaseReflectionServicer` over `pool`)."""
    argument: Any = getattr(request, kind) if kind else None
    match kind:
        case "file_by_filename":
            response = servicer._file_by_filename(request, argument)
        case "file_containing_symbol":
            response = servicer._file_containing_symbol(request, argument)
            if response.HasField("error_response"):
                # The spec allows <package>.<service>.<method> here (grpcurl asks it for `describe`), but
                # the upb pool does not index methods as symbols, so the library misses them.
                file_name = _file_declaring_method(pool, argument)
                if file_name is not None:
                    response = servicer._file_by_filename(request, file_name)
        case "file_containing_extension":
            response = servicer._file_containing_extension(
                request, argument.containing_type, argument.extension_number
            )
        case "all_extension_numbers_of_type":
            response = servicer._all_extension_numbers_of_type(request, argument)
        case _:
            # An empty request, or a query kind added to the proto after this was written.
            response = _invalid_argument(request, kind)
    return cast("Message", response)


def _file_declaring_method(pool: descriptor_pool.DescriptorPool, full_name: str) -> str | None:
    try:
        method = pool.FindMethodByName(full_name)
    except KeyError:
        return None
    return method.containing_service.file.name


class ReflectionService:
    """Answers ServerReflectionInfo streams for both protocol versions.

    `service_names` is what `list_services` reports, sorted; it need not include the reflection or
    health services, though tools show whatever is listed. Descriptors come from `pool`, the
    process-wide default pool unless given, which holds every file whose `_pb2` module was imported,
    so import the generated modules of the listed services before the first request.
    """

    def __init__(
        self, service_names: Iterable[str], *, pool: descriptor_pool.DescriptorPool | None = None
    ) -> None:
        pool = descriptor_pool.Default() if pool is None else pool
        # The first servicer answers list_services; the v1 one only fills lookups the first misses.
        self._servicers: tuple[tuple[Any, descriptor_pool.DescriptorPool], ...] = (
            (BaseReflectionServicer(service_names, pool=pool), pool),
            (BaseReflectionServicer((), pool=_V1_POOL), _V1_POOL),
        )

    def answer(self, request: Message) -> Message:
        """The response to one ServerReflectionRequest; lookup failures are in-band ErrorResponses."""
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            return cast("Message", self._servicers[0][0]._list_services(request))
        response = _invalid_argument(request, kind)
        for servicer, pool in self._servicers:
            response = _lookup(servicer, pool, request, kind)
            if not response.HasField("error_response"):
                break
        return response

    async def server_reflection_info(
        self, requests: AsyncIterator[Message], ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[Message]:
        # Answer each request as it arrives: clients keep one stream open and wait for each answer
        # before asking the next question, so reading ahead would deadlock them.
        async for request in requests:
            yield self.answer(request)


class _ReflectionASGIApplication(ConnectASGIApplication[ReflectionService]):
    def __init__(
        self,
        service: ReflectionService,
        service_name: str,
        *,
        interceptors: Iterable[Interceptor],
        compressions: Iterable[Compression] | None,
    ) -> None:
        self._service_name = service_name
        # Typed by annotation, not by subscripting: MethodInfo is a frozen slots dataclass, and calling
        # MethodInfo[A, B](...) makes typing set __orig_class__ on the instance, which such classes reject.
        method: MethodInfo[Message, Message] = MethodInfo(
            name="ServerReflectionInfo",
            service_name=service_name,
            # v1alpha classes for both versions: identical on the wire (module docstring).
            input=reflection_pb2.ServerReflectionRequest,
            output=reflection_pb2.ServerReflectionResponse,
            idempotency_level=IdempotencyLevel.UNKNOWN,
        )
        super().__init__(
            service=service,
            endpoints=lambda svc: {
                f"/{service_name}/ServerReflectionInfo": Endpoint.bidi_stream(
                    method=method, function=svc.server_reflection_info
                ),
            },
            interceptors=interceptors,
            compressions=compressions,
        )

    @property
    def path(self) -> str:
        """The URL prefix to mount the app at, as generated apps report theirs."""
        return f"/{self._service_name}"


def reflection_asgi_apps(
    service_names: Sequence[str],
    *,
    pool: descriptor_pool.DescriptorPool | None = None,
    interceptors: Iterable[Interceptor] = (),
    compressions: Iterable[Compression] | None = None,
) -> list[ConnectASGIApplication[ReflectionService]]:
    """ASGI apps for `grpc.reflection.v1.ServerReflection` and `grpc.reflection.v1alpha.ServerReflection`.

    `service_names` are the fully-qualified services to advertise (see `ReflectionService`). Each app
    reports its mount prefix as `.path`.
    """
    service = ReflectionService(service_names, pool=pool)
    interceptors = tuple(interceptors)
    return [
        _ReflectionASGIApplication(service, name, interceptors=interceptors, compressions=compressions)
        for name in REFLECTION_SERVICE_NAMES
    ]
