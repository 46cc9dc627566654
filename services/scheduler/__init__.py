"""The scheduler service (SchedulerService): triggering, runs and steps, leases, retries, timeouts."""

from ._catalog import CompiledFunction, FunctionCatalog, FunctionSource
from ._cron import CRON_EVENT_PREFIX, CronSettings
from ._options import RunOptions
from ._push import PushSettings
from ._remote import remote_functions, remote_watermark
from ._rest import RunsRestApp
from ._rpc import SchedulerServiceRpc, wait_timeout
from ._scheduler import EventWatermark, Scheduler, SchedulerSettings
from ._system_events import step_token
from ._tickets import TicketSettings

__all__ = [
    "CRON_EVENT_PREFIX",
    "CompiledFunction",
    "CronSettings",
    "EventWatermark",
    "FunctionCatalog",
    "FunctionSource",
    "PushSettings",
    "RunOptions",
    "RunsRestApp",
    "Scheduler",
    "SchedulerServiceRpc",
    "SchedulerSettings",
    "TicketSettings",
    "remote_functions",
    "remote_watermark",
    "step_token",
    "wait_timeout",
]
