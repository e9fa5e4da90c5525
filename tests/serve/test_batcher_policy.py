"""The dynamic batcher's policy on a scripted clock: which batches form, and when, for requests arriving at chosen
times, each expected batch worked out by hand from Triton's batcher semantics (batcher.md, model_config.proto):

- the queue delay counts from the oldest queued request; a full batch, or one the next request does not fit, goes
  at once; otherwise the largest preferred size reached goes at once;
- a request's timeout only shortens the default (and only where ``allow_timeout_override``); a timed-out request is
  rejected, never run;
- requests without a priority get the default level (the lowest when none is set); a higher level is batched first;
- every piece of a split request counts against ``max_queue_size``;
- a batch holds requests of one per-row shape (Triton's ragged-shape semantics): a request of another shape ends the
  batch at once, as one that does not fit does, and starts the next.

No instance thread runs here: the test asks the batcher for its next batch, and the batcher's waits move the clock
(a stand-in for its condition variable), so time passes only as the batcher decides and requests scheduled for a
moment arrive when the clock reaches it. The clock is the module's ``time.monotonic``, replaced for the test.
"""
import asyncio
import types

import numpy as np
import pytest

from vaedeploy.serve import batcher as batcher_module
from vaedeploy.serve.batcher import BatchPolicy, DynamicBatcher
from vaedeploy.serve.metrics import Metrics
from vaedeploy.serve.models import Piece
from vaedeploy.serve.protocol import ProtocolError

MS = 1e-3


class Idle(Exception):
    """The batcher would wait for ever: nothing is queued and no request is scheduled."""


class Script:
    """A batcher without instance threads, on a clock that only its own waits move.

    ``at(t, tag, rows, **submit)`` schedules a request; ``batches()`` returns every batch the batcher forms, as
    (time in ms, [(tag, rows), ...]), until it would wait for ever; ``rejected`` maps a tag to the time (ms) its
    request was answered with an error.
    """

    def __init__(self, monkeypatch, **policy):
        self.now, self.schedule, self.jobs, self.rejected = 0.0, [], {}, {}
        monkeypatch.setattr(batcher_module, "time", types.SimpleNamespace(monotonic=lambda: self.now))
        self.loop = asyncio.new_event_loop()
        self.batcher = DynamicBatcher(types.SimpleNamespace(name="m"), BatchPolicy(**policy), Metrics().model("m"))
        self.batcher._loop = self.loop  # what start() sets, without starting the instance threads
        self.batcher._cond = self  # its waits come here

    def at(self, ms: float, tag: int, rows: int = 1, **submit) -> "Script":
        self.schedule.append((ms * MS, tag, rows, submit))  # submit may hold shape=, for Script.submit
        self.schedule.sort(key=lambda s: s[0])
        return self

    def submit(self, tag: int, rows: int = 1, shape: tuple | None = None, **submit):
        """Queue a request of ``rows`` rows: with no input, or with one of per-row ``shape``."""
        inputs = () if shape is None else (np.zeros((rows, *shape), np.float32),)
        job = self.batcher.submit(Piece(inputs, rows, tag, 0, 1.0), **submit)
        self.jobs[tag] = job
        return job

    def _arrive(self) -> None:
        while self.schedule and self.schedule[0][0] <= self.now:
            _, tag, rows, submit = self.schedule.pop(0)
            self.submit(tag, rows, **submit)

    def _answered(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0))  # the batcher's deliveries, posted with call_soon_threadsafe
        for tag, job in self.jobs.items():
            if job.future.done() and tag not in self.rejected and job.future.exception() is not None:
                self.rejected[tag] = round(self.now / MS, 3)

    # the condition variable the batcher waits on
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def notify(self, n: int = 1) -> None:
        pass

    notify_all = notify

    def wait(self, seconds: float | None = None) -> bool:
        self._answered()
        arrival = self.schedule[0][0] if self.schedule else None
        if seconds is None and arrival is None:
            raise Idle
        then = min(t for t in (None if seconds is None else self.now + seconds, arrival) if t is not None)
        # whole nanoseconds, so 60 ms + 40 ms is 100 ms; a wait of less than that still moves the clock
        self.now = max(round(then, 9), self.now + 1e-9 if seconds else self.now)
        self._arrive()
        self.waits += 1
        if self.waits > 1000:
            raise AssertionError("the batcher keeps waiting without the clock moving on")
        return True

    def batches(self) -> list[tuple[float, list[tuple[int, int]]]]:
        formed = []
        self.waits = 0
        self._arrive()
        while True:
            try:
                batch = self.batcher._next_batch()
            except Idle:
                break
            formed.append((round(self.now / MS, 3), [(e.piece.seed, e.piece.rows) for e in batch]))
        self._answered()
        self.loop.close()
        return formed


