"""The worker-gateway service (WorkerService): job delivery to pull workers, over a stream or long-poll."""

from ._gateway import GatewaySettings, RegisterFunctions, SchedulerApi, WorkerGateway
from ._remote import RemoteJobScheduler, remote_register
from ._rpc import WorkerServiceRpc

__all__ = [
    "GatewaySettings",
    "RegisterFunctions",
    "RemoteJobScheduler",
    "SchedulerApi",
    "WorkerGateway",
    "WorkerServiceRpc",
    "remote_register",
]
