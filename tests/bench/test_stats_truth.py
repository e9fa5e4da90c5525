"""The bench statistics against figures worked out by hand: nearest-rank percentiles of unsorted samples, a window's
p50, the CV, the stability rule at its borders, items per second, and which windows a row's figures come from."""
import math

import pytest

from vaedeploy.bench import loop, stats
from vaedeploy.bench.loop import Case, Settings
from vaedeploy.bench.stats import Window


def test_nearest_rank_percentiles_of_unsorted_samples():
    # 1..10 ms in no order; nearest rank r = ceil(q/100 · 10): p50 the 5th, p90 the 9th, p95 and p99 the 10th
    figures = stats.summarize([v / 1e3 for v in (7, 1, 9, 3, 5, 10, 2, 8, 4, 6)])
    assert [figures[f"p{q}_ms"] for q in (50, 90, 95, 99)] == pytest.approx([5, 9, 10, 10])
    assert figures["mean_ms"] == pytest.approx(5.5)
    assert figures["cv"] == pytest.approx(math.sqrt(8.25) / 5.5)  # population sd of 1..10 over the mean


@pytest.mark.parametrize("q, rank", [(30, 2), (40, 2), (50, 3), (80, 4), (81, 5), (100, 5)])
def test_the_rank_is_the_ceiling_of_q_percent_of_the_count(q, rank):
    values = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert stats.percentile(values, q) == values[rank - 1]


def test_a_windows_p50_is_taken_from_its_sorted_latencies():
    w = Window([0.005, 0.001, 0.009, 0.002, 0.003], elapsed=0.02, items=5)
    assert w.p50 == 0.003  # sorted 1, 2, 3, 5, 9 ms: the 3rd


def _window(p50_ms: float, per_s: float, calls: int = 10) -> Window:
    return Window([p50_ms / 1e3] * calls, elapsed=calls / per_s, items=calls)


def test_the_tolerance_is_relative_to_the_mean_of_the_last_windows():
    # throughputs 100, 110, 120: mean 110, farthest 10 away (9.1%); 100, 100, 125: 16.7 from 108.3 (15.4%)
    assert stats.is_stable([_window(1.0, 100), _window(1.0, 110), _window(1.0, 120)])
    assert not stats.is_stable([_window(1.0, 100), _window(1.0, 100), _window(1.0, 125)])
    # p50s of 10, 11, 12 µs: 9.1% apart, stable; 10, 10, 12.5 µs: not, although 2.5 µs is tiny in seconds
    assert stats.is_stable([_window(0.010, 100), _window(0.011, 100), _window(0.012, 100)])
    assert not stats.is_stable([_window(0.010, 100), _window(0.010, 100), _window(0.0125, 100)])


def test_throughput_and_p50_must_both_settle():
    assert not stats.is_stable([_window(1.0, 100), _window(1.0, 100), _window(2.0, 100)])
    assert not stats.is_stable([_window(1.0, 100), _window(1.0, 100), _window(1.0, 200)])


def test_items_per_second_count_items_not_calls():
    row = stats.figures([Window([0.001] * 10, elapsed=0.01, items=40), Window([0.001] * 10, elapsed=0.01, items=40)])
    assert row["items_per_s"] == pytest.approx(4000) and row["calls"] == 20


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: now[0])
    return now


def test_a_row_reports_the_last_stable_windows_only_and_not_the_warm_up(clock):
    """Call 0 is the warm-up (50 ms); windows of exactly 10 calls (window_s 0, min_calls 10): windows 1 and 2 at 5 ms
    a call, then 1 ms, so windows 3, 4 and 5 agree and the case is stable after 5 windows; its row holds their 30
    calls at 1 ms."""
    def call(i):
        latency = 0.050 if i == 0 else 0.005 if i <= 20 else 0.001
        clock[0] += latency
        return latency, None, None

    case = Case({"op": "decode", "batch": 4}, call, items=4)
    (row,) = loop.measure([case], Settings(budget_s=100, window_s=0.0, warmup_s=0.0, min_calls=10, max_windows=10))
    assert row["status"] == "stable" and row["windows"] == 5
    assert row["calls"] == 30 and row["p50_ms"] == pytest.approx(1.0) and row["p99_ms"] == pytest.approx(1.0)
    assert row["items_per_s"] == pytest.approx(4000)
