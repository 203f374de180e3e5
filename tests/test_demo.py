"""`mcp-gate demo` runs end to end and shows what the gate does."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


# The demo plays ten scenes against real gates and a real downstream: about 25 s on two busy
# cores, so it gets three times the suite's 60 s default.
@pytest.mark.timeout(180)
def test_the_demo_runs_and_shows_each_thing_the_gate_does() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_gate", "demo"], capture_output=True, text=True, timeout=170, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    out = done.stdout
    steps = {int(m.group(1)): m.start() for m in re.finditer(r"^== (\d+)\. ", out, re.MULTILINE)}
    assert sorted(steps) == list(range(1, 11))

    def step(n: int) -> str:
        return " ".join(out[steps[n] : steps.get(n + 1, len(out))].split())

    assert "notes__read_note" in step(1) and "notes__purge_notes" not in step(1)
    assert "result: hello through the gate" in step(2)
    assert "result: archive/2025, welcome" in step(2)
    # Held, listed as pending, approved by bob from another process, then run.
    assert re.search(r"notes__write_note .*\(the call waits\)", step(3))
    assert re.search(r"approved [A-Z0-9]{8} \(1 of 1\)", step(3))
    assert "result: wrote plan" in step(3)
    assert "nobody approves their own calls" in step(4)
    assert "denied by carol: welcome is kept as it is" in step(5)
    critical = step(6)
    assert "needs a member of security" in critical
    assert "1 of 2 approvals: carol" in critical and "(2 of 2)" in critical
    assert "result: deleted archive/2025" in critical
    story = step(7)
    correlation_id = re.search(r"audit show ([0-9a-f]+)", story)
    assert correlation_id is not None and f"call {correlation_id.group(1)}" in story
    assert re.search(
        r"call\.requested .* policy\.decided tier=high .* approval\.requested .* approval\.decided .*by=bob "
        r".* call\.released .* call\.executed",
        story,
    )
    assert "the agent still sees the reviewed description: 'Read one note.'" in step(8)
    assert "notes__read_note is quarantined" in step(8) and "id_rsa" in step(8)
    assert "accepted notes__read_note" in step(9) and "result: Notes live here" in step(9)
    assert re.search(
        r"ok: \d+ records, chain intact, head \w+; \d+ signed checkpoint\(s\) verified", step(10)
    )
    assert re.search(
        r"ok: bundle \S+evidence\.tar\.gz: \d+ records .* signature and every file hash verified", step(10)
    )
    # The gate's own log lines stay out of the demo's output.
    assert "mcp-gate WARNING" not in out + done.stderr
