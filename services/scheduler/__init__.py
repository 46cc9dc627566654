"""The scheduler service (SchedulerService). Its RPCs answer UNIMPLEMENTED until their issue lands."""

from ._rpc import SchedulerServiceRpc

__all__ = ["SchedulerServiceRpc"]
