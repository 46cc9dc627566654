"""`ctx.step`: the durable building blocks of a handler.

Every step has a deterministic id: its name plus an occurrence counter (`charge`, `charge:1`, ...),
prefixed inside `parallel` / `map` branches by the parent step and the branch index (`both/0/fetch`).
A step that completed in an earlier execution returns its stored output instead of running again, so
handler code between steps must be deterministic (same inputs, same sequence of step names).

`run`, `publish` and branches execute here and checkpoint as they finish. `sleep`, `sleep_until`,
`wait_for_event` and `invoke` yield: the execution ends, the scheduler suspends the run, and a later
job replays the handler with the step's outcome memoized.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from google.protobuf import struct_pb2
from opentelemetry.trace import Tracer

from ironflow.v1 import runs_pb2

from ._durations import Duration, to_seconds
from ._errors import InvokeError, NonRetryableError, StepError
from ._models import Event, PublishResult
from ._signals import LeaseLostSignal, SegmentEndSignal, StepFailedSignal, YieldSignal
from ._tracing import get_tracer, step_span
from ._values import error_info, from_value, stored_event, to_value

DEFAULT_INVOKE_TIMEOUT = "30s"
COMPENSATION_KIND = "compensate"
OnError = Literal["fail_fast", "collect"]


class JobChannel(Protocol):
    """Where an execution sends its reports; `wait` blocks until the server accepted (True) or
    refused it as stale (False)."""

    async def report(self, report: runs_pb2.JobReport, *, wait: bool) -> bool: ...


# Publishes a topic message with an idempotency key (the worker's client).
Publisher = Callable[[str, dict[str, Any], str], Awaitable[PublishResult]]


# A step's start is reported only once it has run this long; a quicker step's start goes in the
# same report as its outcome (see `_StartNotice`).
START_NOTICE_DELAY_S = 0.05


class _StartNotice:
    """The RUNNING checkpoint of a step, sent if the step is still running after
    START_NOTICE_DELAY_S. Most steps finish sooner: their start then travels with their outcome,
    one report (one message, one transaction on the server) instead of two, with the start's own
    timestamp. Subscribers still see `step.<id>.started` before `completed`; for a long step it
    comes at most START_NOTICE_DELAY_S late."""

    def __init__(self, channel: JobChannel, report: runs_pb2.JobReport) -> None:
        self._channel = channel
        self._report = report
        self._sent = False
        self._sending: asyncio.Task[bool] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            START_NOTICE_DELAY_S, self._send
        )

    def _send(self) -> None:
        self._timer = None
        self._sent = True
        self._sending = asyncio.ensure_future(self._channel.report(self._report, wait=False))
        # A transport failure surfaces on the outcome's report; do not let asyncio log it twice.
        self._sending.add_done_callback(lambda done: done.cancelled() or done.exception())

    def take(self) -> list[runs_pb2.StepCheckpoint]:
        """Stop the timer; the RUNNING checkpoint if it was not sent (it goes with the outcome)."""
        self.cancel()
        return [] if self._sent else list(self._report.checkpoints)

    def cancel(self) -> None:
        """Stop the timer (the step ended, or was stopped: nothing more is reported for it here)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class StepBudget(Protocol):
    """Push mode: whether there is time left in this request to start another step."""

    def allows_new_step(self) -> bool: ...

    def step_took(self, seconds: float) -> None: ...


class StepArgumentError(NonRetryableError, ValueError):
    """A step was called with an argument that can never work (a negative duration, a naive
    datetime): failing at once beats retrying the same mistake."""


@dataclass(frozen=True)
class InvokeHandle:
    """What `ctx.step.invoke_async` returns: the child run, started and left to its own life."""

    function_id: str
    run_id: str


@dataclass
class _Scope:
    """Step-id namespace: the top level of a handler, or one branch of a parallel step."""

    prefix: str
    seen: dict[str, int] = field(default_factory=dict)
    last_ids: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Compensation:
    step_id: str
    name: str
    call: Callable[[], Any]


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("ironflow_step_scope", default=None)


