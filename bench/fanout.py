"""Append-to-delivery latency of live subscriptions, fanned out to 1, 100 and 1,000 subscribers.

    python -m bench.fanout [--backend embedded|distributed|both] [--subscribers 1,100,1000]
                           [--messages 200] [--trials 3] [--layer engine|wire|both]

Two layers, each on both backends (embedded: in-process `MemoryStream` + SQLite; distributed: Redis +
Postgres, with a unique stream prefix and schema per run, both deleted afterwards):

* engine: a `SubscriptionEngine` in this process; N auto-ack subscriptions to `topic:bench.>` consume
  concurrently on the same event loop while messages are appended to the firehose at a steady rate
  (`--rate`). Latency: when a subscriber takes the message from its subscription, minus just before
  the append started. Garbage-collector pauses during the measured window are recorded too
  (`--gc-freeze` calls `gc.freeze()` before each trial, to see the collector's share of the tail).
* wire: the real server (`python -m ironflow.services.server serve`) in a subprocess; N gRPC
  `SubscriptionService.Subscribe` streams held by subscriber subprocesses (at most
  `--streams-per-process` each, one HTTP/2 connection per 50 streams since hypercorn allows 100
  concurrent streams per connection), messages sent from this process with `ironflow.Client.publish`
  (`--wire-messages` of them). Latency: when a subscriber process receives the message, minus just
  before the publish call. Both are `time.perf_counter_ns()`, CLOCK_MONOTONIC on Linux, so readings
  from different processes compare. Subscribers live in subprocesses so that receiving does not
  share an event loop (or the GIL) with the publisher. The server serialises every copy itself
  (about 0.1 ms of its CPU each, plus ~7 ms per publish, on the 2-core machine this was written
  on), so the publish rate (`--wire-rate`, 25/s) is lowered until rate x subscribers <=
  `--wire-deliveries` (5,000/s: 5/s for 1,000 subscribers), keeping the server about half busy
  rather than measuring its queue. The server's CPU time per message is reported (Linux).

Before measuring, warm-up messages are sent until every subscriber has received one, so each trial
starts with every subscription live. Writes JSON and a markdown table to bench/results/. Not a test:
numbers vary with the machine (and with whatever else runs on it; the load average is recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench._common import (
    READY_WITHIN_S,
    RESULTS,
    ROOT,
    Storage,
    across,
    clean_up,
    cpu_seconds,
    embedded_server,
    new_storage,
    rank,
    versions,
)
from ironflow import Client
from ironflow.services.core.firehose import FirehoseMessage, firehose_key
from ironflow.services.core.storage import Database, migrate
from ironflow.services.core.streams import Stream, open_stream
from ironflow.services.subscription import (
    SubscribeSpec,
    Subscription,
    SubscriptionEngine,
    SubscriptionSettings,
)
from ironflow.v1 import subscriptions_pb2, subscriptions_pb2_grpc

TOPIC = "bench.fanout"
SUBJECT = f"topic:{TOPIC}"
PATTERN = "topic:bench.>"
# The project's target: fan-out to 1,000 subscribers with p99 <= 50 ms.
TARGET_SUBSCRIBERS = 1000
TARGET_P99_MS = 50.0
# hypercorn accepts 100 concurrent HTTP/2 streams per connection; stay under it.
STREAMS_PER_CHANNEL = 50
# Subscribe calls a subscriber process has in flight before their `subscribed` answers: each costs
# the server a stream read, and a burst of 100 exhausts redis-py's default pool (MaxConnectionsError,
# answered as UNAVAILABLE), which is not what this measures.
HANDSHAKES_PER_PROCESS = 20
WARMUP_INTERVAL_S = 0.05
WARMUP_WITHIN_S = 30.0
DELIVERED_WITHIN_S = 60.0


# -- numbers ---------------------------------------------------------------------------------------


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


@dataclass
class Trial:
    """One trial: per message, the latency (ns) at each subscriber that received it."""

    subscribers: int
    latencies: list[list[int]]
    elapsed_s: float
    publish_ns: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        everything = sorted(ns for per_message in self.latencies for ns in per_message)
        # When the slowest subscriber had it: the fan-out of that message was complete.
        complete = sorted(max(per_message) for per_message in self.latencies if per_message)
        messages = len(self.latencies)
        result: dict[str, Any] = {
            "deliveries": len(everything),
            "missing": self.subscribers * messages - len(everything),
            "rate_per_s": round((messages - 1) / self.elapsed_s, 1) if self.elapsed_s else None,
        }
        if everything:
            result |= {
                "p50_ms": _ms(rank(everything, 0.50)),
                "p90_ms": _ms(rank(everything, 0.90)),
                "p99_ms": _ms(rank(everything, 0.99)),
                "max_ms": _ms(everything[-1]),
                "mean_ms": _ms(statistics.fmean(everything)),
                "last_subscriber_p50_ms": _ms(rank(complete, 0.50)),
                "last_subscriber_p99_ms": _ms(rank(complete, 0.99)),
            }
        if self.publish_ns:
            ordered = sorted(self.publish_ns)
            result["publish_call_p50_ms"] = _ms(rank(ordered, 0.50))
            result["publish_call_p99_ms"] = _ms(rank(ordered, 0.99))
        return result | self.extra


class _GcPauses:
    """Collections of the cyclic garbage collector while active: how many, and the longest pause."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.longest_ns = 0
        self._started = 0

    def __enter__(self) -> _GcPauses:
        gc.callbacks.append(self._observe)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._observe)

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter_ns()
        elif self._started:
            self.collections[info["generation"]] += 1
            self.longest_ns = max(self.longest_ns, time.perf_counter_ns() - self._started)

    def summary(self) -> dict[str, Any]:
        return {"gc_gen2_collections": self.collections[2], "gc_longest_pause_ms": _ms(self.longest_ns)}


