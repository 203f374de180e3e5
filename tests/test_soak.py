"""The bounded soak (benchmarks/soak.py) runs for 60 s against a real gate with no invariant broken."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


# 60 s of traffic, then start-up, shutdown and `audit verify`: well past the 60 s default.
@pytest.mark.timeout(240)
def test_a_sixty_second_soak_of_mixed_traffic_breaks_no_invariant(tmp_path: Path) -> None:
    figures = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", "60", "--workers", "4", "--json", str(figures)],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert figures.exists(), done.stderr[-3000:]
    report = json.loads(figures.read_text())
    assert report["violations"] == [], done.stdout
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert report["verify_ok"], report["verify_output"]
    calls = report["calls"]
    # every kind of traffic happened, so the invariants were checked against each
    for kind in ("low", "held (approve)", "held (deny)", "held (expire)", "downstream killed"):
        assert calls.get(kind, 0) > 0, calls
    outcomes = report["outcomes"]
    assert outcomes.get("approve ran", 0) > 0 and outcomes.get("low ok", 0) > 0, outcomes
    assert report["slack_faults"] > 0 and report["slack_posts"] > 0
    assert len(report["samples"]) >= 30
