"""The worker_gateway service (WorkerService). Its RPCs answer UNIMPLEMENTED until their issue lands."""

from ._rpc import WorkerServiceRpc

__all__ = ["WorkerServiceRpc"]
