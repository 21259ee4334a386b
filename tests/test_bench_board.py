"""bench/bench_board.py still runs: a small plan seeded the benchmark's way, one page timed
against its bare read (the benchmark itself is `make bench`, not part of the suite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import bench_board


def test_the_board_benchmark_seeds_and_times_a_page(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    results = bench_board.main(["--tasks", "200", "--repeat", "1", "--pages", "tasks_p1",
                                "--no-full-export", "--dir", str(tmp_path)])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    seeded = lines[0]
    assert seeded["bench"] == "web_seed" and seeded["tasks"] == 200
    assert seeded["events"] > 200 and seeded["db_mb"] > 0
    assert lines[1:] == results and len(results) == 1
    page = results[0]
    assert (page["page"], page["viewer"], page["tasks"], page["rows"]) == (
        "tasks_p1", bench_board.OFFICE, 200, 50)
    assert page["median_ms"] > 0 and page["baseline_ms"] > 0 and page["ratio"] > 0
