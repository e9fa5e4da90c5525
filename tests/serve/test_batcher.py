"""The dynamic batcher's semantics (Triton's batcher.md) on a stand-in model that records the batches it is given:
split requests, greedy batches, preferred sizes, the queue delay, a request that does not fit, priorities, a full
queue, one piece's failure, and where a lone request runs (on the event loop, or on an instance thread). Each test
waits on futures with timeouts; none depends on the machine's speed except the lower bound on a delay."""
import asyncio
import threading
import time

import numpy as np
import pytest

from vaedeploy.serve import batcher as batcher_module
from vaedeploy.serve.batcher import BatchPolicy, DynamicBatcher
from vaedeploy.serve.metrics import Metrics
from vaedeploy.serve.models import Piece
from vaedeploy.serve.protocol import ProtocolError

WAIT = 10  # seconds, any await


class Recorder:
    """A model whose batches are recorded as lists of (tag, rows); its outputs are each row's stream offset."""

    name = "m"

    def __init__(self, hold_first: bool = False):
        self.batches, self.started, self.release = [], threading.Event(), threading.Event()
        self.threads = []  # the thread each batch ran on
        if not hold_first:
            self.release.set()

    def run(self, pieces, phases_ns=None):
        self.started.set()
        self.release.wait(WAIT)
        self.batches.append([(p.seed, p.rows) for p in pieces])
        self.threads.append(threading.current_thread().name)
        if len(pieces) > 1 and any(p.temperature < 0 for p in pieces):
            raise RuntimeError("a bad piece in the batch")
        if pieces[0].temperature < 0:
            raise ValueError("this piece is bad")
        return [(np.arange(p.offset, p.offset + p.rows),) for p in pieces]


def piece(tag: int, rows: int = 1, offset: int = 0, temperature: float = 1.0) -> Piece:
    return Piece((), rows, tag, offset, temperature)


async def batcher(model, **policy) -> DynamicBatcher:
    b = DynamicBatcher(model, BatchPolicy(**policy), Metrics().model("m"))
    b.start()
    return b


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, WAIT))


def test_a_large_request_is_split_and_reassembled_in_order():
    async def main():
        model = Recorder()
        b = await batcher(model, max_batch_size=64)
        (rows,) = await b.submit(piece(1, 150, offset=7)).future
        await b.close()
        return model.batches, rows

    batches, rows = run(main())
    assert [rows for batch in batches for _, rows in batch] == [64, 64, 22]
    np.testing.assert_array_equal(rows, np.arange(7, 157))  # each piece drew its own rows of the stream


def test_what_queued_while_the_model_ran_is_one_batch():
    async def main():
        model = Recorder(hold_first=True)
        b = await batcher(model, max_batch_size=64)
        first = b.submit(piece(0))
        await asyncio.to_thread(model.started.wait, WAIT)
        rest = [b.submit(piece(tag, rows)) for tag, rows in [(1, 2), (2, 3), (3, 1)]]
        model.release.set()
        await asyncio.gather(first.future, *(j.future for j in rest))
        await b.close()
        return model.batches

    assert run(main()) == [[(0, 1)], [(1, 2), (2, 3), (3, 1)]]


def test_samples_of_different_sizes_are_never_batched_together():
    # a spatial sample's piece carries its (H, W): it is part of the shape key, so 8×8 and 8×16 draws queued together
    # are separate batches, each with the requests of its size (in order: none is taken from behind another size)
    async def main():
        model = Recorder(hold_first=True)
        b = await batcher(model, max_batch_size=64)
        first = b.submit(Piece((), 1, 0, 0, 1.0, (8, 8)))
        await asyncio.to_thread(model.started.wait, WAIT)
        rest = [b.submit(Piece((), 1, tag, 0, 1.0, size)) for tag, size in [(1, (8, 8)), (2, (8, 8)), (3, (8, 16)),
                                                                           (4, (8, 16))]]
        model.release.set()
        await asyncio.gather(first.future, *(j.future for j in rest))
        await b.close()
        return model.batches

    assert run(main()) == [[(0, 1)], [(1, 1), (2, 1)], [(3, 1), (4, 1)]]


def test_a_preferred_size_is_sent_without_waiting_for_the_delay():
    async def main():
        model = Recorder()
        b = await batcher(model, max_batch_size=64, preferred_batch_size=(4,), max_queue_delay_microseconds=5_000_000)
        started = time.monotonic()
        await asyncio.gather(*(b.submit(piece(tag)).future for tag in range(4)))
        seconds = time.monotonic() - started
        await b.close()
        return model.batches, seconds

    batches, seconds = run(main())
    assert batches == [[(0, 1), (1, 1), (2, 1), (3, 1)]] and seconds < 4


def test_the_delay_waits_for_a_better_batch_then_sends_what_it_has():
    async def main():
        model = Recorder()
        b = await batcher(model, max_batch_size=64, max_queue_delay_microseconds=200_000)
        started = time.monotonic()
        jobs = [b.submit(piece(0)), b.submit(piece(1))]
        await asyncio.gather(*(j.future for j in jobs))
        seconds = time.monotonic() - started
        await b.close()
        return model.batches, seconds

    batches, seconds = run(main())
    assert batches == [[(0, 1), (1, 1)]] and seconds >= 0.19


