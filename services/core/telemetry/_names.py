"""Every span name and attribute the services record, in one place.

Names are `<verb> <what>` with a low-cardinality what (an event name, a function id), so a backend can
group them; ids go into attributes. RPC spans follow the OpenTelemetry RPC conventions:
`<package.Service>/<Method>` with `rpc.*` attributes. The worker's spans (`run <function id>`,
`step <step id>`) are named in `sdk/ironflow/_tracing.py`, which cannot import the services; the
`ironflow.*` attribute keys there are the same.
"""

from __future__ import annotations

TRACER_NAME = "ironflow.services"

SPAN_EMIT = "emit"  # ingest: `emit <event name>`, around storing, streaming and triggering
SPAN_CREATE_RUN = "create_run"  # scheduler: `create_run <function id>`; the run keeps its context
SPAN_DISPATCH = "dispatch"  # worker-gateway: `dispatch <function id>`, a job handed to a worker

ATTR_EVENT_ID = "ironflow.event.id"
ATTR_EVENT_NAME = "ironflow.event.name"
ATTR_EVENT_DUPLICATE = "ironflow.event.duplicate"
ATTR_RUN_ID = "ironflow.run.id"
ATTR_RUN_CREATED = "ironflow.run.created"  # false: the (event, function) run already existed
ATTR_RUN_ATTEMPT = "ironflow.run.attempt"
ATTR_FUNCTION_ID = "ironflow.function.id"
ATTR_WORKER_ID = "ironflow.worker.id"
ATTR_WORKER_TRANSPORT = "ironflow.worker.transport"  # stream or poll

RPC_SYSTEM = "rpc.system"  # grpc, or connect_rpc for Connect's own protocol
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"
RPC_CONNECT_ERROR_CODE = "rpc.connect_rpc.error_code"

# Background loops (job leasing, lease renewal, report batches, watermark polls) call these all the
# time; a root trace for each would bury the traces that matter. They are traced on the server only
# when the caller sent a trace context (and a client call opens a span only inside a trace).
QUIET_PROCEDURES = frozenset(
    {
        "ironflow.v1.SchedulerService/LeaseJobs",
        "ironflow.v1.SchedulerService/RenewLeases",
        "ironflow.v1.SchedulerService/ReleaseJobs",
        "ironflow.v1.SchedulerService/ReportJob",
        "ironflow.v1.EventService/GetTriggerWatermark",
        "ironflow.v1.WorkerService/Connect",
        "ironflow.v1.WorkerService/Poll",
        "ironflow.v1.WorkerService/Heartbeat",
        "ironflow.v1.WorkerService/Report",
    }
)
