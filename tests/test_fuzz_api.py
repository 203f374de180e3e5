"""Property tests of the approvers' API through a real admin listener: hostile bodies and headers
get a 4xx with a one-line JSON error, never a 500 or a traceback; the listener keeps serving; and
nothing is decided without a valid approver token."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_gate.channels.api import serve_api
from mcp_gate.server import FrontServer
from mcp_gate.testing import (
    NOTES_MANIFEST,
    approver_table,
    notes_server,
    notes_server_table,
    running_gate,
    write_config,
)

pytestmark = pytest.mark.anyio

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LIMIT = 8192  # [http] admin_max_body_bytes for these tests
PATHS = ["/v1/requests/K7Q2M9XA/approve", "/v1/requests/K7Q2M9XA/deny", "/v1/requests/K7Q2M9XA/revoke"]


def make_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "gate",
        servers={"notes": notes_server_table(tmp_path / "notes")},
        manifests={"notes": NOTES_MANIFEST.read_text()},
        approvers={"bob": approver_table("bob@example.com", ["sre"], "tok-bob")},
        extra=f"\n[http]\nadmin_max_body_bytes = {LIMIT}\nbody_timeout = 5\n",
    )


def exchange(port: int, raw: bytes, *, half_close: bool = False) -> bytes:
    """Send raw bytes and read until the server closes (blocking: runs in a worker thread);
    `half_close` ends the client's side at once, for a body shorter than it declared."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(raw)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def post(path: str, body: bytes, headers: list[bytes]) -> bytes:
    head = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += b"".join(h + b"\r\n" for h in headers)
    return head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def assert_one_line_4xx(response: bytes) -> int:
    assert response, "the listener closed without answering"
    status = int(response.split(b" ", 2)[1])
    assert 400 <= status < 500, response[:300]
    body = response.split(b"\r\n\r\n", 1)[1]
    assert b"Traceback" not in body
    error = json.loads(body)["error"]
    assert isinstance(error, str) and "\n" not in error
    return status


def notes_gate(config: Path, **options: Any) -> AbstractAsyncContextManager[FrontServer]:
    """`config`'s gate with the notes server in this process instead of over stdio."""
    notes = notes_server(config.parent.parent / "notes")
    return running_gate(config, servers={"notes": notes}, **options)


async def with_listener(tmp_path: Path, probe: Callable[[int], None]) -> None:
    """Run `probe(port)` in a worker thread against a real gate's admin listener; afterwards the
    listener still serves and no approval request was decided."""
    config = make_config(tmp_path)
    async with notes_gate(config) as front, anyio.create_task_group() as tg:
        port = await tg.start(serve_api, front.gateway, "127.0.0.1", 0)
        await anyio.to_thread.run_sync(probe, port)
        ok = await anyio.to_thread.run_sync(
            exchange,
            port,
            b"GET /v1/requests HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer tok-bob\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert ok.startswith(b"HTTP/1.1 200") and json.loads(ok.split(b"\r\n\r\n", 1)[1]) == {"requests": []}
        records = await front.gateway.engine.store.records(event_type="approval.decided")
        assert records == []
        tg.cancel_scope.cancel()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
HOSTILE_BODIES = st.one_of(
    st.binary(max_size=300),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["note", "for", "reason", "by", "x"]), JSON_VALUES, max_size=3).map(
        lambda v: json.dumps(v).encode()
    ),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n),
    st.integers(min_value=4400, max_value=LIMIT - 10).map(lambda n: b'{"for": ' + b"9" * n + b"}"),
    st.sampled_from(
        [
            b'{"note": NaN}',
            b'{"reason": Infinity}',
            b'{"reason": "a", "reason": "b"}',
            b'{"note": "\xff\xfe"}',
            b'{"reason": "\\ud800"}',
            b"\xef\xbb\xbf{}",
        ]
    ),
)


@FUZZ
@given(body=HOSTILE_BODIES, path=st.sampled_from(PATHS))
def _probe_bodies(port: int, body: bytes, path: str) -> None:
    response = exchange(port, post(path, body, [b"Authorization: Bearer tok-bob"]))
    status = assert_one_line_4xx(response)
    assert status in (400, 404, 413)