@pytest.fixture
def script(monkeypatch):
    return lambda **policy: Script(monkeypatch, **policy)


def test_the_delay_counts_from_the_oldest_request(script):
    # A waits from 0 ms; B joins at 60 and goes with A at 100; C, from 120, goes alone at 220
    s = script(max_batch_size=8, max_queue_delay_microseconds=100_000).at(0, 1).at(60, 2).at(120, 3)
    assert s.batches() == [(100, [(1, 1), (2, 1)]), (220, [(3, 1)])]


def test_a_full_batch_goes_at_once_and_one_the_next_request_does_not_fit_too(script):
    full = script(max_batch_size=4, max_queue_delay_microseconds=1_000_000).at(0, 1, 2).at(0, 2, 2).at(10, 3)
    assert full.batches() == [(0, [(1, 2), (2, 2)]), (1010, [(3, 1)])]
    blocked = script(max_batch_size=4, max_queue_delay_microseconds=1_000_000).at(0, 1, 3).at(0, 2, 2)
    assert blocked.batches() == [(0, [(1, 3)]), (1000, [(2, 2)])]


def test_the_largest_preferred_size_reached_goes_at_once(script):
    s = script(max_batch_size=8, preferred_batch_size=(2, 4), max_queue_delay_microseconds=1_000_000)
    for tag in range(5):
        s.at(0, tag)
    assert s.batches() == [(0, [(0, 1), (1, 1), (2, 1), (3, 1)]), (1000, [(4, 1)])]


def test_a_requests_timeout_only_shortens_the_default(script):
    s = script(max_batch_size=8, max_queue_delay_microseconds=1_000_000, default_timeout_microseconds=50_000)
    s.at(0, 1).at(0, 2, timeout_us=100_000).at(0, 3, timeout_us=20_000)
    assert s.batches() == []  # all three time out before the delay ends: none runs
    assert s.rejected == {3: 20, 1: 50, 2: 50}
    assert all("Request timeout expired" in str(job.future.exception()) for job in s.jobs.values())


def test_a_requests_timeout_is_ignored_without_allow_timeout_override(script):
    s = script(max_batch_size=8, max_queue_delay_microseconds=1_000_000, default_timeout_microseconds=50_000,
               allow_timeout_override=False)
    s.at(0, 1, timeout_us=20_000).at(0, 2, timeout_us=500_000)
    assert s.batches() == [] and s.rejected == {1: 50, 2: 50}


def test_a_requests_timeout_applies_without_a_default(script):
    s = script(max_batch_size=8, max_queue_delay_microseconds=100_000).at(0, 1, timeout_us=30_000).at(0, 2)
    assert s.batches() == [(100, [(2, 1)])] and s.rejected == {1: 30}


def test_a_request_that_times_out_as_its_batch_forms_is_not_in_it(script):
    s = script(max_batch_size=8, max_queue_delay_microseconds=100_000).at(0, 1, timeout_us=100_000).at(0, 2)
    assert s.batches() == [(100, [(2, 1)])] and s.rejected == {1: 100}


