"""A local cluster: the distributed topology as processes on this machine, for development and tests.

Every service runs as `ironflow service <name>` replicas on their own ports, against one Postgres and
one Redis, and nginx (from the system) runs `deploy/nginx/ironflow.conf` as the front door, with its
upstreams pointed at the replicas. Services reach each other through a comma-separated list of their
peers' replicas, balanced round-robin by grpcio, as a headless Service or a DNS name with several
addresses would be in a real deployment.

The committed config serves HTTP/1.1 and h2c on one port, which takes nginx 1.25.1 or later. Debian
12's nginx is 1.22: with it, nginx listens twice (h2c on one port, HTTP/1.1 on another, same routes)
and a small relay (`_protocol_switch.py`) takes the front door port and hands each connection to
one or the other by its first bytes, so clients still need one URL.

Blocking on purpose (plain subprocesses and HTTP polls): the same object serves the `ironflow
cluster` command and pytest fixtures, whatever event loop they run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ._topology import FRONT_DOOR_PORT, SERVICES, url_setting

NGINX_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "ironflow.conf"


class ClusterError(RuntimeError):
    pass


@dataclass
class Replica:
    service: str
    index: int
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class LocalCluster:
    workdir: Path
    database_url: str
    stream_url: str
    replicas: int = 2
    front_door_port: int = FRONT_DOOR_PORT
    # Replica i of a service listens on its default port + 10 * i; 0 picks free ports instead.
    fixed_ports: bool = True
    # Extra IRONFLOW_* / OTEL_* settings for every service process.
    env: Mapping[str, str] = field(default_factory=dict)
    nginx: str = "nginx"
    members: dict[str, list[Replica]] = field(default_factory=dict, init=False)
    # nginx's own listeners when it cannot serve both protocols on one port (else both the front door).
    h2c_port: int = field(default=0, init=False)
    http1_port: int = field(default=0, init=False)
    _nginx: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _switch: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """The front door: the one URL clients and workers need."""
        return f"http://127.0.0.1:{self.front_door_port}"

    def replica(self, service: str, index: int) -> Replica:
        return self.members[service][index]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, *, timeout: float = 60.0) -> None:
        if shutil.which(self.nginx) is None:
            raise ClusterError(f"{self.nginx} not found: install it (apt-get install nginx-light)")
        self.workdir = self.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.fixed_ports and self.front_door_port == 0:
            self.front_door_port = _free_port()
        if _nginx_version(self.nginx) >= (1, 25, 1):
            self.h2c_port = self.http1_port = self.front_door_port
        elif self.fixed_ports:
            self.h2c_port, self.http1_port = self.front_door_port + 1, self.front_door_port + 2
        else:
            self.h2c_port, self.http1_port = _free_port(), _free_port()
        self.members = {
            spec.name: [
                Replica(
                    service=spec.name,
                    index=index,
                    port=spec.default_port + 10 * index if self.fixed_ports else _free_port(),
                    log_path=self.workdir / f"{spec.name}-{index}.log",
                )
                for index in range(self.replicas)
            ]
            for spec in SERVICES
        }
        try:
            self._start_nginx()
            for spec in SERVICES:
                for replica in self.members[spec.name]:
                    self._spawn(replica)
            self.wait_ready(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        replicas = [replica for members in self.members.values() for replica in members]
        for replica in replicas:
            if replica.running:
                assert replica.process is not None
                replica.process.send_signal(signal.SIGTERM)
        for replica in replicas:
            if replica.process is not None:
                _reap(replica.process, grace=15.0)
        if self._switch is not None:
            self._switch.terminate()
            _reap(self._switch, grace=5.0)
            self._switch = None
        if self._nginx is not None:
            self._nginx.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            _reap(self._nginx, grace=5.0)
            self._nginx = None

    def kill(self, service: str, index: int) -> None:
        """`kill -9` one replica."""
        replica = self.replica(service, index)
        if replica.process is not None:
            replica.process.kill()
            replica.process.wait()

    def restart(self, service: str, index: int, *, timeout: float = 60.0) -> None:
        """Start a stopped or killed replica again on its port and wait until it is ready."""
        replica = self.replica(service, index)
        if replica.running:
            raise ClusterError(f"{service} replica {index} is still running")
        self._spawn(replica)
        _wait_for(f"{replica.url}/ready", timeout=timeout, process=replica.process, log=replica.log_path)

    def wait_ready(self, *, timeout: float = 60.0) -> None:
        """Until every running replica and the front door say ready."""
        deadline = time.monotonic() + timeout
        for members in self.members.values():
            for replica in members:
                if replica.running:
                    _wait_for(
                        f"{replica.url}/ready",
                        timeout=max(deadline - time.monotonic(), 0.1),
                        process=replica.process,
                        log=replica.log_path,
                    )
        _wait_for(f"{self.url}/ready", timeout=max(deadline - time.monotonic(), 0.1))

    def readiness(self, service: str, index: int) -> tuple[int, dict[str, object]]:
        """A replica's /ready answer: (HTTP status, body)."""
        return _get_json(f"{self.replica(service, index).url}/ready")

    # -- internals --------------------------------------------------------------------------

    def _peer_urls(self, service: str) -> str:
        addresses = ",".join(f"127.0.0.1:{replica.port}" for replica in self.members[service])
        return f"http://{addresses}"

    def _spawn(self, replica: Replica) -> None:
        spec = next(spec for spec in SERVICES if spec.name == replica.service)
        env = {
            **os.environ,
            "IRONFLOW_DATABASE_URL": self.database_url,
            "IRONFLOW_STREAM_URL": self.stream_url,
            "IRONFLOW_HOST": "127.0.0.1",
            "IRONFLOW_PORT": str(replica.port),
            **{url_setting(peer): self._peer_urls(peer) for peer in spec.calls},
            **self.env,
        }
        if "OTEL_SERVICE_NAME" not in self.env:
            env["OTEL_SERVICE_NAME"] = f"ironflow-{replica.service}"
        with replica.log_path.open("ab") as log:
            replica.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                [sys.executable, "-m", "ironflow.services.server", "service", replica.service],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def _start_nginx(self) -> None:
        conf_dir = self.workdir / "nginx"
        for sub in ("client_body", "proxy", "grpc", "fastcgi", "uwsgi", "scgi"):
            (conf_dir / "temp" / sub).mkdir(parents=True, exist_ok=True)
        routes = _rewrite_front_door(
            NGINX_CONF.read_text(),
            h2c_port=self.h2c_port,
            http1_port=self.http1_port,
            upstreams={
                name: [f"127.0.0.1:{replica.port}" for replica in members]
                for name, members in self.members.items()
            },
        )
        (conf_dir / "ironflow.conf").write_text(routes)
        temp = conf_dir / "temp"
        (conf_dir / "nginx.conf").write_text(
            "daemon off;\n"
            "worker_processes 1;\n"
            f"pid {conf_dir / 'nginx.pid'};\n"
            f"error_log {self.workdir / 'nginx-error.log'} warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n"
            "    access_log off;\n"
            f"    client_body_temp_path {temp / 'client_body'};\n"
            f"    proxy_temp_path {temp / 'proxy'};\n"
            f"    fastcgi_temp_path {temp / 'fastcgi'};\n"
            f"    uwsgi_temp_path {temp / 'uwsgi'};\n"
            f"    scgi_temp_path {temp / 'scgi'};\n"
            f"    include {conf_dir / 'ironflow.conf'};\n"
            "}\n"
        )
        command = [self.nginx, "-p", str(conf_dir), "-c", str(conf_dir / "nginx.conf")]
        checked = subprocess.run([*command, "-t"], capture_output=True, check=False)  # noqa: S603
        if checked.returncode != 0:
            raise ClusterError(f"nginx rejected the front door config: {checked.stderr.decode().strip()}")
        with (self.workdir / "nginx.log").open("ab") as log:
            self._nginx = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
            if self.h2c_port != self.front_door_port:
                switch = [sys.executable, "-m", "ironflow.services.server._protocol_switch"]
                ports = [str(self.front_door_port), str(self.h2c_port), str(self.http1_port)]
                self._switch = subprocess.Popen([*switch, *ports], stdout=log, stderr=subprocess.STDOUT)  # noqa: S603