async def test_hostile_bodies_from_a_valid_approver_get_a_one_line_4xx(tmp_path: Path) -> None:
    await with_listener(tmp_path, lambda port: _probe_bodies(port))


HEADER_TEXT = st.binary(min_size=0, max_size=200).map(
    lambda b: bytes(c for c in b if c not in b"\r\n\x00") or b"x"
)
AUTHORIZATION = st.one_of(
    st.builds(
        lambda s, t: s + b" " + t,
        st.sampled_from([b"Bearer", b"bearer", b"Basic", b"Token", b""]),
        HEADER_TEXT,
    ),
    st.sampled_from([b"Bearer tok-bob\x01", b"Bearer tok-bo", b"Bearer  tok-bobx", b"Bearer " + b"t" * 8000]),
)


@FUZZ
@given(
    auths=st.lists(AUTHORIZATION, min_size=0, max_size=5),
    host=st.one_of(st.just(b"127.0.0.1"), HEADER_TEXT),
    origin=st.none() | HEADER_TEXT,
    path=st.sampled_from(PATHS),
)
def _probe_headers(port: int, auths: list[bytes], host: bytes, origin: bytes | None, path: str) -> None:
    headers = [b"Authorization: " + a for a in auths]
    if origin is not None:
        headers.append(b"Origin: " + origin)
    raw = post(path, b'{"reason": "no"}', headers).replace(b"Host: 127.0.0.1", b"Host: " + host, 1)
    response = exchange(port, raw)
    status = assert_one_line_4xx(response)
    assert status != 404 or any(a.startswith(b"Bearer tok-bob") for a in auths)


async def test_hostile_headers_never_decide_anything_and_get_a_one_line_4xx(tmp_path: Path) -> None:
    await with_listener(tmp_path, lambda port: _probe_headers(port))


@FUZZ
@given(
    declared=st.integers(min_value=0, max_value=LIMIT * 4), sent=st.integers(min_value=0, max_value=LIMIT * 2)
)
def _probe_lengths(port: int, declared: int, sent: int) -> None:
    head = (
        b"POST /v1/requests/K7Q2M9XA/deny HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer tok-bob\r\n"
        b"Connection: close\r\nContent-Length: " + str(declared).encode() + b"\r\n\r\n"
    )
    response = exchange(port, head + b" " * sent, half_close=True)
    if declared > LIMIT:
        assert assert_one_line_4xx(response) == 413
    elif response:  # a body shorter than declared ends with the client's close: no answer is fine
        assert_one_line_4xx(response)


async def test_content_length_lies_get_413_or_a_4xx_and_the_listener_keeps_serving(tmp_path: Path) -> None:
    await with_listener(tmp_path, lambda port: _probe_lengths(port))


@FUZZ
@given(chunks=st.lists(st.integers(min_value=1, max_value=2048), min_size=1, max_size=8))
def _probe_chunks(port: int, chunks: list[int]) -> None:
    head = (
        b"POST /v1/requests/K7Q2M9XA/deny HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer tok-bob\r\n"
        b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    body = b"".join(f"{n:x}\r\n".encode() + b" " * n + b"\r\n" for n in chunks) + b"0\r\n\r\n"
    status = assert_one_line_4xx(exchange(port, head + body))
    assert status == (413 if sum(chunks) > LIMIT else 400)


async def test_chunked_bodies_past_the_limit_get_413(tmp_path: Path) -> None:
    await with_listener(tmp_path, lambda port: _probe_chunks(port))


def _probe_ambiguous(port: int) -> None:
    for body, why in [
        (b'{"reason": "a", "reason": "b"}', b"appears twice"),
        (b'{"reason": NaN}', b"NaN is not a JSON value"),
        (b'{"reason": -Infinity}', b"-Infinity is not a JSON value"),
    ]:
        response = exchange(port, post(PATHS[1], body, [b"Authorization: Bearer tok-bob"]))
        assert assert_one_line_4xx(response) == 400 and why in response, response


async def test_duplicate_keys_and_nan_are_refused_rather_than_guessed_at(tmp_path: Path) -> None:
    await with_listener(tmp_path, _probe_ambiguous)
