"""Triton's dynamic batcher (its ``batcher.md`` and ``model_config.proto``), for one V2 model.

Requests wait in a queue (one per priority level, level 1 first, then in arrival order). When a model instance is
free it forms a batch from the front of the queue: rows are added request by request while they fit in
``max_batch_size``; the batch is sent at once when it is full or the next request does not fit, else at the largest
``preferred_batch_size`` it reached, else when the oldest request has waited ``max_queue_delay_microseconds``
(at once when that is 0). A request with more rows than ``max_batch_size`` is split into pieces of at most that
many rows, each keeping its rows' noise, and reassembled in order. A full queue (``max_queue_size`` pieces) refuses a
request at once (503 "Exceeds maximum queue size", with Retry-After); a request that waited longer than its timeout
(``default_timeout_microseconds``, or the request's ``timeout`` where ``allow_timeout_override`` lets it shorten it)
is rejected when a batch is next formed, as Triton's REJECT action does (DELAY is not implemented).

Each instance is a thread: the model computes off the event loop, which keeps accepting requests meanwhile. Results
return to the loop with ``call_soon_threadsafe``, one call per batch. A lone request is the exception: when nothing is
queued, an instance is free and the policy would send the request alone at once, it runs on the event loop itself,
in ``submit``, as long as the model's last execution took under ``INLINE_MAX_S`` per row. Handing it to an instance
would only add two thread wake-ups (the instance's, then the loop's for the result): about 40 µs of queueing per
request at one client on this machine, and up to 4 ms when the cores are busy (docs/serving.md). A request whose
client went away is marked cancelled and its queued pieces are dropped; a batch that raises is run again piece by
piece, so one request's failure is never another's.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .models import MAX_WAIT_US, Operation, Piece
from .protocol import ProtocolError

# A lone request runs on the event loop only where the model's last execution took at most this long per row: the
# loop answers nothing else meanwhile, so a slow model (a large image's decode) always goes to an instance thread.
INLINE_MAX_S = 0.001


@dataclass(frozen=True)
class BatchPolicy:
    """The batching options of every served model, with Triton's names and meanings (Triton's defaults where it has
    one; a bounded queue here, where Triton's default is unbounded).

    Args:
        max_batch_size: the most rows one execution runs; 1 turns batching off.
        preferred_batch_size: batch sizes (rows) sent as soon as they are reached.
        max_queue_delay_microseconds: how long the oldest request may wait for a better batch (0: never waits).
        max_queue_size: queued pieces beyond which a request is refused at once (0: unbounded).
        default_timeout_microseconds: queueing time after which a request is rejected (0: none).
        allow_timeout_override: a request's ``timeout`` parameter may shorten the default.
        priority_levels: levels a request's ``priority`` parameter may name (1 highest); 0: one queue.
        default_priority_level: the level of a request without ``priority`` (default: the lowest).
        instances: model instances (worker threads) per model.
    """

    max_batch_size: int = 64
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0
    max_queue_size: int = 1024
    default_timeout_microseconds: int = 0
    allow_timeout_override: bool = True
    priority_levels: int = 0
    default_priority_level: int = 0
    instances: int = 1

    def __post_init__(self):
        for name in ("max_batch_size", "instances"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected an integer ≥ 1, got {getattr(self, name)!r}")
        for name in ("max_queue_delay_microseconds", "max_queue_size", "default_timeout_microseconds",
                     "priority_levels", "default_priority_level"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"{name}: expected an integer ≥ 0, got {getattr(self, name)!r}")
        for name in ("max_queue_delay_microseconds", "default_timeout_microseconds"):
            if getattr(self, name) > MAX_WAIT_US:
                raise ConfigError(f"{name}: expected at most {MAX_WAIT_US} µs (an hour), got {getattr(self, name)}")
        if bad := [s for s in self.preferred_batch_size if not 1 <= s <= self.max_batch_size]:
            raise ConfigError(f"preferred_batch_size: expected sizes from 1 to max_batch_size "
                              f"{self.max_batch_size}, got {bad}")
        if self.default_priority_level > self.priority_levels:
            raise ConfigError(f"default_priority_level: expected a level from 1 to priority_levels "
                              f"{self.priority_levels}, got {self.default_priority_level}")

    def model_config(self) -> dict:
        """The policy as Triton's ``ModelConfig`` fields (JSON names): ``max_batch_size``, ``dynamic_batching``,
        ``instance_group``."""
        batching = {"max_queue_delay_microseconds": self.max_queue_delay_microseconds,
                    "default_queue_policy": {"timeout_action": "REJECT",
                                             "default_timeout_microseconds": self.default_timeout_microseconds,
                                             "allow_timeout_override": self.allow_timeout_override,
                                             "max_queue_size": self.max_queue_size}}
        if self.preferred_batch_size:
            batching["preferred_batch_size"] = list(self.preferred_batch_size)
        if self.priority_levels:
            batching["priority_levels"] = self.priority_levels
            batching["default_priority_level"] = self.default_priority_level or self.priority_levels
        return {"max_batch_size": self.max_batch_size, "dynamic_batching": batching,
                "instance_group": [{"count": self.instances, "kind": "KIND_CPU"}]}


class Job:
    """One request in the batcher: its pieces' results as they come, the future its handler awaits, the seconds it
    waited before its first rows ran (``queue_s``) and the nanoseconds of its batches' phases (``phases_ns``:
    ``statistics.PHASES``)."""

    __slots__ = ("future", "results", "remaining", "enqueued", "deadline", "cancelled", "queue_s", "phases_ns")

    def __init__(self, future: asyncio.Future, pieces: int, deadline: float | None):
        self.future, self.results, self.remaining = future, [None] * pieces, pieces
        self.enqueued, self.deadline, self.cancelled, self.queue_s = time.monotonic(), deadline, False, None
        self.phases_ns = [0, 0, 0]


class _Entry:
    __slots__ = ("job", "index", "piece")

    def __init__(self, job: Job, index: int, piece: Piece):
        self.job, self.index, self.piece = job, index, piece


def _assemble(results: list[tuple]) -> tuple:
    if len(results) == 1:
        return results[0]
    return tuple(np.concatenate(parts) for parts in zip(*results))


class DynamicBatcher:
    """The queue and instances of one model. ``start()`` on the event loop, ``submit()`` per request, ``close()``.

    Args:
        operation: the model (``models.Operation``) whose batches run.
        policy: the ``BatchPolicy``.
        metrics: the model's ``metrics.ModelMetrics``.
    """

    def __init__(self, operation: Operation, policy: BatchPolicy, metrics):
        self.operation, self.policy, self.metrics = operation, policy, metrics
        self._queues = [deque() for _ in range(max(1, policy.priority_levels))]
        self._size = 0  # queued pieces
        self._cond = threading.Condition()
        self._closing = False
        self._busy = 0  # instances running a batch
        self._row_seconds = float("inf")  # the last execution's seconds per row; unknown until the first
        self._sweep = False  # set when a queued entry may have been cancelled or expired
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._preferred = set(policy.preferred_batch_size)

    # ---- the event loop's side -------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for i in range(self.policy.instances):
            thread = threading.Thread(target=self._work, name=f"{self.operation.name}/{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def depth(self) -> int:
        return self._size

    def submit(self, piece: Piece, priority: int = 0, timeout_us: int | None = None, alone: bool = False) -> Job:
        """Queue a request's rows; its ``Job.future`` gives its outputs. Refused at once with a ``ProtocolError``
        (503) when the queue is full or the server is shutting down, (400) for a priority it does not have. A request
        the server has no other in flight with (``alone``) runs here at once where the policy would send it alone
        (``_runs_alone_now``): its future is done when this returns."""
        policy = self.policy
        if priority and not 1 <= priority <= policy.priority_levels:
            raise ProtocolError(f"parameter priority: expected 0 (default) or a level from 1 to "
                                f"{policy.priority_levels}, got {priority}" if policy.priority_levels else
                                f"parameter priority: this model has no priority levels (--priority-levels), got "
                                f"{priority}")
        timeout = policy.default_timeout_microseconds
        if timeout_us and policy.allow_timeout_override and (not timeout or timeout_us < timeout):
            timeout = timeout_us
        pieces = piece.split(policy.max_batch_size) if piece.rows > policy.max_batch_size else [piece]
        job = Job(self._loop.create_future(), len(pieces), time.monotonic() + timeout * 1e-6 if timeout else None)
        level = (priority or policy.default_priority_level or policy.priority_levels or 1) - 1
        with self._cond:
            if self._closing:
                raise ProtocolError("the server is shutting down; expected no new requests", 503)
            if policy.max_queue_size and self._size + len(pieces) > policy.max_queue_size:
                self.metrics.failed("REJECTED")
                raise ProtocolError("Exceeds maximum queue size", 503, {"retry-after": "1"})
            inline = alone and self._runs_alone_now(pieces)
            if inline:
                self._busy += 1  # an instance's place, taken by the loop while it runs this request
            else:
                self._queues[level].extend(_Entry(job, i, p) for i, p in enumerate(pieces))
                self._size += len(pieces)
                self._sweep |= job.deadline is not None
                self._cond.notify()
        if inline:
            self._run_inline([_Entry(job, 0, pieces[0])])
        else:
            self.metrics.pending.set(self._size)
        return job

    def _runs_alone_now(self, pieces: list[Piece]) -> bool:
        """Whether a request of ``pieces`` would be sent at once as a batch of its own by a free instance, and is
        cheap enough to run on the event loop (the lock is held)."""
        if len(pieces) != 1 or self._size or self._busy >= self.policy.instances:
            return False
        rows = pieces[0].rows
        sent_at_once = (not self.policy.max_queue_delay_microseconds or rows == self.policy.max_batch_size
                        or rows in self._preferred)
        return sent_at_once and rows * self._row_seconds <= INLINE_MAX_S

    def _run_inline(self, batch: list[_Entry]) -> None:
        try:
            outcome = self._execute(batch)
        finally:
            with self._cond:
                self._busy -= 1
        self._deliver(batch, *outcome)

    def cancel(self, job: Job) -> None:
        """The request's client went away: its queued pieces are dropped when a batch is next formed."""
        if not job.cancelled and not job.future.done():
            job.cancelled = True
            self.metrics.failed("CANCELED")
            with self._cond:
                self._sweep = True
                self._cond.notify_all()  # a waiting instance drops the rows now, freeing their queue places

    def _deliver(self, entries: list[_Entry], results: list, now: float, phases_ns: list[int] | None = None) -> None:
        if phases_ns is not None:  # the batch's time is charged to each request in it, as Triton counts it
            for job in {id(e.job): e.job for e in entries}.values():
                job.phases_ns = [a + b for a, b in zip(job.phases_ns, phases_ns)]
        for entry, result in zip(entries, results):
            job = entry.job
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
                job.cancelled = self._sweep = True  # its other pieces, if queued, need not run
                continue
            job.results[entry.index] = result
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(_assemble(job.results))
                self.metrics.succeeded(now - job.enqueued, job.queue_s or 0.0)
        self.metrics.pending.set(self._size)

    async def close(self) -> None:
        """Run what is queued (without waiting for better batches), then stop the instances."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        await asyncio.to_thread(lambda: [t.join() for t in self._threads])

    # ---- an instance -----------------------------------------------------------------------------------------

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            outcome = self._execute(batch)
            with self._cond:
                self._busy -= 1
            self._loop.call_soon_threadsafe(self._deliver, batch, *outcome)

    def _execute(self, batch: list[_Entry]) -> tuple[list, float, list[int]]:
        """Run a batch: (its results, the time it finished, its phases' nanoseconds), for ``_deliver``."""
        started = time.monotonic()
        for entry in batch:
            if entry.job.queue_s is None:  # its first rows to run: the request's time in the queue ends here
                entry.job.queue_s = started - entry.job.enqueued
        pieces, phases_ns = [e.piece for e in batch], [0, 0, 0]
        try:
            results = self.operation.run(pieces, phases_ns)
        except Exception as e:
            results = self._one_by_one(pieces, phases_ns) if len(pieces) > 1 else [e]
        done = time.monotonic()
        rows = sum(p.rows for p in pieces)
        self._row_seconds = (done - started) / rows
        self.metrics.executed(rows, done - started, tuple(phases_ns))
        for result in results:
            if isinstance(result, BaseException):
                self.metrics.failed("BACKEND")
        return results, done, phases_ns

    def _one_by_one(self, pieces: list[Piece], phases_ns: list[int]) -> list:
        results = []
        for piece in pieces:
            try:
                results.append(self.operation.run([piece], phases_ns)[0])
            except Exception as e:
                results.append(e)
        return results

    def _next_batch(self) -> list[_Entry] | None:
        """The next batch to run, waiting as the policy says; None when closing and nothing is queued."""
        with self._cond:
            while True:
                now = time.monotonic()
                if self._sweep:
                    self._drop_stale(now)
                if not self._size:
                    if self._closing:
                        return None
                    self._cond.wait(self._next_deadline(now))
                    continue
                count, wait = self._choose(now)
                if count:
                    self._busy += 1
                    return self._take(count)
                deadline = self._next_deadline(now)
                self._cond.wait(wait if deadline is None else min(wait, deadline))

    def _entries(self):
        for queue in self._queues:
            yield from queue

    def _choose(self, now: float) -> tuple[int, float]:
        """(entries to send now, 0) or (0, seconds to wait for a better batch). A batch holds rows of one shape
        (Triton's semantics for ragged shapes): a queued request of another shape ends it, as one that does not fit
        does."""
        policy, rows, count, best, blocked, shape = self.policy, 0, 0, 0, False, None
        for entry in self._entries():
            shape = entry.piece.shape if shape is None else shape
            if rows + entry.piece.rows > policy.max_batch_size or entry.piece.shape != shape:
                blocked = True
                break
            rows += entry.piece.rows
            count += 1
            if rows in self._preferred:
                best = count
            if rows == policy.max_batch_size:
                blocked = True
                break
        if blocked:
            return count, 0.0
        if best:
            return best, 0.0
        delay = policy.max_queue_delay_microseconds * 1e-6
        waited = now - min(q[0].job.enqueued for q in self._queues if q)
        if self._closing or waited >= delay:
            return count, 0.0
        return 0, delay - waited

    def _take(self, count: int) -> list[_Entry]:
        taken = []
        for queue in self._queues:
            while queue and len(taken) < count:
                taken.append(queue.popleft())
        self._size -= len(taken)
        return taken

    def _next_deadline(self, now: float) -> float | None:
        """Seconds until the first queued request times out (None: none can)."""
        if not self._sweep:
            return None
        deadlines = [e.job.deadline for e in self._entries() if e.job.deadline is not None]
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _drop_stale(self, now: float) -> None:
        """Drop cancelled pieces; reject those whose request timed out (on the loop, as a 503)."""
        self._sweep = False
        expired = []
        for queue in self._queues:
            kept = deque()
            for entry in queue:
                job = entry.job
                if job.cancelled:
                    continue
                if job.deadline is not None:
                    self._sweep = True  # more may expire later
                    if now >= job.deadline:
                        expired.append(entry)
                        continue
                kept.append(entry)
            self._size -= len(queue) - len(kept)
            queue.clear()
            queue.extend(kept)
        self.metrics.pending.set(self._size)
        if expired:
            error = ProtocolError("Request timeout expired", 503)
            for _ in {id(e.job) for e in expired}:
                self.metrics.failed("REJECTED")
            self._loop.call_soon_threadsafe(self._deliver, expired, [error] * len(expired), now)
