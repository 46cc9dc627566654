"""The distributed shape in one place: which services exist, their ports, routes and dependencies.

`ironflow service <name>`, the local cluster runner, the nginx front door, compose.yaml and the
Kubernetes manifests all follow this table; a test holds the deployment files to it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The front door listens where `ironflow serve` does, so clients use the same URL in both shapes.
FRONT_DOOR_PORT = 9123
# gRPC health service name that reports liveness (the process answers); "" reports readiness.
LIVENESS_HEALTH_NAME = "liveness"


@dataclass(frozen=True)
class ServiceSpec:
    # The name `ironflow service` takes, and the host name in compose and Kubernetes.
    name: str
    # The proto service it serves, routed by the front door at `/<proto_service>/`.
    proto_service: str
    default_port: int
    # Other services it calls over gRPC (each has an `IRONFLOW_<NAME>_URL` setting).
    calls: tuple[str, ...]
    # Plain-HTTP paths it owns besides its RPCs (REST prefixes and the WebSocket).
    http_routes: tuple[str, ...] = ()
    # Whether replicas share the load (all of them do; the scheduler and gateway also autoscale).
    autoscaled: bool = False


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        name="ingest",
        proto_service="ironflow.v1.EventService",
        default_port=9201,
        calls=("scheduler",),
        http_routes=("/api/v1/events",),
    ),
    ServiceSpec(
        name="registry",
        proto_service="ironflow.v1.RegistryService",
        default_port=9202,
        calls=(),
    ),
    ServiceSpec(
        name="scheduler",
        proto_service="ironflow.v1.SchedulerService",
        default_port=9203,
        calls=("registry", "ingest"),
        http_routes=("/api/v1/runs",),
        autoscaled=True,
    ),
    ServiceSpec(
        name="worker-gateway",
        proto_service="ironflow.v1.WorkerService",
        default_port=9204,
        calls=("scheduler", "registry"),
        autoscaled=True,
    ),
    ServiceSpec(
        name="subscription",
        proto_service="ironflow.v1.SubscriptionService",
        default_port=9205,
        calls=(),
        http_routes=("/ws",),
    ),
)

SERVICE_NAMES = tuple(spec.name for spec in SERVICES)


def service_spec(name: str) -> ServiceSpec:
    for spec in SERVICES:
        if spec.name == name:
            return spec
    raise KeyError(name)


def url_setting(name: str) -> str:
    """The environment variable that tells a service where `name` is (`IRONFLOW_SCHEDULER_URL`)."""
    return f"IRONFLOW_{name.upper().replace('-', '_')}_URL"