def test_requests_without_a_priority_get_the_lowest_level_by_default(script):
    s = script(max_batch_size=1, priority_levels=2).at(0, 1).at(0, 2, priority=2).at(0, 3, priority=1)
    assert [batch for _, batch in s.batches()] == [[(3, 1)], [(1, 1)], [(2, 1)]]


def test_requests_without_a_priority_get_the_default_level(script):
    s = script(max_batch_size=1, priority_levels=3, default_priority_level=2)
    s.at(0, 1).at(0, 2, priority=3).at(0, 3, priority=1).at(0, 4)
    assert [batch for _, batch in s.batches()] == [[(3, 1)], [(1, 1)], [(4, 1)], [(2, 1)]]


def test_a_batch_is_sized_from_the_highest_level_first(script):
    # 3 rows at level 1 and one-row requests at level 2: the batch is the 3 rows and the first single row, 4 in all
    s = script(max_batch_size=4, priority_levels=2, max_queue_delay_microseconds=1_000_000)
    s.at(0, 1, priority=2).at(0, 2, priority=2).at(0, 3, priority=2).at(0, 4, 3, priority=1)
    assert s.batches() == [(0, [(4, 3), (1, 1)]), (1000, [(2, 1), (3, 1)])]


def test_every_piece_of_a_split_request_counts_against_the_queue_size(script):
    s = script(max_batch_size=2, max_queue_size=4)
    s.submit(1, rows=5)  # three pieces: 2 + 2 + 1 rows
    assert s.batcher.depth == 3
    s.submit(2, rows=2)  # the fourth place: the queue is exactly full
    with pytest.raises(ProtocolError, match="Exceeds maximum queue size"):
        s.submit(3, rows=1)
    assert s.batcher.depth == 4
    assert [batch for _, batch in s.batches()] == [[(1, 2)], [(1, 2)], [(1, 1)], [(2, 2)]]


def test_a_split_request_is_refused_when_its_pieces_do_not_all_fit(script):
    s = script(max_batch_size=2, max_queue_size=3)
    s.submit(1)
    with pytest.raises(ProtocolError, match="Exceeds maximum queue size"):
        s.submit(2, rows=5)  # three pieces, two places left
    s.submit(3, rows=4)  # two pieces: the queue is full
    assert s.batcher.depth == 3


def test_a_cancelled_request_is_dropped_before_its_batch(script):
    s = script(max_batch_size=8, max_queue_delay_microseconds=100_000)
    first = s.submit(1)
    s.submit(2)
    s.batcher.cancel(first)
    assert s.batches() == [(100, [(2, 1)])]


def test_requests_of_different_shapes_are_never_batched_together(script):
    # 8×8 images at 0 and 10 ms share a batch; the 16×16 one at 20 ends it at once and starts its own, which the
    # 16×16 request at 30 joins; the 8×8 one at 40 ends that batch in turn, then waits out the delay alone
    s = script(max_batch_size=8, max_queue_delay_microseconds=100_000)
    s.at(0, 1, shape=(1, 8, 8)).at(10, 2, shape=(1, 8, 8)).at(20, 3, shape=(1, 16, 16)).at(30, 4, shape=(1, 16, 16))
    s.at(40, 5, shape=(1, 8, 8))
    assert s.batches() == [(20, [(1, 1), (2, 1)]), (40, [(3, 1), (4, 1)]), (140, [(5, 1)])]


def test_requests_keep_their_order_across_shapes(script):
    # as in Triton, a request is never taken from behind one of another shape: 8×8, 16×16, 8×8 are three batches
    s = script(max_batch_size=8, max_queue_delay_microseconds=1_000_000)
    s.at(0, 1, shape=(1, 8, 8)).at(0, 2, shape=(1, 16, 16)).at(0, 3, shape=(1, 8, 8))
    assert s.batches() == [(0, [(1, 1)]), (0, [(2, 1)]), (1000, [(3, 1)])]
