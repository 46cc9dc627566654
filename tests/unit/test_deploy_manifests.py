"""compose.yaml and deploy/k8s follow the service topology (services/server/_topology.py).

Everything expected here is derived from `SERVICES`, so adding a service, a port or a call there fails
these tests until both deployment shapes follow. Kubernetes objects of the core API groups are also
validated against the Kubernetes JSON schemas bundled with kubernetes-validate (offline). The nginx
front door config is tested elsewhere.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from ironflow.services.server._topology import (
    FRONT_DOOR_PORT,
    LIVENESS_HEALTH_NAME,
    SERVICE_NAMES,
    SERVICES,
    ServiceSpec,
    service_spec,
    url_setting,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes the manifests must apply to (gRPC probes are GA since 1.27).
K8S_VERSION = "1.30"
# Kinds whose schemas ship with Kubernetes; Gateway API kinds are CRDs and get structural checks only.
CRD_KINDS = {"Gateway", "HTTPRoute"}
STORAGE_URLS = {"IRONFLOW_DATABASE_URL", "IRONFLOW_STREAM_URL"}

Obj = dict[str, Any]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@functools.cache
def compose_services() -> dict[str, Obj]:
    services: dict[str, Obj] = load_yaml(ROOT / "compose.yaml")["services"]
    return services


@functools.cache
def k8s_objects() -> tuple[Obj, ...]:
    objects: list[Obj] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return tuple(objects)


def k8s(kind: str, name: str | None = None) -> list[Obj]:
    return [
        obj
        for obj in k8s_objects()
        if obj["kind"] == kind and (name is None or obj["metadata"]["name"] == name)
    ]


def k8s_one(kind: str, name: str) -> Obj:
    [obj] = k8s(kind, name)
    return obj


def deployment_selected_by(service: Obj) -> str:
    """The one Deployment whose pods a Service's selector picks."""
    selector = service["spec"]["selector"].items()
    names: list[str] = [
        deployment["metadata"]["name"]
        for deployment in k8s("Deployment")
        if selector <= deployment["spec"]["template"]["metadata"]["labels"].items()
    ]
    [name] = names
    return name


def service_port(service: Obj, port: int) -> Obj:
    entries: list[Obj] = [entry for entry in service["spec"]["ports"] if entry["port"] == port]
    [entry] = entries
    return entry


def url_target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.scheme == "http", url
    assert parts.hostname, url
    assert parts.port, url
    return parts.hostname, parts.port


by_name = pytest.mark.parametrize("spec", SERVICES, ids=SERVICE_NAMES)


# ---------------------------------------------------------------------------------------------- compose