# -- backends --------------------------------------------------------------------------------------


async def _paced(
    count: int, rate: float, send: Callable[[int], Awaitable[None]], until: asyncio.Event | None = None
) -> float:
    """Call `send(i)` `count` times, `rate` per second on a fixed schedule (stop early once `until`
    is set). Returns the seconds from the first call to the start of the last."""
    loop = asyncio.get_running_loop()
    start = last = loop.time()
    for index in range(count):
        if until is not None and until.is_set():
            break
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the sender, not waiting for a result
        last = loop.time()
        await send(index)
    return last - start


async def _within(event: asyncio.Event, seconds: float, what: str) -> None:
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        raise TimeoutError(f"timed out after {seconds:g}s waiting for {what}") from None


def _row(
    layer: str, backend: str, count: int, *, rate: float, trials: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return {
        "layer": layer,
        "backend": backend,
        "subscribers": count,
        "target_rate_per_s": rate,
        **extra,
        "trials": trials,
        "across_trials": across(trials),
    }


# -- engine layer ----------------------------------------------------------------------------------


class _Fanout:
    """Consumers of N subscriptions recording, per message index, each one's latency."""

    def __init__(self, count: int, messages: int) -> None:
        self.count = count
        self.messages = messages
        self.sent = [0] * messages
        self.latencies: list[list[int]] = [[] for _ in range(messages)]
        self._warm = 0
        self._finished = 0
        self.all_warm = asyncio.Event()
        self.all_finished = asyncio.Event()

    async def consume(self, subscription: Subscription) -> None:
        warm = False
        got = 0
        async for delivery in subscription:
            now = time.perf_counter_ns()
            index = delivery.data["i"]
            if index < 0:
                if not warm:
                    warm = True
                    self._warm += 1
                    if self._warm == self.count:
                        self.all_warm.set()
                continue
            self.latencies[index].append(now - self.sent[index])
            got += 1
            if got == self.messages:
                break
        self._finished += 1
        if self._finished == self.count:
            self.all_finished.set()


async def _engine_trial(
    engine: SubscriptionEngine,
    stream: Stream,
    firehose: str,
    *,
    count: int,
    messages: int,
    rate: float,
    gc_freeze: bool,
) -> Trial:
    if gc_freeze:
        # What a server could do once started: move everything alive now (modules, engine, earlier
        # trials' leftovers) out of the collector's view, so a full collection has less to scan.
        gc.collect()
        gc.freeze()
    fanout = _Fanout(count, messages)
    subscriptions = [await engine.subscribe(SubscribeSpec(patterns=(PATTERN,))) for _ in range(count)]
    consumers = [asyncio.create_task(fanout.consume(subscription)) for subscription in subscriptions]

    def encoded(index: int) -> dict[str, str]:
        return FirehoseMessage(
            subject=SUBJECT, event_id=f"evt_bench_{index}", timestamp=datetime.now(UTC), data={"i": index}
        ).encode()

    async def warm_up(_: int) -> None:
        await stream.append(firehose, encoded(-1))

    async def send(index: int) -> None:
        fields = encoded(index)
        fanout.sent[index] = time.perf_counter_ns()
        await stream.append(firehose, fields)

    try:
        warm_ups = int(WARMUP_WITHIN_S / WARMUP_INTERVAL_S)
        await _paced(warm_ups, 1 / WARMUP_INTERVAL_S, warm_up, until=fanout.all_warm)
        await _within(fanout.all_warm, 5.0, "every subscription to receive a warm-up message")
        with _GcPauses() as pauses:
            elapsed = await _paced(messages, rate, send)
            with contextlib.suppress(TimeoutError):  # counted as missing deliveries
                await _within(fanout.all_finished, DELIVERED_WITHIN_S, "every delivery")
    finally:
        for consumer in consumers:
            consumer.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        for subscription in subscriptions:
            await engine.unsubscribe(subscription)
    return Trial(count, fanout.latencies, elapsed, extra=pauses.summary())


async def _engine_layer(
    storage: Storage, sizes: Sequence[int], args: argparse.Namespace, step: Callable[[str], None]
) -> list[dict[str, Any]]:
    db = Database.open(storage.database_url, schema=storage.schema)
    stream = open_stream(storage.stream_url)
    rows = []
    try:
        await migrate(db)
        await stream.ping()
        firehose = firehose_key(storage.prefix)
        settings = SubscriptionSettings(
            firehose=firehose, stream_prefix=storage.prefix, buffer_size=args.buffer, count_topics=False
        )
        engine = SubscriptionEngine(db=db, stream=stream, settings=settings)
        await engine.start()
        try:
            for count in sizes:
                trials = []
                for number in range(args.trials):
                    step(f"engine {storage.backend}: {count} subscribers, trial {number + 1}")
                    trial = await _engine_trial(
                        engine,
                        stream,
                        firehose,
                        count=count,
                        messages=args.messages,
                        rate=args.rate,
                        gc_freeze=args.gc_freeze,
                    )
                    trials.append(trial.summary())
                rows.append(_row("engine", storage.backend, count, rate=args.rate, trials=trials))
        finally:
            await engine.stop()
    finally:
        await stream.close()
        await db.close()
    return rows


# -- wire layer: the server and the publisher (this process) ---------------------------------------


class _Subscribers:
    """The subscriber subprocesses (this script with --wire-client) and their line protocol: each
    prints `ready` once its streams are subscribed, `warm` once each has had a warm-up message, then
    one JSON line of latencies; a line on its stdin makes it report what it has at once."""

    def __init__(self, processes: list[asyncio.subprocess.Process]) -> None:
        self.processes = processes

    @classmethod
    async def start(cls, url: str, count: int, messages: int, per_process: int) -> _Subscribers:
        shares = [min(per_process, count - start) for start in range(0, count, per_process)]
        processes = []
        for share in shares:
            command = [
                "-m",
                "bench.fanout",
                "--wire-client",
                url,
                "--subscribers",
                str(share),
                "--messages",
                str(messages),
            ]
            processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    *command,
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=1 << 28,  # the report is one long line
                )
            )
        return cls(processes)

    async def expect(self, word: str) -> None:
        await asyncio.gather(*(self._line(process, word) for process in self.processes))

    @staticmethod
    async def _line(process: asyncio.subprocess.Process, word: str) -> str:
        assert process.stdout is not None
        line = (await process.stdout.readline()).decode().strip()
        if line.startswith(word):
            return line
        if line.startswith("{"):
            errors = json.loads(line)["errors"]
            raise RuntimeError(f"a subscriber process stopped before {word!r}; its streams failed: {errors}")
        raise RuntimeError(f"a subscriber process said {line[:200]!r}, expected {word!r}")

    async def reports(self, within: float) -> list[dict[str, Any]]:
        reading = [asyncio.ensure_future(self._line(process, "{")) for process in self.processes]
        _, late = await asyncio.wait(reading, timeout=within)
        if late:
            for process in self.processes:
                assert process.stdin is not None
                with contextlib.suppress(ConnectionError):
                    process.stdin.write(b"stop\n")
            await asyncio.wait(late, timeout=30)
        return [json.loads(task.result()) for task in reading]

    async def close(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.kill()
            await process.wait()


async def _wire_trial(
    client: Client, server: tuple[str, int], *, count: int, messages: int, rate: float, per_process: int
) -> Trial:
    url, pid = server
    subscribers = await _Subscribers.start(url, count, messages, per_process)
    warm = asyncio.Event()
    publish_ns: list[int] = []

    async def warm_up(_: int) -> None:
        await client.publish(TOPIC, {"i": -1})

    async def send(index: int) -> None:
        started = time.perf_counter_ns()
        await client.publish(TOPIC, {"i": index, "t": started})
        publish_ns.append(time.perf_counter_ns() - started)

    async def all_warm() -> None:
        await subscribers.expect("warm")
        warm.set()

    try:
        async with asyncio.timeout(READY_WITHIN_S):
            await subscribers.expect("ready")
        warming = asyncio.create_task(all_warm())
        await _paced(int(WARMUP_WITHIN_S / WARMUP_INTERVAL_S), 1 / WARMUP_INTERVAL_S, warm_up, until=warm)
        async with asyncio.timeout(5.0):
            await warming
        cpu_before = cpu_seconds(pid)
        elapsed = await _paced(messages, rate, send)
        reports = await subscribers.reports(within=DELIVERED_WITHIN_S)
        cpu_after = cpu_seconds(pid)
    finally:
        await subscribers.close()
    latencies: list[list[int]] = [[] for _ in range(messages)]
    errors: Counter[str] = Counter()
    for report in reports:
        errors.update(report["errors"])
        for index, values in enumerate(report["latencies"]):
            latencies[index].extend(values)
    extra: dict[str, Any] = {"stream_errors": errors.total(), "errors": dict(errors)}
    delivered = sum(len(values) for values in latencies)
    if cpu_before is not None and cpu_after is not None and delivered:
        # Server CPU while publishing and delivering (publishing, storing and counting included),
        # per message published and per copy delivered.
        extra["server_cpu_ms_per_message"] = round((cpu_after - cpu_before) / messages * 1e3, 2)
        extra["server_cpu_us_per_delivery"] = round((cpu_after - cpu_before) / delivered * 1e6, 1)
    return Trial(count, latencies, elapsed, publish_ns, extra)


async def _wire_layer(
    storage: Storage, sizes: Sequence[int], args: argparse.Namespace, tmp: Path, step: Callable[[str], None]
) -> list[dict[str, Any]]:
    rows = []
    log_path = tmp / f"server-{storage.backend}.log"
    buffer = {"IRONFLOW_SUBSCRIBER_BUFFER": str(args.buffer)}
    async with embedded_server(storage, log_path, buffer) as server:
        client = Client(server_url=server[0])
        try:
            for count in sizes:
                rate = _wire_rate(args, count)
                trials = []
                for number in range(args.trials):
                    step(f"wire {storage.backend}: {count} subscribers, trial {number + 1}")
                    trial = await _wire_trial(
                        client,
                        server,
                        count=count,
                        messages=args.wire_messages,
                        rate=rate,
                        per_process=args.streams_per_process,
                    )
                    trials.append(trial.summary())
                rows.append(
                    _row(
                        "wire",
                        storage.backend,
                        count,
                        rate=rate,
                        trials=trials,
                        subscriber_processes=math.ceil(count / args.streams_per_process),
                        streams_per_connection=STREAMS_PER_CHANNEL,
                    )
                )
        finally:
            await client.close()
    return rows


def _wire_rate(args: argparse.Namespace, count: int) -> float:
    return round(min(args.wire_rate, args.wire_deliveries / count), 2)


# -- wire layer: a subscriber process --------------------------------------------------------------


class _WireSubscriber:
    """`count` Subscribe streams in one process, recording, per message index, each one's latency."""

    def __init__(self, url: str, count: int, messages: int) -> None:
        target = url.removeprefix("http://")
        # A local subchannel pool gives each channel its own connection.
        self.channels = [
            grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(math.ceil(count / STREAMS_PER_CHANNEL))
        ]
        self.count = count
        self.messages = messages
        self.latencies: list[list[int]] = [[] for _ in range(messages)]
        self.errors: Counter[str] = Counter()
        self.failed = asyncio.Event()
        self.events = {name: asyncio.Event() for name in ("ready", "warm", "finished")}
        self._tally = dict.fromkeys(self.events, 0)
        self._handshakes = asyncio.Semaphore(HANDSHAKES_PER_PROCESS)

    def _count(self, name: str) -> None:
        self._tally[name] += 1
        if self._tally[name] == self.count:
            self.events[name].set()

    async def stream(self, number: int) -> None:
        stub = subscriptions_pb2_grpc.SubscriptionServiceStub(self.channels[number // STREAMS_PER_CHANNEL])
        await self._handshakes.acquire()
        handshaking = True
        call = stub.Subscribe(subscriptions_pb2.SubscribeRequest(patterns=[PATTERN]))
        warm = False
        got = 0
        try:
            async for response in call:
                now = time.perf_counter_ns()
                if response.HasField("subscribed"):
                    handshaking = False
                    self._handshakes.release()
                    self._count("ready")
                    continue
                fields = response.event.data.fields
                index = int(fields["i"].number_value)
                if index < 0:
                    if not warm:
                        warm = True
                        self._count("warm")
                    continue
                self.latencies[index].append(now - int(fields["t"].number_value))
                got += 1
                if got == self.messages:
                    break
        except grpc.aio.AioRpcError as exc:
            self.errors[f"{exc.code().name}: {exc.details()}"] += 1
            self.failed.set()
        finally:
            if handshaking:
                self._handshakes.release()
            call.cancel()
            self._count("finished")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        stop = asyncio.ensure_future(stdin.readline())
        streams = [asyncio.create_task(self.stream(number)) for number in range(self.count)]
        try:
            for name in ("ready", "warm", "finished"):
                # Until every stream is live, one failure ends the trial; later ones count as missing.
                watching = [self.events[name].wait()] + ([self.failed.wait()] if name != "finished" else [])
                waiting = [asyncio.ensure_future(one) for one in watching]
                await asyncio.wait([*waiting, stop], return_when=asyncio.FIRST_COMPLETED)
                for one in waiting:
                    one.cancel()
                if not self.events[name].is_set():
                    break
                if name != "finished":
                    print(name, flush=True)
        finally:
            stop.cancel()
            for task in streams:
                task.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
            for channel in self.channels:
                await channel.close()
        report = {"errors": dict(self.errors), "latencies": self.latencies}
        print(json.dumps(report, separators=(",", ":")), flush=True)


async def _wire_client(url: str, count: int, messages: int) -> None:
    # Made on the running loop: grpc.aio channels belong to the loop they are created on.
    await _WireSubscriber(url, count, messages).run()


# -- output ----------------------------------------------------------------------------------------


def _cell(stats: dict[str, Any], key: str) -> str:
    if key not in stats:
        return "-"
    numbers = stats[key]
    median, low, high = numbers["median"], numbers["min"], numbers["max"]
    if low == high:
        return f"{median:g}"
    return f"{median:g} ({low:g}-{high:g})"


def _verdict(row: dict[str, Any]) -> str:
    if row["subscribers"] != TARGET_SUBSCRIBERS:
        return ""
    stats = row["across_trials"]
    if "p99_ms" not in stats or stats["missing"]["max"]:
        return "FAIL (missing deliveries)"
    p99 = stats["p99_ms"]["median"]
    return f"{'PASS' if p99 <= TARGET_P99_MS else 'FAIL'} (p99 {p99:g} ms vs <= {TARGET_P99_MS:g})"


def _markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        f"### Subscription fan-out: append-to-delivery latency ({', '.join(settings['backends'])})",
        "",
        f"Engine layer: {settings['messages']} messages per trial at {settings['engine_rate_per_s']:g}/s. "
        f"Wire layer: {settings['wire_messages']} messages per trial. {settings['trials']} trials; each cell "
        "is the median over trials (min-max in brackets). `last sub p99`: when the slowest subscriber had "
        f"the message. Target: {TARGET_SUBSCRIBERS} subscribers, p99 <= {TARGET_P99_MS:g} ms.",
        "",
        "| layer | backend | subscribers | rate/s | p50 ms | p90 ms | p99 ms | max ms | last sub p99 ms "
        "| missing | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        stats = row["across_trials"]
        cells = [
            row["layer"],
            row["backend"],
            row["subscribers"],
            f"{row['target_rate_per_s']:g}",
            *(
                _cell(stats, key)
                for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "last_subscriber_p99_ms")
            ),
            _cell(stats, "missing"),
            _verdict(row),
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    notes = []
    for row in report["rows"]:
        stats = row["across_trials"]
        where = f"{row['layer']} {row['backend']} {row['subscribers']}"
        if row["layer"] == "engine":
            notes.append(
                f"- {where}: longest GC pause {_cell(stats, 'gc_longest_pause_ms')} ms, "
                f"{_cell(stats, 'gc_gen2_collections')} full collections per trial"
            )
        else:
            errors = sum((Counter(trial["errors"]) for trial in row["trials"]), Counter())
            notes.append(
                f"- {where}: {row['subscriber_processes']} subscriber process(es); publish call p50 "
                f"{_cell(stats, 'publish_call_p50_ms')} ms, p99 {_cell(stats, 'publish_call_p99_ms')} ms; "
                f"server CPU {_cell(stats, 'server_cpu_ms_per_message')} ms per message, "
                f"{_cell(stats, 'server_cpu_us_per_delivery')} us per delivery"
                + (f"; streams failed: {dict(errors)}" if errors else "")
            )
    environment = ", ".join(f"{name} {value}" for name, value in report["versions"].items())
    load = report["load_average_1m"]
    lines += ["", *notes, "", f"Versions: {environment}. Load average (1 min) before/after: {load}."]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    backends = ["embedded", "distributed"] if args.backend == "both" else [args.backend]
    layers = ["engine", "wire"] if args.layer == "both" else [args.layer]
    sizes = [int(size) for size in args.subscribers.split(",")]
    load_before = round(os.getloadavg()[0], 2)
    rows: list[dict[str, Any]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        bar = progress.add_task("starting", total=len(backends) * len(layers) * len(sizes) * args.trials)
        steps = 0

        def step(description: str) -> None:
            nonlocal steps
            progress.update(bar, description=description, completed=steps)
            steps += 1

        for backend in backends:
            for layer in layers:
                storage = new_storage(backend, tmp, "bench_fanout")
                try:
                    if layer == "engine":
                        rows += await _engine_layer(storage, sizes, args, step)
                    else:
                        rows += await _wire_layer(storage, sizes, args, tmp, step)
                finally:
                    await clean_up(storage)
        progress.update(bar, description="done", completed=steps)
    return {
        "settings": {
            "backends": backends,
            "layers": layers,
            "subscribers": sizes,
            "messages": args.messages,
            "wire_messages": args.wire_messages,
            "trials": args.trials,
            "engine_rate_per_s": args.rate,
            "wire_rate_per_s": args.wire_rate,
            "wire_max_deliveries_per_s": args.wire_deliveries,
            "streams_per_process": args.streams_per_process,
            "streams_per_connection": STREAMS_PER_CHANNEL,
            "subscriber_buffer": args.buffer,
            "engine_gc_freeze": args.gc_freeze,
            "pattern": PATTERN,
            "subject": SUBJECT,
            "target": {"subscribers": TARGET_SUBSCRIBERS, "p99_ms": TARGET_P99_MS},
        },
        "versions": await versions(distributed="distributed" in backends),
        "load_average_1m": [load_before, round(os.getloadavg()[0], 2)],
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["embedded", "distributed", "both"], default="both")
    parser.add_argument("--layer", choices=["engine", "wire", "both"], default="both")
    parser.add_argument("--subscribers", default="1,100,1000", help="comma-separated subscriber counts")
    parser.add_argument("--messages", type=int, default=200, help="engine layer: messages per trial")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0, help="engine layer: appends per second")
    parser.add_argument("--wire-messages", type=int, default=100, help="wire layer: messages per trial")
    parser.add_argument("--wire-rate", type=float, default=25.0, help="wire layer: publishes per second")
    parser.add_argument(
        "--wire-deliveries",
        type=float,
        default=5000.0,
        help="wire layer: lower the publish rate until rate x subscribers is at most this",
    )
    parser.add_argument(
        "--streams-per-process", type=int, default=500, help="wire layer: per subscriber process"
    )
    parser.add_argument("--buffer", type=int, default=1000, help="messages a subscription may buffer")
    parser.add_argument(
        "--gc-freeze", action="store_true", help="engine layer: gc.freeze() before each trial (diagnostic)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder [bench/results]")
    parser.add_argument("--wire-client", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.wire_client:
        asyncio.run(_wire_client(args.wire_client, int(args.subscribers), args.messages))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / f"tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        report = asyncio.run(run(args, tmp))
    finally:
        for path in tmp.iterdir():
            path.unlink()
        tmp.rmdir()
    name = f"fanout_{args.backend}" + ("_gc_freeze" if args.gc_freeze else "")
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
