"""The report page's own script sorts and filters its tables in a browser-like DOM, with no server.

The page is parsed here; Node runs the page's exact inline script against a minimal DOM of its
tables (the few properties the script uses), then clicks headers and types into filters.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from typing import Any

import pytest

from mcp_gate.report import render_html, summarize

NODE = shutil.which("node")

SHIM = r"""
const spec = JSON.parse(require('fs').readFileSync(0, 'utf8'));
function listeners() { const on = {}; return { on, addEventListener(kind, f) { on[kind] = f; } }; }
const tables = spec.tables.map(function (t) {
  const isFilter = { contains: c => c === 'filter' };
  const filter = t.filter ? Object.assign(listeners(), { value: '', classList: isFilter }) : null;
  const rows = t.rows.map(cells => ({
    cells: cells.map(text => ({ textContent: text })), textContent: cells.join(''), style: {},
  }));
  const tbody = {
    rows,
    appendChild(r) { rows.splice(rows.indexOf(r), 1); rows.push(r); },
  };
  const ths = t.headers.map(h => Object.assign(listeners(), { textContent: h, dataset: {} }));
  return {
    filter, tbody, ths, previousElementSibling: filter || { classList: { contains: () => false } },
    tBodies: [tbody],
    querySelectorAll(selector) { return selector === 'th' ? ths : rows; },
  };
});
global.document = { querySelectorAll: selector => (selector === 'table.data' ? tables : []) };
eval(spec.script);
const out = [];
for (const step of spec.steps) {
  const t = tables[step.table];
  if (step.click !== undefined) t.ths[step.click].on.click();
  if (step.type !== undefined) { t.filter.value = step.type; t.filter.on.input(); }
  out.push(t.tbody.rows.filter(r => r.style.display !== 'none').map(r => r.cells.map(c => c.textContent)));
}
process.stdout.write(JSON.stringify(out));
"""


class _Tables(HTMLParser):
    """Each `table.data`: whether a filter input comes right before it, its headers and cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, Any]] = []
        self.script = ""
        self._last: str | None = None
        self._cell: list[str] | None = None
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "table" and "data" in classes:
            self.tables.append({"filter": self._last == "filter", "headers": [], "rows": []})
        elif tag == "tr" and self.tables and self._in_body:
            self.tables[-1]["rows"].append([])
        elif tag in ("th", "td"):
            self._cell = []
        elif tag == "script":
            self._in_script = True
        self._last = "filter" if tag == "input" and "filter" in classes else tag

    _in_body = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "thead":
            self._in_body = True
        elif tag == "table":
            self._in_body = False
        elif tag in ("th", "td") and self._cell is not None:
            text = "".join(self._cell)
            (self.tables[-1]["headers"] if tag == "th" else self.tables[-1]["rows"][-1]).append(text)
            self._cell = None
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script += data
        elif self._cell is not None:
            self._cell.append(data)


def approvals_page() -> tuple[_Tables, int]:
    events: list[dict[str, Any]] = []
    for i, (who, latency) in enumerate((("bob", 90), ("carol", 5), ("bob", 30), ("dave", 600))):
        cid, rid = f"c{i}", f"R{i}"
        base = {"correlation_id": cid, "request_id": rid, "server": "db", "tool": "drop"}
        decided = f"2026-11-24T12:{latency // 60:02d}:{latency % 60:02d}.000000Z"
        events += [
            {"event_type": "approval.requested", "ts": "2026-11-24T12:00:00.000000Z", **base,
             "requester": {"agent": "a", "owner": "alice@example.com"}, "required": 1},
            {"event_type": "approval.decided", "ts": decided, **base, "approver": who, "verdict": "approve",
             "state": "approved"},
        ]  # fmt: skip
    report = summarize(events)
    verification = {"ok": True, "records": len(events), "keys_checked": False}
    page = render_html({**report, "gate": "g", "gate_version": "x", "period": {"since": None, "until": None},
                        "verification": verification})  # fmt: skip
    parsed = _Tables()
    parsed.feed(page)
    index = next(i for i, t in enumerate(parsed.tables) if "latency_seconds" in t["headers"])
    return parsed, index


def run_page(parsed: _Tables, steps: list[dict[str, Any]]) -> list[list[list[str]]]:
    assert NODE is not None
    spec = {"tables": parsed.tables, "script": parsed.script, "steps": steps}
    done = subprocess.run(
        [NODE, "-e", SHIM], input=json.dumps(spec), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    result: list[list[list[str]]] = json.loads(done.stdout)
    return result


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's script")
def test_clicking_a_header_sorts_numbers_as_numbers_and_a_second_click_reverses() -> None:
    parsed, table = approvals_page()
    latency = parsed.tables[table]["headers"].index("latency_seconds")
    approver = parsed.tables[table]["headers"].index("approvers")
    ascending, descending, by_name = run_page(
        parsed, [{"table": table, "click": latency}, {"table": table, "click": latency},
                 {"table": table, "click": approver}],
    )  # fmt: skip
    assert [r[latency] for r in ascending] == ["5.0", "30.0", "90.0", "600.0"]  # not "30.0" < "5.0"
    assert [r[latency] for r in descending] == ["600.0", "90.0", "30.0", "5.0"]
    assert [r[approver] for r in by_name] == ["bob", "bob", "carol", "dave"]


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's script")
def test_typing_in_a_tables_filter_shows_only_its_matching_rows() -> None:
    parsed, table = approvals_page()
    assert all(t["filter"] for t in parsed.tables)  # every data table has its filter right before it
    approver = parsed.tables[table]["headers"].index("approvers")
    bob, nobody, everyone = run_page(
        parsed,
        [{"table": table, "type": "BOB"}, {"table": table, "type": "zzz"}, {"table": table, "type": ""}],
    )
    assert [r[approver] for r in bob] == ["bob", "bob"]
    assert nobody == [] and len(everyone) == 4
