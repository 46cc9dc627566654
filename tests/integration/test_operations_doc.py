"""Every recipe in docs/operations.md, run as written against a live server, so the page cannot rot.

The page's `buf curl` and `curl` blocks are fenced as ```` ```sh recipe:<name> ````. They run in page
order through bash, with `buf` from node_modules/.bin on the PATH and only two things substituted: the
server address for `http://localhost:9123`, and `RUN_ID` / `EVENT_ID` by the ids the latest emit recipe
printed. Each recipe has an expectation below; a recipe without one, an expectation without a recipe,
or a curl command outside a recipe block fails, so the page cannot grow unchecked. The grpcurl block
after each `buf curl` recipe is not run (grpcurl is not installed) but must call the same method with
the same request.

The server is what `ironflow serve` runs (SQLite, in-process stream), with the trip-booking saga's
worker the page tells readers to start.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import ironflow
from examples.saga_and_waits.worker import book_trip, issue_itinerary
from tests.integration.conftest import running_server, server_settings
from tests.integration.workers import running_worker, wait_for_run

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
DOC_URL = "http://localhost:9123"
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
RECIPE = "sh recipe:"
GRPCURL = "sh grpcurl"
PLACEHOLDER = re.compile(r"\b(RUN_ID|EVENT_ID)\b")
CURL_LINE = re.compile(r"^\s*(?:npx\s+)?(?:buf\s+)?curl\b", re.MULTILINE)
# Bounds each recipe, so a hanging stream fails in seconds rather than at the pytest timeout.
RECIPE_TIMEOUT_S = 30.0

Ids = dict[str, str]


# -- the page -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    name: str
    command: str
    grpcurl: str | None  # the block right after it, when that is a grpcurl block


def _recipes() -> list[Recipe]:
    blocks = [(m["info"].strip(), m["body"]) for m in FENCE.finditer(DOC.read_text())]
    recipes = []
    for index, (info, body) in enumerate(blocks):
        if info.startswith(RECIPE):
            following = blocks[index + 1] if index + 1 < len(blocks) else None
            grpcurl = following[1] if following and following[0] == GRPCURL else None
            recipes.append(Recipe(info.removeprefix(RECIPE), body, grpcurl))
        elif info != GRPCURL:
            assert not CURL_LINE.search(body), f"a curl command outside a recipe block:\n{body}"
    return recipes


def _words(command: str) -> list[str]:
    return shlex.split(command.replace("\\\n", " "))


def _flag(words: list[str], *names: str) -> str | None:
    for index, word in enumerate(words[:-1]):
        if word in names:
            return words[index + 1]
    return None


# -- what each recipe must print ----------------------------------------------------------------


def _json(out: str) -> Any:
    return json.loads(out)


def _json_stream(out: str) -> Iterator[Any]:
    """buf curl prints one JSON document per streamed message."""
    decoder = json.JSONDecoder()
    position = 0
    while position < len(out.rstrip()):
        value, end = decoder.raw_decode(out, position)
        yield value
        position = end
        while position < len(out) and out[position].isspace():
            position += 1


def _services(out: str, ids: Ids) -> None:
    assert {
        "ironflow.v1.EventService",
        "ironflow.v1.RegistryService",
        "ironflow.v1.SchedulerService",
        "ironflow.v1.SubscriptionService",
        "ironflow.v1.WorkerService",
        "grpc.health.v1.Health",
    } <= set(out.split())


def _methods(out: str, ids: Ids) -> None:
    assert {
        "ironflow.v1.EventService/Emit",
        "ironflow.v1.SchedulerService/CancelRun",
        "ironflow.v1.SubscriptionService/Subscribe",
        "grpc.health.v1.Health/Check",
    } <= set(out.split())


def _serving(out: str, ids: Ids) -> None:
    assert _json(out) == {"status": "SERVING"}


def _alive(out: str, ids: Ids) -> None:
    assert _json(out) == {"status": "ok"}


def _ready(out: str, ids: Ids) -> None:
    assert _json(out) == {"status": "ready", "checks": {"database": "ok", "stream": "ok"}}


def _functions(out: str, ids: Ids) -> None:
    listed = {function["definition"]["id"]: function for function in _json(out)["functions"]}
    assert set(listed) == {"book-trip", "issue-itinerary"}
    assert listed["book-trip"]["definition"]["triggers"] == [{"event": {"event": "trip.requested"}}]
    assert listed["book-trip"]["status"] == "FUNCTION_STATUS_ACTIVE"


def _emitted(out: str, ids: Ids) -> Ids:
    body = _json(out)
    assert body["eventId"].startswith("evt_")
    (run_id,) = body["runIds"]  # exactly book-trip's run
    return {"EVENT_ID": body["eventId"], "RUN_ID": run_id}


def _event(out: str, ids: Ids) -> None:
    event = _json(out)["event"]
    assert event["id"] == ids["EVENT_ID"]
    assert event["subject"] == "events:trip.requested"
    assert event["data"]["tripId"] == "trip_ops"


def _run_in(status: str, *, reason: str | None = None) -> Callable[[str, Ids], None]:
    def check(out: str, ids: Ids) -> None:
        run = _json(out)["run"]
        assert (run["id"], run["functionId"], run["status"]) == (ids["RUN_ID"], "book-trip", status)
        assert run["eventId"] == ids["EVENT_ID"]
        if reason is not None:
            assert run["error"] == {"code": "CANCELLED", "message": reason}

    return check


def _steps(out: str, ids: Ids) -> None:
    steps = {step["name"]: step for step in _json(out)["steps"]}
    assert {"book-flight", "book-hotel", "request-payment", "payment"} <= set(steps)
    assert steps["book-flight"]["status"] == "STEP_STATUS_COMPLETED"
    assert steps["book-flight"]["output"]["booking"].startswith("FL-")
    assert steps["payment"]["status"] == "STEP_STATUS_WAITING"


def _listed(out: str, ids: Ids) -> None:
    runs = _json(out)["runs"]
    assert ids["RUN_ID"] in [run["id"] for run in runs]
    assert {run["functionId"] for run in runs} == {"book-trip"}


def _lifecycle(out: str, ids: Ids) -> None:
    first, *messages = _json_stream(out)
    assert first["subscribed"]["subscriptionId"]
    subjects = [message["event"]["subject"] for message in messages]
    prefix = f"system.run.{ids['RUN_ID']}."
    assert all(subject.startswith(prefix) for subject in subjects), subjects
    assert subjects[0] == f"{prefix}created"
    assert f"{prefix}step.payment.waiting" in subjects
    assert subjects[-1] == f"{prefix}cancelled"


def _not_found(out: str, ids: Ids) -> None:
    body = _json(out)
    assert body["code"] == "not_found"
    assert "run_missing" in body["message"]


@dataclass(frozen=True)
class Expect:
    check: Callable[[str, Ids], Ids | None]
    exit_code: int = 0
    # Run only once RUN_ID has this status, so what the page says about its output holds.
    after_run_is: str | None = None


# buf curl exits with the RPC's status code shifted left by three; curl --fail(-with-body) with 22.
DEADLINE_EXCEEDED = 4 << 3
HTTP_ERROR = 22

EXPECTATIONS: dict[str, Expect] = {
    "list-services": Expect(_services),
    "list-methods": Expect(_methods),
    "health": Expect(_serving),
    "health-service": Expect(_serving),
    "http-health": Expect(_alive),
    "http-ready": Expect(_ready),
    "list-functions": Expect(_functions),
    "emit": Expect(_emitted),
    "get-event": Expect(_event),
    "get-run": Expect(_run_in("RUN_STATUS_WAITING"), after_run_is="waiting"),
    "get-run-steps": Expect(_steps),
    "list-runs": Expect(_listed),
    "cancel-run": Expect(_run_in("RUN_STATUS_CANCELLED", reason="cancelled by an operator")),
    "subscribe": Expect(_lifecycle, exit_code=DEADLINE_EXCEEDED),
    "curl-emit": Expect(_emitted),
    "curl-get-run": Expect(_run_in("RUN_STATUS_WAITING"), after_run_is="waiting"),
    "curl-get-run-get": Expect(_run_in("RUN_STATUS_WAITING")),
    "curl-cancel-run": Expect(_run_in("RUN_STATUS_CANCELLED", reason="duplicate booking")),
    "curl-not-found": Expect(_not_found, exit_code=HTTP_ERROR),
}


# -- the tests ----------------------------------------------------------------------------------


def test_every_recipe_has_an_expectation_and_the_reverse() -> None:
    names = [recipe.name for recipe in _recipes()]
    assert len(names) == len(set(names)), f"recipe names repeat: {names}"
    assert names == list(EXPECTATIONS), "docs/operations.md and EXPECTATIONS list different recipes"


@pytest.mark.parametrize(
    "recipe", [r for r in _recipes() if r.command.startswith("buf curl")], ids=lambda recipe: recipe.name
)
def test_grpcurl_line_makes_the_same_call(recipe: Recipe) -> None:
    assert recipe.grpcurl, f"{recipe.name}: no ```{GRPCURL} block after it"
    buf, grpcurl = _words(recipe.command), _words(recipe.grpcurl)
    assert grpcurl[:2] == ["grpcurl", "-plaintext"]
    assert "localhost:9123" in grpcurl
    if "--list-services" in buf:
        assert grpcurl[-1] == "list"
        return
    if "--list-methods" in buf:
        assert grpcurl[-2] == "list"
        return
    url = next(word for word in buf if word.startswith(DOC_URL))
    assert grpcurl[-1] == urlsplit(url).path.removeprefix("/")
    assert json.loads(_flag(grpcurl, "-d") or "{}") == json.loads(_flag(buf, "-d", "--data") or "{}")
    timeout = _flag(buf, "--timeout")
    assert _flag(grpcurl, "-max-time") == (timeout.removesuffix("s") if timeout else None)


async def test_every_recipe_runs_green(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(ROOT / "node_modules" / ".bin"), str(Path(sys.executable).parent)])
        + os.pathsep
        + os.environ.get("PATH", ""),
    }
    assert (ROOT / "node_modules" / ".bin" / "buf").exists(), "run `npm ci` in the repository root"
    ids: Ids = {}
    async with (
        running_server(server_settings("embedded", tmp_path)) as server,
        running_worker(server, [book_trip, issue_itinerary], transport="stream"),
        ironflow.Client(server.url) as client,
    ):
        for recipe in _recipes():
            expect = EXPECTATIONS[recipe.name]
            if expect.after_run_is:
                await wait_for_run(client, ids["RUN_ID"], statuses=[expect.after_run_is])
            command = _substitute(recipe, ids).replace(DOC_URL, server.url)
            code, out, err = await _bash(command, env)
            where = f"recipe {recipe.name!r}:\n{command}\nexit {code}\n--- stdout\n{out}\n--- stderr\n{err}"
            assert code == expect.exit_code, where
            try:
                ids.update(expect.check(out, ids) or {})
            except (AssertionError, KeyError, ValueError) as exc:
                raise AssertionError(f"{where}\n--- check failed: {exc!r}") from exc


def _substitute(recipe: Recipe, ids: Ids) -> str:
    def captured(match: re.Match[str]) -> str:
        assert match[1] in ids, f"recipe {recipe.name!r} uses {match[1]} before any recipe printed one"
        return ids[match[1]]

    return PLACEHOLDER.sub(captured, recipe.command)


async def _bash(command: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        command,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=RECIPE_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