def _rewrite_front_door(
    conf: str, *, h2c_port: int, http1_port: int, upstreams: Mapping[str, list[str]]
) -> str:
    """The committed front door config with local replica addresses and listen ports."""

    def servers(match: re.Match[str]) -> str:
        service = match.group("service").replace("_", "-")
        options = match.group("options")
        lines = "".join(f"    server {address}{options};\n" for address in upstreams[service])
        return f"upstream ironflow_{match.group('service')}{match.group('grpc') or ''} {{\n{lines}"

    rewritten, count = re.subn(
        r"upstream ironflow_(?P<service>\w+?)(?P<grpc>_grpc)? \{\n    server \S+?(?P<options>( [^;\n]+)?);\n",
        servers,
        conf,
    )
    if count != 2 * len(upstreams):  # an HTTP/1.1 and a gRPC upstream per service
        raise ClusterError(f"expected {len(upstreams)} upstreams in {NGINX_CONF}, found {count}")
    if http1_port == h2c_port:
        listen = f"listen 127.0.0.1:{h2c_port};"
    else:  # nginx before 1.25.1: no `http2 on`, one protocol per port
        rewritten = rewritten.replace("    http2 on;\n", "")
        listen = f"listen 127.0.0.1:{h2c_port} http2;\n    listen 127.0.0.1:{http1_port};"
    rewritten, count = re.subn(r"listen \d+;", listen, rewritten)
    if count != 1:
        raise ClusterError(f"expected one listen directive in {NGINX_CONF}, found {count}")
    return rewritten


def _nginx_version(nginx: str) -> tuple[int, ...]:
    answer = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)  # noqa: S603
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", answer.stderr + answer.stdout)
    return tuple(int(part) for part in found.groups()) if found else (0, 0, 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get_json(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - our own http:// URL
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(ValueError):
            return exc.code, json.loads(exc.read() or b"{}")
        return exc.code, {}


def _wait_for(
    url: str, *, timeout: float, process: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None else ""
            raise ClusterError(f"{url}: the process exited with {process.returncode}\n{tail}")
        try:
            status, body = _get_json(url)
        except OSError as exc:
            last = str(exc)
        else:
            if status == 200:
                return
            last = json.dumps(body)
        time.sleep(0.1)
    raise ClusterError(f"{url} not ready after {timeout:.0f}s: {last}")


def _reap(process: subprocess.Popen[bytes], *, grace: float) -> None:
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