def test_a_batch_the_next_request_does_not_fit_is_sent_at_once():
    async def main():
        model = Recorder()
        b = await batcher(model, max_batch_size=8, max_queue_delay_microseconds=5_000_000)
        first, second = b.submit(piece(0, 5)), b.submit(piece(1, 5))
        await asyncio.wait_for(first.future, 4)  # long before the delay
        await b.close()  # closing sends the rest without waiting
        await second.future
        return model.batches

    assert run(main()) == [[(0, 5)], [(1, 5)]]


def test_higher_priority_requests_are_batched_first():
    async def main():
        model = Recorder(hold_first=True)
        b = await batcher(model, max_batch_size=2, priority_levels=2)
        first = b.submit(piece(0))
        await asyncio.to_thread(model.started.wait, WAIT)
        jobs = [b.submit(piece(1), priority=2), b.submit(piece(2), priority=2), b.submit(piece(3), priority=1)]
        model.release.set()
        await asyncio.gather(first.future, *(j.future for j in jobs))
        await b.close()
        return model.batches

    assert run(main()) == [[(0, 1)], [(3, 1), (1, 1)], [(2, 1)]]


def test_a_full_queue_refuses_at_once():
    async def main():
        model = Recorder(hold_first=True)
        b = await batcher(model, max_batch_size=1, max_queue_size=2)
        jobs = [b.submit(piece(0))]
        await asyncio.to_thread(model.started.wait, WAIT)
        jobs += [b.submit(piece(1)), b.submit(piece(2))]
        with pytest.raises(ProtocolError, match="Exceeds maximum queue size") as refused:
            b.submit(piece(3))
        with pytest.raises(ProtocolError, match="Exceeds maximum queue size"):
            b.submit(piece(4, rows=2))  # two pieces of one row each, and no place left
        model.release.set()
        await asyncio.gather(*(j.future for j in jobs))
        await b.close()
        return refused.value.status, refused.value.headers

    assert run(main()) == (503, {"retry-after": "1"})


def test_a_failing_piece_fails_alone():
    async def main():
        model = Recorder(hold_first=True)
        b = await batcher(model, max_batch_size=64)
        first = b.submit(piece(0))
        await asyncio.to_thread(model.started.wait, WAIT)
        good, bad = b.submit(piece(1)), b.submit(piece(2, temperature=-1.0))
        model.release.set()
        await first.future
        (rows,) = await good.future
        with pytest.raises(ValueError, match="this piece is bad"):
            await bad.future
        await b.close()
        return rows

    np.testing.assert_array_equal(run(main()), [0])


async def lone_request(model: Recorder, alone: bool, **policy) -> tuple[bool, list]:
    """Submit one request after a first one has run (the model's cost is known from then on): whether it was done
    when ``submit`` returned, and its outputs."""
    b = await batcher(model, **policy)
    await b.submit(piece(0)).future  # the first request of a model always goes to an instance: its cost is unknown
    job = b.submit(piece(1, rows=2, offset=5), alone=alone)
    done_at_once = job.future.done()
    (rows,) = await job.future
    await b.close()
    return done_at_once, rows


def test_a_lone_request_runs_at_once_on_the_event_loop():
    # nothing queued, the instance free, no queue delay: the request runs in submit itself, on the loop's thread, with
    # no instance thread to wake and no hand-back to the loop
    model = Recorder()
    done_at_once, rows = run(lone_request(model, alone=True))
    assert done_at_once and model.threads == ["m/0", threading.current_thread().name]
    np.testing.assert_array_equal(rows, [5, 6])


@pytest.mark.parametrize("case", ["another request in flight", "a queue delay", "a model slower than the bound"])
def test_a_request_that_is_not_alone_or_would_wait_goes_to_an_instance(case, monkeypatch):
    model, policy = Recorder(), {}
    if case == "a queue delay":
        policy["max_queue_delay_microseconds"] = 1000
    if case == "a model slower than the bound":
        monkeypatch.setattr(batcher_module, "INLINE_MAX_S", 0.0)
    done_at_once, rows = run(lone_request(model, alone=case != "another request in flight", **policy))
    assert not done_at_once and model.threads == ["m/0", "m/0"]
    np.testing.assert_array_equal(rows, [5, 6])


def test_a_lone_request_waits_for_a_busy_instance():
    # the model's only instance runs a batch: a request that the server has alone still joins the queue
    async def main():
        model = Recorder()
        b = await batcher(model)
        await b.submit(piece(0)).future
        model.release.clear()
        model.started.clear()
        first = b.submit(piece(1))
        await asyncio.to_thread(model.started.wait, WAIT)
        second = b.submit(piece(2), alone=True)
        done_at_once = second.future.done()
        model.release.set()
        await asyncio.gather(first.future, second.future)
        await b.close()
        return done_at_once, model.threads

    done_at_once, threads = run(main())
    assert not done_at_once and threads == ["m/0"] * 3


def test_policy_options_are_checked():
    with pytest.raises(ValueError, match="preferred_batch_size: expected sizes from 1 to max_batch_size 8"):
        BatchPolicy(max_batch_size=8, preferred_batch_size=(16,))
    with pytest.raises(ValueError, match="default_priority_level: expected a level from 1 to priority_levels 2"):
        BatchPolicy(priority_levels=2, default_priority_level=3)