@by_name
def test_compose_runs_each_service(spec: ServiceSpec) -> None:
    service = compose_services()[spec.name]
    assert service["command"] == ["service", spec.name]
    assert service["build"] == "."
    assert service["image"] == compose_services()[SERVICES[0].name]["image"], "one image for all"
    assert str(spec.default_port) in service["expose"]
    assert "ports" not in service, "only the front door is published"
    if spec.autoscaled:
        assert service["deploy"]["replicas"] >= 2

    env = service["environment"]
    assert env["IRONFLOW_HOST"] == "0.0.0.0"
    assert env["IRONFLOW_PORT"] == str(spec.default_port)
    assert env["IRONFLOW_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert urlsplit(env["IRONFLOW_DATABASE_URL"]).hostname == "postgres"
    assert urlsplit(env["IRONFLOW_STREAM_URL"]).hostname == "redis"
    assert env["OTEL_SERVICE_NAME"] == f"ironflow-{spec.name}"
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert url_target(env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == ("otel-collector", 4317)
    peer_urls = {key for key in env if key.endswith("_URL")} - STORAGE_URLS
    assert peer_urls == {url_setting(dep) for dep in spec.calls}
    for dep in spec.calls:
        assert env[url_setting(dep)] == f"http://{dep}:{service_spec(dep).default_port}"

    test = service["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    assert f"http://127.0.0.1:{spec.default_port}/ready" in " ".join(test)


@by_name
def test_compose_waits_for_storage_and_called_services(spec: ServiceSpec) -> None:
    depends_on: dict[str, Obj] = compose_services()[spec.name]["depends_on"]
    assert depends_on["postgres"] == {"condition": "service_healthy"}
    assert depends_on["redis"] == {"condition": "service_healthy"}
    assert set(depends_on) <= {"postgres", "redis", *spec.calls}
    for dep in spec.calls:
        if spec.name in service_spec(dep).calls:
            # Two services that call each other cannot both wait for the other to be healthy: at most
            # one waits, and only for the other to start (test_compose_comes_up checks it settles).
            assert depends_on.get(dep, {"condition": "service_started"}) == {"condition": "service_started"}
        else:
            assert depends_on[dep] == {"condition": "service_healthy"}


def test_compose_comes_up() -> None:
    """Starting everything settles with every container up and every Ironflow service healthy.

    A container starts once its depends_on conditions hold (so a dependency cycle never starts). An
    Ironflow service turns healthy once the services it calls have started: compose DNS resolves any
    running container, and readiness asks a peer only whether it is alive.
    """
    services = compose_services()
    started: set[str] = set()
    healthy: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, service in services.items():
            conditions = service.get("depends_on", {})
            if name not in started and all(
                dep in (healthy if cond["condition"] == "service_healthy" else started)
                for dep, cond in conditions.items()
            ):
                started.add(name)
                changed = True
            calls = service_spec(name).calls if name in SERVICE_NAMES else ()
            if name in started and name not in healthy and set(calls) <= started:
                healthy.add(name)
                changed = True
    assert healthy == set(services)


def test_compose_storage() -> None:
    services = compose_services()
    postgres, redis = services["postgres"], services["redis"]
    assert postgres["image"].startswith("postgres:16")
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in load_yaml(ROOT / "compose.yaml")["volumes"], "postgres data is in a named volume"
    assert redis["image"].startswith("redis:7")
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_compose_front_door() -> None:
    front_door = compose_services()["front-door"]
    assert front_door["image"].startswith("nginx:")
    assert front_door["ports"] == [f"{FRONT_DOOR_PORT}:{FRONT_DOOR_PORT}"]
    assert front_door["volumes"] == ["./deploy/nginx/ironflow.conf:/etc/nginx/conf.d/default.conf:ro"]
    assert front_door["depends_on"] == {name: {"condition": "service_healthy"} for name in SERVICE_NAMES}


def test_compose_otel_collector() -> None:
    collector = compose_services()["otel-collector"]
    assert collector["image"].startswith("otel/opentelemetry-collector-contrib:")
    [mount] = collector["volumes"]
    source, target, _ = mount.split(":")
    assert source == "./deploy/otel-collector.yaml"
    assert collector["command"] == [f"--config={target}"]

    config = load_yaml(ROOT / source)
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    traces = config["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"]
    assert "batch" in traces["processors"]
    assert set(traces["processors"]) <= set(config["processors"])
    assert traces["exporters"] == ["debug"]
    assert "debug" in config["exporters"]


# ------------------------------------------------------------------------------------------- kubernetes


@pytest.mark.parametrize(
    "obj", k8s_objects(), ids=[f"{o['kind']}/{o['metadata']['name']}" for o in k8s_objects()]
)
def test_k8s_object_matches_its_schema(obj: Obj) -> None:
    assert obj["metadata"].get("namespace", "ironflow") == "ironflow"
    if obj["kind"] in CRD_KINDS:
        assert obj["apiVersion"] == "gateway.networking.k8s.io/v1"
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@by_name
def test_k8s_deployment_and_service(spec: ServiceSpec) -> None:
    deployment = k8s_one("Deployment", spec.name)
    service = k8s_one("Service", spec.name)
    assert deployment_selected_by(service) == spec.name
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {
            "name": "grpc",
            "port": spec.default_port,
            "targetPort": spec.default_port,
            "protocol": "TCP",
            "appProtocol": "kubernetes.io/h2c",
        }
    ]
    # An autoscaled Deployment leaves the replica count to its HPA.
    assert deployment["spec"].get("replicas") == (None if spec.autoscaled else 2)

    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["service", spec.name]
    assert [port["containerPort"] for port in container["ports"]] == [spec.default_port]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env == {"IRONFLOW_PORT": str(spec.default_port), "OTEL_SERVICE_NAME": f"ironflow-{spec.name}"}
    sources = {(kind, ref["name"]) for item in container["envFrom"] for kind, ref in item.items()}
    assert ("configMapRef", "ironflow-config") in sources
    secret_keys = {
        key for kind, name in sources if kind == "secretRef" for key in k8s_one("Secret", name)["stringData"]
    }
    assert secret_keys >= STORAGE_URLS
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}

    assert container["readinessProbe"]["grpc"] == {"port": spec.default_port}  # service "": readiness
    assert container["livenessProbe"]["grpc"] == {"port": spec.default_port, "service": LIVENESS_HEALTH_NAME}


def test_signing_key_goes_to_the_scheduler_only() -> None:
    for spec in SERVICES:
        env = compose_services()[spec.name]["environment"]
        assert ("IRONFLOW_SIGNING_KEY" in env) == (spec.name == "scheduler"), spec.name
    [secret] = [s for s in k8s("Secret") if "IRONFLOW_SIGNING_KEY" in s["stringData"]]
    for spec in SERVICES:
        [container] = k8s_one("Deployment", spec.name)["spec"]["template"]["spec"]["containers"]
        mounted = {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
        assert mounted == (spec.name == "scheduler"), spec.name


def test_k8s_config_points_at_services() -> None:
    data = k8s_one("ConfigMap", "ironflow-config")["data"]
    called = {dep for spec in SERVICES for dep in spec.calls}
    assert {key for key in data if key.endswith("_URL")} == {url_setting(dep) for dep in called}
    for dep in called:
        host, port = url_target(data[url_setting(dep)])
        service = k8s_one("Service", host)
        assert deployment_selected_by(service) == dep
        assert service_port(service, port)["targetPort"] == service_spec(dep).default_port == port
        # Headless: DNS returns every pod, so grpcio's round-robin spreads calls over them.
        assert service["spec"].get("clusterIP") == "None", host
    assert data["IRONFLOW_HOST"] == "0.0.0.0"
    assert data["OTEL_TRACES_EXPORTER"] == "otlp"
    assert data["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"


def test_k8s_cold_start_gets_every_service_ready() -> None:
    """From no pod ready, readiness spreads to every service (services that call each other included).

    A pod is ready once every service it calls is reachable through the Service its URL names, and a
    Service sends only to ready pods unless it publishes not-ready addresses (pods answer liveness as
    soon as they listen, which is all a readiness check asks of a peer).
    """
    data = k8s_one("ConfigMap", "ironflow-config")["data"]

    def reachable(dep: str, ready: set[str]) -> bool:
        host, _ = url_target(data[url_setting(dep)])
        return dep in ready or bool(k8s_one("Service", host)["spec"].get("publishNotReadyAddresses"))

    ready: set[str] = set()
    changed = True
    while changed:
        changed = False
        for spec in SERVICES:
            if spec.name not in ready and all(reachable(dep, ready) for dep in spec.calls):
                ready.add(spec.name)
                changed = True
    assert ready == set(SERVICE_NAMES)


def test_k8s_autoscaling() -> None:
    hpas = k8s("HorizontalPodAutoscaler")
    targets = {hpa["spec"]["scaleTargetRef"]["name"] for hpa in hpas}
    assert targets == {spec.name for spec in SERVICES if spec.autoscaled}
    assert len(hpas) == len(targets)
    for hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
        assert k8s("Deployment", ref["name"])
        assert hpa["spec"]["minReplicas"] >= 2
        [metric] = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"]["type"] == "Utilization"


def test_k8s_front_door_routes() -> None:
    [gateway] = k8s("Gateway")
    [listener] = gateway["spec"]["listeners"]
    assert (listener["protocol"], listener["port"]) == ("HTTP", FRONT_DOOR_PORT)
    [route] = k8s("HTTPRoute")
    assert route["spec"]["parentRefs"] == [
        {"name": gateway["metadata"]["name"], "sectionName": listener["name"]}
    ]

    routed: dict[str, tuple[str, int]] = {}
    for rule in route["spec"]["rules"]:
        [backend] = rule["backendRefs"]
        for match in rule["matches"]:
            assert match["path"]["type"] == "PathPrefix"
            assert match["path"]["value"] not in routed, "each prefix is routed once"
            routed[match["path"]["value"]] = (backend["name"], backend["port"])

    expected: dict[str, str] = {}
    for spec in SERVICES:
        expected[f"/{spec.proto_service}/"] = spec.name
        expected.update(dict.fromkeys(spec.http_routes, spec.name))
    assert set(routed) == set(expected)
    for prefix, (backend, port) in routed.items():
        service = k8s_one("Service", backend)
        assert deployment_selected_by(service) == expected[prefix], prefix
        assert port == service_spec(expected[prefix]).default_port, prefix
        assert service_port(service, port)["targetPort"] == port, prefix
        if prefix.startswith("/ironflow.v1."):
            # gRPC needs HTTP/2 to the backend; the gateway learns it from the port's appProtocol.
            assert service_port(service, port)["appProtocol"] == "kubernetes.io/h2c", prefix


def test_kustomization_lists_every_file() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    files = sorted(path.name for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    assert len(kustomization["resources"]) == len(files)
    [namespace] = k8s("Namespace")
    assert kustomization["namespace"] == namespace["metadata"]["name"]
    images = {obj["spec"]["template"]["spec"]["containers"][0]["image"] for obj in k8s("Deployment")}
    assert images == {image["name"] for image in kustomization["images"]}
