"""The HTTP/2 send scheduler that replaces hypercorn's priority tree: streams with data are served in
turn, blocked and removed ones are skipped, and the errors hypercorn relies on are kept."""

from __future__ import annotations

import itertools

import pytest
from priority.priority import DeadlockError, DuplicateStreamError, MissingStreamError

from ironflow.services.core.hypercorn_scheduling import RoundRobinScheduler


def test_active_streams_take_turns() -> None:
    scheduler = RoundRobinScheduler()
    for stream_id in (1, 3, 5):
        scheduler.insert_stream(stream_id)
    assert list(itertools.islice(scheduler, 7)) == [1, 3, 5, 1, 3, 5, 1]


def test_blocked_and_removed_streams_are_skipped_until_unblocked() -> None:
    scheduler = RoundRobinScheduler()
    for stream_id in (1, 3, 5):
        scheduler.insert_stream(stream_id)
    scheduler.block(3)
    scheduler.remove_stream(5)
    assert list(itertools.islice(scheduler, 3)) == [1, 1, 1]
    scheduler.unblock(3)
    scheduler.unblock(3)  # twice: still one turn per round
    assert list(itertools.islice(scheduler, 4)) == [1, 3, 1, 3]


def test_no_stream_with_data_is_a_deadlock_error() -> None:
    scheduler = RoundRobinScheduler()
    with pytest.raises(DeadlockError):
        next(scheduler)
    scheduler.insert_stream(1)
    scheduler.block(1)
    with pytest.raises(DeadlockError):
        next(scheduler)


def test_unknown_and_duplicate_streams_raise_what_the_priority_tree_raised() -> None:
    scheduler = RoundRobinScheduler()
    scheduler.insert_stream(1)
    with pytest.raises(DuplicateStreamError):
        scheduler.insert_stream(1)
    for call in (scheduler.block, scheduler.unblock, scheduler.remove_stream, scheduler.reprioritize):
        with pytest.raises(MissingStreamError):
            call(7)
