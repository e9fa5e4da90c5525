"""Prometheus metrics at ``/metrics``, with Triton's names where Triton has the metric (its ``metrics.md``), so a
Triton dashboard reads a vaedeploy server: counters of requests, inferences (rows) and executions (batches), the
cumulative microseconds requests spent queued and computing, the queue depth; and, beside them, a histogram of the
rows per execution (``vaedeploy_batch_size``), the one thing Triton's metrics do not show about batching.

Every metric is labelled ``model`` and ``version`` as Triton's are. Triton's counters are exposed under their exact
names: prometheus-client would add ``_total`` to a ``Counter``'s, so they are kept as gauges that only grow (PromQL's
``rate()`` reads them alike). Each server has its own registry, so servers in one process do not share counts.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .statistics import ModelStatistics

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LABELS = ("model", "version")


class Metrics:
    """The server's metrics; the batcher and the app report to it from any thread (prometheus-client locks)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = registry = CollectorRegistry()

        def counter(name, text, labels=LABELS):  # Triton's name, without the _total a Counter would add
            return Gauge(name, text, labels, registry=registry)

        self.success = counter("nv_inference_request_success", "Number of successful inference requests")
        self.failure = counter("nv_inference_request_failure", "Number of failed inference requests",
                               (*LABELS, "reason"))
        self.count = counter("nv_inference_count", "Number of inferences performed (rows)")
        self.exec_count = counter("nv_inference_exec_count", "Number of model executions performed (batches)")
        self.request_us = counter("nv_inference_request_duration_us", "Cumulative inference request duration in "
                                  "microseconds (queue and compute)")
        self.queue_us = counter("nv_inference_queue_duration_us", "Cumulative inference queuing duration in "
                                "microseconds")
        self.compute_us = counter("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration "
                                  "in microseconds")
        self.pending = Gauge("nv_inference_pending_request_count", "Instantaneous number of pending requests "
                             "awaiting execution per-model", LABELS, registry=registry)
        self.batch_size = Histogram("vaedeploy_batch_size", "Rows per model execution (the batches the dynamic "
                                    "batcher formed)", LABELS, buckets=BATCH_BUCKETS, registry=registry)
        self._children: dict = {}

    def model(self, name: str) -> "ModelMetrics":
        if name not in self._children:
            self._children[name] = ModelMetrics(self, name)
        return self._children[name]

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """One model's labelled children, resolved once (a label lookup per call costs more than the increment), and its
    statistics extension's counts (``statistics``), fed by the same reports."""

    def __init__(self, metrics: Metrics, name: str):
        self.statistics = ModelStatistics(name)
        labels = (name, "1")
        self.success, self.count = metrics.success.labels(*labels), metrics.count.labels(*labels)
        self.exec_count, self.request_us = metrics.exec_count.labels(*labels), metrics.request_us.labels(*labels)
        self.queue_us, self.compute_us = metrics.queue_us.labels(*labels), metrics.compute_us.labels(*labels)
        self.pending, self.batch_size = metrics.pending.labels(*labels), metrics.batch_size.labels(*labels)
        self._failure, self._labels = metrics.failure, labels

    def failed(self, reason: str) -> None:
        """A failed request; ``reason`` as Triton's label: REJECTED (queue full, timeout), CANCELED, BACKEND, OTHER."""
        self._failure.labels(*self._labels, reason).inc()

    def executed(self, rows: int, compute_s: float, phases_ns: tuple[int, int, int] = (0, 0, 0)) -> None:
        """One execution of ``rows`` rows that took ``compute_s`` seconds, ``phases_ns`` of it in each of
        ``statistics.PHASES``."""
        self.exec_count.inc()
        self.count.inc(rows)
        self.batch_size.observe(rows)
        self.compute_us.inc(compute_s * 1e6)
        self.statistics.executed(rows, phases_ns)

    def succeeded(self, total_s: float, queue_s: float) -> None:
        self.success.inc()
        self.request_us.inc(total_s * 1e6)
        self.queue_us.inc(queue_s * 1e6)
