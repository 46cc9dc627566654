"""SubscriptionService over real sockets: gRPC (grpcio), Connect (buf curl) and the unary Ack.

The acceptance case runs here: `system.run.>` with replay 10 shows the last ten run events and then
live ones while a workflow runs, through grpcio and through `buf curl` (gRPC and Connect protocols).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

import ironflow
from ironflow.v1 import subscriptions_pb2 as pb
from ironflow.v1 import subscriptions_pb2_grpc
from tests.conftest import unique_name
from tests.integration.conftest import LiveServer
from tests.integration.workers import running_worker, wait_for_run

BUF = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "buf"
WAIT_S = 15.0
RUN_EVENTS = [
    "created",
    "started",
    "step.reserve.started",
    "step.reserve.completed",
    "step.charge.started",
    "step.charge.completed",
    "completed",
]


@pytest.fixture
async def stub(live_server: LiveServer) -> AsyncIterator[subscriptions_pb2_grpc.SubscriptionServiceStub]:
    async with grpc.aio.insecure_channel(live_server.url.removeprefix("http://")) as channel:
        yield subscriptions_pb2_grpc.SubscriptionServiceStub(channel)


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[ironflow.Client]:
    async with ironflow.Client(live_server.url) as client:
        yield client


async def _read(call: Any, count: int) -> list[Any]:
    out = []
    async with asyncio.timeout(WAIT_S):
        while len(out) < count:
            out.append(await call.read())
    return out


async def _run_a_workflow(live_server: LiveServer, client: ironflow.Client) -> str:
    event = unique_name("order")

    @ironflow.function(id=unique_name("fulfil"), triggers=[ironflow.on_event(event)])
    async def fulfil(ctx: ironflow.Context) -> str:
        await ctx.step.run("reserve", lambda: "r1")
        await ctx.step.run("charge", lambda: "c1")
        return "done"

    async with running_worker(live_server, [fulfil], transport="stream"):
        run_id = (await client.emit(event, {"n": 1})).run_ids[0]
        run = await wait_for_run(client, run_id)
    assert run.status == "completed"
    return run_id


async def test_replay_ten_run_events_then_live_ones_while_a_workflow_runs(
    live_server: LiveServer, client: ironflow.Client, stub: subscriptions_pb2_grpc.SubscriptionServiceStub
) -> None:
    first_run = await _run_a_workflow(live_server, client)  # 7 run events: created ... completed
    second_run = await _run_a_workflow(live_server, client)
    call = stub.Subscribe(pb.SubscribeRequest(patterns=["system.run.>"], replay=10))
    try:
        [subscribed] = await _read(call, 1)
        assert subscribed.WhichOneof("message") == "subscribed"
        replayed = [response.event for response in await _read(call, 10)]
        # The last three of the first run, then all seven of the second.
        assert [m.subject.removeprefix(f"system.run.{first_run}.") for m in replayed[:3]] == [
            "step.charge.started",
            "step.charge.completed",
            "completed",
        ]
        assert [m.subject.removeprefix(f"system.run.{second_run}.") for m in replayed[3:]] == RUN_EVENTS
        sequences = [m.sequence for m in replayed]
        assert sequences == sorted(sequences)
        assert sequences[0] == subscribed.subscribed.start_after_sequence + 1

        live_run = asyncio.create_task(_run_a_workflow(live_server, client))
        live = [response.event for response in await _read(call, 7)]
        run_id = await live_run
        assert [m.subject.removeprefix(f"system.run.{run_id}.") for m in live] == RUN_EVENTS
        assert all(m.delivery_attempt == 1 for m in live)
        assert live[0].sequence > sequences[-1]
    finally:
        call.cancel()


async def test_bad_subscribe_requests_fail_with_invalid_argument(
    stub: subscriptions_pb2_grpc.SubscriptionServiceStub,
) -> None:
    for request, field in [
        (pb.SubscribeRequest(patterns=["events:a.>.b"]), "patterns[0]"),
        (pb.SubscribeRequest(patterns=["topic:a"], filter="data.total >"), "filter"),
        (pb.SubscribeRequest(patterns=["topic:a"], replay=5000), "replay"),
    ]:
        call = stub.Subscribe(request)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _read(call, 1)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith(f"{field}:")


async def test_filter_over_grpc_delivers_only_matching_events(
    client: ironflow.Client, stub: subscriptions_pb2_grpc.SubscriptionServiceStub
) -> None:
    call = stub.Subscribe(pb.SubscribeRequest(patterns=["events:order.*"], filter="data.total > 100"))
    try:
        await _read(call, 1)
        for total in (10, 250, 100, 101.5):
            await client.emit("order.placed", {"total": total})
        got = [response.event for response in await _read(call, 2)]
        assert [dict(m.data)["total"] for m in got] == [250, 101.5]
    finally:
        call.cancel()


async def test_server_stream_with_the_unary_ack_nak_and_term(
    client: ironflow.Client, stub: subscriptions_pb2_grpc.SubscriptionServiceStub
) -> None:
    call = stub.Subscribe(pb.SubscribeRequest(patterns=["topic:acks"], ack=pb.ACK_MODE_MANUAL))
    try:
        [subscribed] = await _read(call, 1)
        subscription_id = subscribed.subscribed.subscription_id
        await client.publish("acks", {"n": 1})
        [first] = await _read(call, 1)
        await stub.Ack(
            pb.AckRequest(
                subscription_id=subscription_id,
                event_id=first.event.event_id,
                action=pb.ACK_ACTION_NAK,
                delay=duration_pb2.Duration(nanos=100_000_000),
            )
        )
        [again] = await _read(call, 1)
        assert (again.event.event_id, again.event.delivery_attempt) == (first.event.event_id, 2)
        await stub.Ack(
            pb.AckRequest(
                subscription_id=subscription_id, event_id=again.event.event_id, action=pb.ACK_ACTION_TERM
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as settled:
            await stub.Ack(pb.AckRequest(subscription_id=subscription_id, event_id=again.event.event_id))
        assert settled.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.Ack(pb.AckRequest(subscription_id="sub_nope", event_id="evt_x"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Ack(pb.AckRequest(event_id="evt_x"))
        assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        call.cancel()


async def test_subscribe_stream_acks_on_the_same_stream_and_reports_failed_acks(
    client: ironflow.Client, stub: subscriptions_pb2_grpc.SubscriptionServiceStub
) -> None:
    call = stub.SubscribeStream()
    try:
        await call.write(
            pb.SubscribeStreamRequest(
                subscribe=pb.SubscribeRequest(patterns=["topic:bidi"], ack=pb.ACK_MODE_MANUAL)
            )
        )
        [subscribed] = await _read(call, 1)
        assert subscribed.subscribed.subscription_id
        await client.publish("bidi", {"n": 1})
        [first] = await _read(call, 1)
        await call.write(
            pb.SubscribeStreamRequest(
                ack=pb.AckCommand(event_id=first.event.event_id, action=pb.ACK_ACTION_NAK)
            )
        )
        [again] = await _read(call, 1)
        assert again.event.delivery_attempt == 2
        await call.write(pb.SubscribeStreamRequest(ack=pb.AckCommand(event_id=again.event.event_id)))
        await call.write(pb.SubscribeStreamRequest(ack=pb.AckCommand(event_id="evt_unknown")))
        [failed] = await _read(call, 1)
        assert failed.WhichOneof("message") == "ack_failed"
        assert (failed.ack_failed.event_id, failed.ack_failed.code) == ("evt_unknown", "NOT_FOUND")
        await client.publish("bidi", {"n": 2})
        [second] = await _read(call, 1)
        assert dict(second.event.data) == {"n": 2}
    finally:
        call.cancel()


async def test_subscribe_stream_must_start_with_subscribe(
    stub: subscriptions_pb2_grpc.SubscriptionServiceStub,
) -> None:
    call = stub.SubscribeStream()
    await call.write(pb.SubscribeStreamRequest(ack=pb.AckCommand(event_id="evt_x")))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _read(call, 1)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_groups_and_topics_over_grpc(
    client: ironflow.Client, stub: subscriptions_pb2_grpc.SubscriptionServiceStub
) -> None:
    created = await stub.CreateConsumerGroup(
        pb.CreateConsumerGroupRequest(group=pb.ConsumerGroup(name="mailers", pattern="topic:mail.*"))
    )
    assert created.group.ack_wait.seconds == 30
    assert created.group.dead_letter_subject == "system.consumer.mailers.dead_letter"
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.CreateConsumerGroup(
            pb.CreateConsumerGroupRequest(group=pb.ConsumerGroup(name="x", pattern="topic:a", start="soon"))
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (bad.value.details() or "").startswith("group.start:")
    await client.publish("mail.send", {"to": "a@example.com"})

    async def counted() -> pb.GetTopicStatsResponse | None:
        try:
            return await stub.GetTopicStats(pb.GetTopicStatsRequest(subject="topic:mail.send"))
        except grpc.aio.AioRpcError:
            return None

    deadline = asyncio.get_running_loop().time() + WAIT_S
    stats = await counted()
    while stats is None and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        stats = await counted()
    assert stats is not None
    assert stats.topic.messages == 1
    listed = await stub.ListConsumerGroups(pb.ListConsumerGroupsRequest())
    assert [g.name for g in listed.groups] == ["mailers"]
    await stub.DeleteConsumerGroup(pb.DeleteConsumerGroupRequest(name="mailers"))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.GetConsumerGroup(pb.GetConsumerGroupRequest(name="mailers"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("protocol", ["grpc", "connect"])
async def test_buf_curl_subscribes_with_replay_and_sees_live_run_events(
    live_server: LiveServer, client: ironflow.Client, protocol: str
) -> None:
    assert BUF.exists(), "the buf CLI is missing: run `npm ci` in the repository root"
    await _run_a_workflow(live_server, client)
    args = ["--protocol", protocol, "--reflect"]
    if protocol == "grpc":
        args.append("--http2-prior-knowledge")
    process = await asyncio.create_subprocess_exec(
        str(BUF),
        "curl",
        *args,
        "--data",
        json.dumps({"patterns": ["system.run.>"], "replay": 10}),
        f"{live_server.url}/ironflow.v1.SubscriptionService/Subscribe",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        # The npm `buf` is a Node launcher running the binary with spawnSync; signal the group, so
        # the binary itself stops too.
        start_new_session=True,
    )
    assert process.stdout is not None
    messages = _JsonReader(process.stdout)
    try:
        async with asyncio.timeout(30):
            # Only one run so far: replay 10 gives its seven events, after `subscribed`.
            head = await messages.take(1 + len(RUN_EVENTS))
            live_run = asyncio.create_task(_run_a_workflow(live_server, client))
            live = await messages.take(len(RUN_EVENTS))
            run_id = await live_run
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        await process.wait()
    assert "subscribed" in head[0]
    assert [m["event"]["subject"].split(".", 3)[-1] for m in head[1:]] == RUN_EVENTS
    assert [m["event"]["subject"].removeprefix(f"system.run.{run_id}.") for m in live] == RUN_EVENTS


class _JsonReader:
    """Whole JSON documents from buf curl's output, which pretty-prints one per message."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream
        self._buffered = ""
        self._decoder = json.JSONDecoder()

    async def take(self, count: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < count:
            text = self._buffered.lstrip()
            try:
                message, end = self._decoder.raw_decode(text)
            except json.JSONDecodeError:
                chunk = await self._stream.read(4096)
                assert chunk, "buf curl ended early"
                self._buffered += chunk.decode()
                continue
            self._buffered = text[end:]
            out.append(message)
        return out
