"""The statistics and the measurement loop on synthetic timings (a fake clock: no real time is measured)."""
import pytest

from vaedeploy.bench import loop, stats
from vaedeploy.bench.loop import Case, Settings
from vaedeploy.bench.stats import Window


def test_nearest_rank_percentiles_are_observed_values():
    values = sorted(float(v) for v in range(1, 101))  # 1..100
    assert [stats.percentile(values, q) for q in (50, 90, 95, 99, 100)] == [50.0, 90.0, 95.0, 99.0, 100.0]
    assert stats.percentile([3.0], 99) == 3.0
    assert stats.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0  # rank ceil(0.5·4) = 2
    figures = stats.summarize([0.001, 0.002, 0.003, 0.004])
    assert figures["p50_ms"] == pytest.approx(2.0) and figures["p99_ms"] == pytest.approx(4.0)
    assert figures["mean_ms"] == pytest.approx(2.5) and figures["cv"] == pytest.approx(1.118034 / 2.5, rel=1e-6)


def window(p50_ms: float, throughput: float, calls: int = 10) -> Window:
    return Window([p50_ms / 1e3] * calls, elapsed=calls / throughput, items=calls)


def test_the_stability_rule_wants_the_last_three_windows_within_the_tolerance():
    steady = [window(1.0, 1000), window(1.05, 960), window(0.97, 1030)]
    assert stats.is_stable(steady)
    assert not stats.is_stable(steady[:2]), "fewer than three windows are never stable"
    assert not stats.is_stable([window(1.0, 1000), window(1.0, 1000), window(1.0, 1300)]), "throughput apart"
    assert not stats.is_stable([window(1.0, 1000), window(1.3, 1000), window(1.0, 1000)]), "p50 apart"
    assert stats.is_stable([window(5.0, 10), *steady]), "only the last three count"
    assert stats.is_stable([window(1.0, 1000), window(1.0, 1000), window(1.0, 1300)], tolerance=0.2)


class FakeClock:
    """time.perf_counter for the loop: each fake call advances it by the call's latency."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(loop.time, "perf_counter", fake)
    return fake


def fake_call(clock, latency):
    """A timed call of ``latency(i)`` seconds on the fake clock."""
    def timed(i):
        clock.now += latency(i)
        return latency(i), None, None

    return timed


def test_cases_stop_when_stable_or_after_max_windows_or_at_the_budget(clock):
    settings = Settings(budget_s=100.0, window_s=0.01, warmup_s=0.001, max_windows=6)
    steady = Case({"op": "steady", "batch": 1}, fake_call(clock, lambda i: 1e-3), items=1)
    # the latency changes with every window (100 calls of 1 ms, then of 2 ms, ...): never stable
    drifting = Case({"op": "drifting", "batch": 4}, fake_call(clock, lambda i: 1e-3 * (1 + (i // 11) % 2)), items=4)
    rows = loop.measure([steady, drifting], settings)
    assert rows[0]["status"] == "stable" and rows[0]["windows"] == 3 and rows[0]["stable"]
    assert rows[0]["p50_ms"] == pytest.approx(1.0) and rows[0]["items_per_s"] == pytest.approx(1000, rel=0.01)
    assert rows[1]["status"] == "unstable" and rows[1]["windows"] == 6 and not rows[1]["stable"]
    assert rows[1]["items_per_s"] > 0 and rows[1]["concurrency"] == 1

    clock.now = 0.0
    slow = Case({"op": "slow", "batch": 1}, fake_call(clock, lambda i: 0.1 * (1 + i % 3)), items=1)
    rows = loop.measure([slow], Settings(budget_s=1.0, window_s=0.5, warmup_s=0.0))
    assert rows[0]["status"] == "budget" and 1 <= rows[0]["windows"] < 3, "the budget ends the case"


def test_every_case_gets_a_window_even_past_the_budget(clock):
    cases = [Case({"op": str(k), "batch": 1}, fake_call(clock, lambda i: 0.2), items=1) for k in range(3)]
    rows = loop.measure(cases, Settings(budget_s=0.1, window_s=0.1, warmup_s=0.0, min_calls=1))
    assert [r["windows"] for r in rows] == [1, 1, 1] and {r["status"] for r in rows} == {"budget"}


def test_rounds_rotate_the_order_of_cases(clock):
    cases = [Case({"op": name, "batch": 1}, fake_call(clock, lambda i: 1e-3 * (1 + i % 2)), items=1) for name in "ab"]
    order = []
    loop.measure(cases, Settings(budget_s=10, window_s=0.002, warmup_s=0.0, min_calls=1, max_windows=3),
                 progress=lambda case: order.append(case.key["op"]))
    assert order == ["a", "b", "b", "a", "a", "b"]


def test_errors_are_counted_with_the_first_message(clock):
    def failing(i):
        clock.now += 1e-3
        if i % 2:
            raise RuntimeError("HTTP 503: Exceeds maximum queue size")
        return 1e-3, None, None

    rows = loop.measure([Case({"model": "m", "batch": 1}, failing, items=1)],
                        Settings(budget_s=1, window_s=0.01, warmup_s=0.0, max_windows=3))
    assert rows[0]["errors"] > 0 and rows[0]["first_error"] == "RuntimeError: HTTP 503: Exceeds maximum queue size"
    assert rows[0]["calls"] > 0, "the calls that succeeded are still measured"


def test_concurrent_callers_share_one_window():
    import time

    case = Case({"op": "sleep", "batch": 2}, loop.host_timed(lambda i: time.sleep(0.01)), items=2, concurrency=4)
    w = loop.window(case, 0.1, 3)
    assert len(w.latencies) >= 12 and w.items == 2 * len(w.latencies)
    # four callers at once: about four times what one caller does at the same latency
    assert w.throughput > 2 * 2 / w.p50


def test_fitted_windows_leave_room_for_every_case():
    settings = Settings.fitted(cases=40, budget_s=60)
    assert 40 * settings.window_s * (settings.stable_windows + 1) <= 60 and settings.window_s >= 0.02
    assert Settings.fitted(cases=1, budget_s=1000).window_s == 5.0
    assert Settings.fitted(cases=4, budget_s=10, window_s=0.5).window_s == 0.5
