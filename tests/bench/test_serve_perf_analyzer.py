"""benchmarks/serve.py's perf_analyzer verdicts and split, on hand-made rows: the goals against each Triton system
(with its dynamic batcher, and without it at no queue delay), and the server-side split of a request's time."""
from benchmarks import serve


def row(system: str, protocol: str, delay: int, clients: int, ips: float, p50: float, p99: float, **split) -> dict:
    return {"kind": "perf_analyzer", "system": system, "protocol": protocol, "queue_delay_us": delay,
            "concurrency": clients, "throughput_ips": ips, "p50_us": p50, "p99_us": p99, **split}


ROWS = [row("vaedeploy", "http", 0, 1, 2000, 400, 700, server_queue_us=6, network_server_us=150),
        row("vaedeploy", "http", 0, 8, 3000, 2600, 5000),
        row("triton", "http", 0, 1, 40, 450, 501_000, server_queue_us=0, network_server_us=26_000),
        row("triton", "http", 0, 8, 90, 1500, 505_000),
        row("triton_unbatched", "http", 0, 1, 1500, 500, 600),  # faster at the tail than vaedeploy at one client
        row("triton_unbatched", "http", 0, 8, 2500, 3000, 6000)]


def test_the_goals_are_judged_against_the_triton_system_named():
    against_batched = serve.perf_goals(ROWS)["http"]
    against_unbatched = serve.perf_goals(ROWS, "triton_unbatched")["http"]
    assert (against_batched["points"], against_batched["missed_at"]) == (2, [])
    assert (against_unbatched["points"], against_unbatched["missed_at"]) == (2, [{"queue_delay_us": 0,
                                                                                  "concurrency": 1}])
    # p99 / p50 at one client is vaedeploy's own: 700 / 400 ≤ 2 in both
    assert against_batched["p99_over_p50_at_1"] == [1.75] and against_batched["met"]
    assert not against_unbatched["met"]


def test_the_split_table_has_a_line_per_measured_server_and_dashes_for_what_was_not_split():
    table = serve.perf_split_table({"rows": ROWS}).splitlines()
    assert table[0].startswith("| clients | server | p50 µs | queue µs |")
    lines = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line for line in table[2:]}
    assert set(lines) == {("1", "vaedeploy http"), ("8", "vaedeploy http"), ("1", "triton http"),
                          ("8", "triton http"), ("1", "triton_unbatched http"), ("8", "triton_unbatched http")}
    assert "| 1 | vaedeploy http | 400 | 6 | – |" in lines["1", "vaedeploy http"]
    assert "| 26000 |" in lines["1", "triton http"]
