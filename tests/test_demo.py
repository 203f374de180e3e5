"""`mcp-gate demo` runs end to end and shows what the gate does."""

from __future__ import annotations

import re
import subprocess
import sys


def test_the_demo_runs_and_shows_each_thing_the_gate_does() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gate", "demo"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    out = done.stdout
    steps = {int(m.group(1)): m.start() for m in re.finditer(r"^== (\d+)\. ", out, re.MULTILINE)}
    assert sorted(steps) == list(range(1, 8))

    def step(n: int) -> str:
        return out[steps[n] : steps.get(n + 1, len(out))]

    assert "notes__read_note" in step(1) and "notes__purge_notes" not in step(1)
    assert "result: hello through the gate" in step(2)
    assert "result: welcome" in step(2)
    assert "REFUSED: notes__write_note was not run: its tier is high" in step(3)
    assert "its tier is critical" in step(3)
    assert "notes__purge_notes is blocked by policy" in step(3)
    story = step(4)
    flat = " ".join(story.split())
    correlation_id = re.search(r"audit show ([0-9a-f]+)", story)
    assert correlation_id is not None
    assert f"call {correlation_id.group(1)}" in flat and "tool notes__write_note" in flat
    assert re.search(r"call\.requested args=.* policy\.decided tier=high .* call\.refused error=", flat)
    assert "the agent still sees the reviewed description: 'Read one note.'" in step(5)
    assert "notes__read_note is quarantined" in step(5)
    assert "id_rsa" in step(5)
    assert "accepted notes__read_note" in step(6)
    assert "result: Notes live here" in step(6)
    assert re.search(r"ok: \d+ records, chain intact", step(7))
    # The gate's own log lines stay out of the demo's output.
    assert "mcp-gate WARNING" not in out + done.stderr