class Steps:
    """`ctx.step`."""

    def __init__(
        self,
        job: runs_pb2.Job,
        channel: JobChannel,
        publisher: Publisher | None = None,
        budget: StepBudget | None = None,
        *,
        tracer: Tracer | None = None,
    ) -> None:
        self._job = job
        self._tracer = tracer or get_tracer()
        self._channel = channel
        self._publisher = publisher
        self._budget = budget
        self._ran_new_step = False
        self._memo = {step.step_id: step for step in job.steps}
        self._root = _Scope(prefix="")
        self._completed: set[str] = set()
        self._compensations: list[_Compensation] = []

    # -- ids and reports ----------------------------------------------------------------------

    def _scope(self) -> _Scope:
        return _SCOPE.get() or self._root

    def _next_id(self, name: str) -> str:
        if not isinstance(name, str) or not name.strip():
            raise ValueError("step name must be a non-empty string")
        for reserved in (":", "/"):
            if reserved in name:
                raise ValueError(
                    f"step name {name!r} must not contain {reserved!r} "
                    "(':' separates the occurrence counter, '/' the branches of parallel steps)"
                )
        scope = self._scope()
        count = scope.seen.get(name, 0)
        scope.seen[name] = count + 1
        step_id = scope.prefix + (name if count == 0 else f"{name}:{count}")
        scope.last_ids[name] = step_id
        return step_id

    def _report(self, *checkpoints: runs_pb2.StepCheckpoint) -> runs_pb2.JobReport:
        return runs_pb2.JobReport(
            run_id=self._job.run_id,
            lease_token=self._job.lease_token,
            execution_sequence=self._job.execution_sequence,
            checkpoints=list(checkpoints),
        )

    def _check_budget(self) -> None:
        """Push mode: end the request before a new top-level step when its time is nearly spent. The
        first new step always runs, so every request makes progress; branches of a parallel step
        are never cut apart (the budget is checked before the parallel step, as one step)."""
        if self._budget is None or _SCOPE.get() is not None:
            return
        if self._ran_new_step and not self._budget.allows_new_step():
            raise SegmentEndSignal
        self._ran_new_step = True

    def _replayed(self, step_id: str) -> runs_pb2.MemoizedStep | None:
        memo = self._memo.get(step_id)
        if memo is not None and memo.status == runs_pb2.STEP_STATUS_COMPLETED:
            self._completed.add(step_id)
        return memo

    # -- run ----------------------------------------------------------------------------------

    async def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` once per run (sync functions run in a thread) and return its
        JSON output; on replay the stored output is returned without calling `fn`."""
        step_id = self._next_id(name)
        return await self._execute(step_id, name, "run", functools.partial(fn, *args, **kwargs))

    async def _execute(
        self, step_id: str, name: str, kind: str, call: Callable[[], Any], *, scope: _Scope | None = None
    ) -> Any:
        memo = self._replayed(step_id)
        if memo is not None and memo.status == runs_pb2.STEP_STATUS_COMPLETED:
            return from_value(memo.output)
        if memo is not None and memo.status == runs_pb2.STEP_STATUS_FAILED:
            raise StepError(step_id, memo.error.code or "ERROR", memo.error.message)
        retrying = memo is not None and memo.status == runs_pb2.STEP_STATUS_RETRYING
        attempt = memo.attempt + 1 if memo is not None and retrying else 1
        checkpoint = runs_pb2.StepCheckpoint(step_id=step_id, name=name, kind=kind, attempt=attempt)
        if scope is None:
            self._check_budget()  # branches were budgeted as one step by `_branches`

        checkpoint.status = runs_pb2.STEP_STATUS_RUNNING
        checkpoint.recorded_at.GetCurrentTime()
        notice = _StartNotice(self._channel, self._report(checkpoint))
        if scope is not None:
            _SCOPE.set(scope)  # this task is the branch: its inner steps get the branch's ids
        started = time.monotonic()
        try:
            with step_span(self._tracer, self._job.run_id, checkpoint):
                output = to_value(await _call(call), what=f"the output of step {name!r}")
        except Exception as exc:
            checkpoint.status = runs_pb2.STEP_STATUS_FAILED
            checkpoint.error.CopyFrom(error_info(exc))
            raise StepFailedSignal([*notice.take(), checkpoint]) from exc
        finally:
            notice.cancel()
            checkpoint.recorded_at.GetCurrentTime()
            if self._budget is not None:
                self._budget.step_took(time.monotonic() - started)

        checkpoint.status = runs_pb2.STEP_STATUS_COMPLETED
        checkpoint.output.CopyFrom(output)
        if not await self._channel.report(self._report(*notice.take(), checkpoint), wait=True):
            raise LeaseLostSignal(self._job.run_id)
        self._completed.add(step_id)
        # The same value a replay would return (JSON round trip: tuples become lists, and so on).
        return from_value(output)

    # -- steps that yield ---------------------------------------------------------------------

    async def sleep(self, name: str, duration: Duration) -> None:
        """Suspend the run for `duration` (seconds, timedelta or "30s", "10m", "1h", "7d")."""
        step_id = self._next_id(name)
        if self._done(step_id):
            return
        step_yield = runs_pb2.StepYield(step_id=step_id, name=name)
        # Relative: the scheduler adds it to its own clock, so this machine's clock skew does not matter.
        step_yield.sleep.duration.FromTimedelta(_duration(duration, "duration", f"step.sleep({name!r})"))
        raise YieldSignal([step_yield])

    async def sleep_until(self, name: str, when: datetime | str) -> None:
        """Suspend the run until `when` (an aware datetime or an ISO 8601 string with offset); a time
        in the past resumes at once."""
        step_id = self._next_id(name)
        if self._done(step_id):
            return
        step_yield = runs_pb2.StepYield(step_id=step_id, name=name)
        step_yield.sleep.wake_at.FromDatetime(_aware(when, name))
        raise YieldSignal([step_yield])

    async def wait_for_event(
        self,
        name: str,
        *,
        event: str,
        timeout: Duration,  # noqa: ASYNC109 - a durable deadline kept by the server (API.md name)
        match: str | None = None,
    ) -> Event | None:
        """Suspend until an event named `event` arrives for which the CEL `match` holds (`event` is
        this run's trigger event, `async` the candidate); returns it, or None after `timeout`."""
        step_id = self._next_id(name)
        memo = self._replayed(step_id)
        if memo is not None and memo.status == runs_pb2.STEP_STATUS_COMPLETED:
            return stored_event(from_value(memo.output))
        if memo is not None and memo.status == runs_pb2.STEP_STATUS_FAILED:
            raise StepError(step_id, memo.error.code or "ERROR", memo.error.message)
        if not isinstance(event, str) or not event.strip():
            raise StepArgumentError(f"step.wait_for_event({name!r}): event must be an event name")
        if match is not None and not isinstance(match, str):
            raise StepArgumentError(f"step.wait_for_event({name!r}): match must be a CEL expression string")
        request = runs_pb2.YieldWaitForEvent(event=event, match=match or "")
        request.timeout.FromTimedelta(_duration(timeout, "timeout", f"step.wait_for_event({name!r})"))
        raise YieldSignal([runs_pb2.StepYield(step_id=step_id, name=name, wait_for_event=request)])

    async def invoke(
        self,
        function_id: Any,
        data: dict[str, Any] | None = None,
        *,
        timeout: Duration = DEFAULT_INVOKE_TIMEOUT,  # noqa: ASYNC109 - a durable deadline (API.md name)
        name: str | None = None,
    ) -> Any:
        """Run another function as a child run and return its output. Raises InvokeError when the child
        fails, is cancelled or does not end within `timeout` [30s] (it keeps running then)."""
        target = _function_id(function_id)
        step_id = self._next_id(name or target)
        memo = self._replayed(step_id)
        if memo is not None and memo.status == runs_pb2.STEP_STATUS_COMPLETED:
            return from_value(memo.output)
        if memo is not None and memo.status == runs_pb2.STEP_STATUS_FAILED:
            raise _invoke_error(step_id, target, memo)
        request = _invoke_request(target, data, name or target)
        request.timeout.FromTimedelta(_duration(timeout, "timeout", f"step.invoke({target!r})"))
        raise YieldSignal([runs_pb2.StepYield(step_id=step_id, name=name or target, invoke=request)])

    async def invoke_async(
        self, function_id: Any, data: dict[str, Any] | None = None, *, name: str | None = None
    ) -> InvokeHandle:
        """Start another function as a child run and return its handle at once, without waiting."""
        target = _function_id(function_id)
        step_id = self._next_id(name or target)
        memo = self._replayed(step_id)
        if memo is not None and memo.status == runs_pb2.STEP_STATUS_COMPLETED:
            handle = from_value(memo.output) or {}
            return InvokeHandle(
                function_id=handle.get("function_id", target), run_id=handle.get("run_id", "")
            )
        if memo is not None and memo.status == runs_pb2.STEP_STATUS_FAILED:
            raise _invoke_error(step_id, target, memo)
        request = _invoke_request(target, data, name or target)
        request.detached = True
        raise YieldSignal([runs_pb2.StepYield(step_id=step_id, name=name or target, invoke=request)])

    def _done(self, step_id: str) -> bool:
        memo = self._replayed(step_id)
        return memo is not None and memo.status == runs_pb2.STEP_STATUS_COMPLETED

    # -- publish ------------------------------------------------------------------------------

    async def publish(
        self, topic: str, data: dict[str, Any] | None = None, *, name: str | None = None
    ) -> PublishResult:
        """Publish a topic message once per run: a replay returns the first publish's result."""
        step_id = self._next_id(name or topic)
        publisher = self._publisher
        if publisher is None:
            raise RuntimeError("step.publish needs a worker connected to an Ironflow server")
        key = f"{self._job.run_id}/{step_id}"
        # The idempotency key makes a publish that happened just before a crash count as done.
        output = await self._execute(
            step_id,
            name or topic,
            "publish",
            functools.partial(_published, publisher, topic, data or {}, key),
        )
        return PublishResult(event_id=output["event_id"], sequence=output["sequence"], duplicate=False)

    # -- compensation -------------------------------------------------------------------------

    def compensate(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Register `fn(*args, **kwargs)` to undo the completed step `name` (its latest occurrence) if
        the run fails for good; undos run newest first, each as a durable step of its own."""
        step_id = self._scope().last_ids.get(name)
        if step_id is None or step_id not in self._completed:
            raise ValueError(f"step.compensate({name!r}): no completed step of that name in this scope")
        self._compensations.append(_Compensation(step_id, name, functools.partial(fn, *args, **kwargs)))

    async def run_compensations(self) -> None:
        """Run the registered undos, newest first; one failing is recorded and the rest still run."""
        for compensation in reversed(self._compensations):
            step_id = f"{compensation.step_id}/undo"
            name = f"{compensation.name}/undo"
            memo = self._memo.get(step_id)
            if memo is not None and memo.status in (
                runs_pb2.STEP_STATUS_COMPLETED,
                runs_pb2.STEP_STATUS_FAILED,
            ):
                continue
            checkpoint = runs_pb2.StepCheckpoint(
                step_id=step_id, name=name, kind=COMPENSATION_KIND, attempt=1
            )
            checkpoint.status = runs_pb2.STEP_STATUS_RUNNING
            checkpoint.recorded_at.GetCurrentTime()
            await self._channel.report(self._report(checkpoint), wait=False)
            try:
                with step_span(self._tracer, self._job.run_id, checkpoint):
                    output = to_value(await _call(compensation.call), what=f"undo of {name!r}")
                checkpoint.output.CopyFrom(output)
                checkpoint.status = runs_pb2.STEP_STATUS_COMPLETED
            except Exception as exc:  # noqa: BLE001 - recorded; the other undos must still run
                checkpoint.status = runs_pb2.STEP_STATUS_FAILED
                checkpoint.error.CopyFrom(error_info(exc, non_retryable=True))
            checkpoint.recorded_at.GetCurrentTime()
            if not await self._channel.report(self._report(checkpoint), wait=True):
                raise LeaseLostSignal(self._job.run_id)

    @property
    def has_compensations(self) -> bool:
        return bool(self._compensations)

    # -- parallel branches --------------------------------------------------------------------

    async def parallel(
        self,
        name: str,
        calls: Sequence[Callable[[], Any]],
        *,
        concurrency: int | None = None,
        on_error: OnError = "fail_fast",
    ) -> list[Any]:
        """Run `calls` concurrently, each as a durable branch step (`name/0`, `name/1`, ...; steps
        inside a branch are scoped under it), and return their results in input order. `concurrency`
        caps branches in flight. `on_error="fail_fast"` raises the first branch's StepError and stops
        the others; `"collect"` puts each failed branch's StepError in its place in the result list."""
        return await self._branches(name, "parallel", list(calls), concurrency=concurrency, on_error=on_error)

    async def map(
        self,
        name: str,
        items: Sequence[Any],
        fn: Callable[[Any], Any],
        *,
        concurrency: int | None = None,
        on_error: OnError = "fail_fast",
    ) -> list[Any]:
        """`fn(item)` for each item as parallel branches; results in input order."""
        calls: list[Callable[[], Any]] = [functools.partial(fn, item) for item in items]
        return await self._branches(name, "map", calls, concurrency=concurrency, on_error=on_error)

    async def _branches(
        self,
        name: str,
        kind: str,
        calls: list[Callable[[], Any]],
        *,
        concurrency: int | None,
        on_error: OnError,
    ) -> list[Any]:
        parent_id = self._next_id(name)
        for index, call in enumerate(calls):
            if not callable(call):
                raise StepArgumentError(f"step.{kind}({name!r}): item {index} is not callable")
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise StepArgumentError(f"step.{kind}({name!r}): concurrency must be a positive integer or None")
        if on_error not in ("fail_fast", "collect"):
            raise StepArgumentError(f"step.{kind}({name!r}): on_error must be 'fail_fast' or 'collect'")
        if not calls:
            return []
        if any(not self._done(f"{parent_id}/{index}") for index in range(len(calls))):
            self._check_budget()
        limit = asyncio.Semaphore(concurrency or len(calls))

        async def branch(index: int, call: Callable[[], Any]) -> Any:
            step_id = f"{parent_id}/{index}"
            scope = _Scope(prefix=f"{step_id}/")
            memo = self._memo.get(step_id)
            replayed = memo is not None and memo.status in (
                runs_pb2.STEP_STATUS_COMPLETED,
                runs_pb2.STEP_STATUS_FAILED,
            )
            # Replayed branches run nothing, so they take no slot of the concurrency cap.
            async with contextlib.nullcontext() if replayed else limit:
                return await self._execute(step_id, f"{name}/{index}", kind, call, scope=scope)

        return await _gather_branches([branch(index, call) for index, call in enumerate(calls)], on_error)


async def _gather_branches(branches: list[Awaitable[Any]], on_error: OnError) -> list[Any]:
    """Await every branch. Control signals are combined (every failed checkpoint and every yield is
    reported together); a StepError replayed by a branch is raised (fail_fast) or collected."""
    tasks = [asyncio.ensure_future(branch) for branch in branches]
    position = {task: index for index, task in enumerate(tasks)}
    results: list[Any] = [None] * len(tasks)
    failed: list[runs_pb2.StepCheckpoint] = []
    yields: list[runs_pb2.StepYield] = []
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=position.__getitem__):
                error = task.exception()
                if error is None:
                    results[position[task]] = task.result()
                elif isinstance(error, StepFailedSignal):
                    failed.extend(error.checkpoints)
                elif isinstance(error, YieldSignal):
                    yields.extend(error.yields)
                elif isinstance(error, Exception) and on_error == "collect":
                    results[position[task]] = error
                else:
                    raise error  # fail_fast, a lost lease, or a cancellation: stop the other branches
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if failed:
        raise StepFailedSignal(failed)
    if yields:
        raise YieldSignal(yields)
    return results


async def _call(call: Callable[[], Any]) -> Any:
    """Await async callables in this task; run sync ones in a thread (and await what they return,
    e.g. a lambda that returns a coroutine)."""
    target = call.func if isinstance(call, functools.partial) else call
    if inspect.iscoroutinefunction(target):
        return await call()
    result = await asyncio.to_thread(call)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _published(publisher: Publisher, topic: str, data: dict[str, Any], key: str) -> dict[str, Any]:
    result = await publisher(topic, data, key)
    return {"event_id": result.event_id, "sequence": result.sequence}


def _aware(when: datetime | str, name: str) -> datetime:
    if isinstance(when, str):
        try:
            when = datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            raise StepArgumentError(f"step.sleep_until({name!r}): not an ISO 8601 time: {when!r}") from None
    if not isinstance(when, datetime):
        raise StepArgumentError(f"step.sleep_until({name!r}): expected a datetime, got {when!r}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise StepArgumentError(
            f"step.sleep_until({name!r}): {when.isoformat()} has no time zone (use an aware datetime)"
        )
    return when.astimezone(UTC)


def _duration(value: Duration, field: str, what: str) -> timedelta:
    try:
        return timedelta(seconds=to_seconds(value, field=field))
    except ValueError as exc:
        raise StepArgumentError(f"{what}: {exc}") from None


def _function_id(function: Any) -> str:
    target = getattr(function, "id", function)
    if not isinstance(target, str) or not target:
        raise StepArgumentError(f"invoke: expected a function id or an @ironflow.function, got {function!r}")
    return target


def _invoke_request(function_id: str, data: dict[str, Any] | None, name: str) -> runs_pb2.YieldInvoke:
    if data is not None and not isinstance(data, dict):
        raise StepArgumentError(f"step.invoke({name!r}): data must be a JSON object (dict)")
    request = runs_pb2.YieldInvoke(function_id=function_id)
    request.data.CopyFrom(_struct(data or {}, name))
    return request


def _struct(data: dict[str, Any], name: str) -> struct_pb2.Struct:
    value = to_value(data, what=f"the data of step {name!r}")
    return value.struct_value


def _invoke_error(step_id: str, function_id: str, memo: runs_pb2.MemoizedStep) -> InvokeError:
    handle = from_value(memo.output) if memo.HasField("output") else None
    run_id = handle.get("run_id", "") if isinstance(handle, dict) else ""
    return InvokeError(
        step_id,
        function_id=function_id,
        run_id=run_id,
        code=memo.error.code or "ERROR",
        message=memo.error.message,
    )
