"""The kit's HTTP layer through real HTTP: envelopes for every reply kind, tokens, request IDs, health,
metrics and calls between services."""
from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning
from multidict import CIMultiDictProxy

from gateway.config.settings import Settings
from services.kit import Call, Routes, Service, ServiceSettings
from services.kit.db import REOPEN_INTERVAL
from services.kit.tokens import TokenSigner
from tests.integration.helpers import GENERATED_ID, TIMESTAMP
from tests.process.helpers import connect_refused, wait_until
from tests.services import demo
from tests.services.conftest import MakeSettings, Serve
from tests.services.helpers import Served, bearer, token
from tests.support import free_port

ERROR_KEYS = {"success", "error", "statusCode", "timestamp", "requestId"}


def _expired_token(settings: ServiceSettings) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)  # the spec's development secret is short
        return jwt.encode({"sub": "user_1", "role": "customer", "iat": 1, "exp": 2}, settings.platform.jwt_secret)


async def fetch(method: str, url: str, **options: Any) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """(status, decoded JSON body, headers) of one request."""
    if isinstance(options.get("data"), bytes):
        options["data"] = io.BytesIO(options["data"])  # aiohttp warns about a large bytes body
    async with aiohttp.ClientSession() as session, session.request(method, url, **options) as response:
        return response.status, await response.json(), response.headers


def assert_error(body: dict[str, Any], status: int, headers: CIMultiDictProxy[str]) -> None:
    assert set(body) >= ERROR_KEYS, body
    assert body["success"] is False
    assert body["statusCode"] == status
    assert TIMESTAMP.match(str(body["timestamp"]))
    assert body["requestId"] == headers["X-Request-ID"]


_ERRORS = [
    ("unknown-route", "GET", "/nothing", {}, None, 404, "No route for /nothing"),
    ("wrong-method", "DELETE", "/things", {}, None, 405, "Method DELETE not allowed for /things"),
    ("no-token", "GET", "/whoami", {}, None, 401, "Missing bearer token"),
    (
        "not-bearer",
        "GET",
        "/whoami",
        {"Authorization": "Basic dXNlcjpwYXNz"},
        None,
        401,
        "Expected an Authorization: Bearer token",
    ),
    ("garbage-token", "GET", "/whoami", {"Authorization": "Bearer abc.def.ghi"}, None, 401, "Malformed token"),
    ("invalid-json", "POST", "/things", "user", b'{"name": "x",', 400, "The body is not valid JSON"),
    ("not-utf8", "POST", "/things", "user", b'{"name": "caf\xe9"}', 400, "The body is not valid UTF-8"),
    ("empty-body", "POST", "/things", "user", b"", 400, "A JSON body is required"),
    ("role-missing", "GET", "/admin", "user", None, 403, "Your role is not allowed to do this"),
    ("too-large", "POST", "/things", "user", b"[" + b"1," * 600_000 + b"1]", 413, "Request body too large"),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "message"),
    [case[1:] for case in _ERRORS],
    ids=[case[0] for case in _ERRORS],
)
async def test_every_error_uses_the_envelope(
    serve: Serve,
    make_settings: MakeSettings,
    method: str,
    path: str,
    headers: object,
    body: bytes | None,
    status: int,
    message: str,
) -> None:
    settings = make_settings()
    service = await serve(demo.publisher(), settings)
    sent = bearer(settings) if headers == "user" else headers

    code, reply, reply_headers = await fetch(method, service.url + path, headers=sent, data=body)

    assert code == status
    assert_error(reply, status, reply_headers)
    assert reply["error"] == message
    assert reply_headers["Content-Type"] == "application/json; charset=utf-8"
    if status == 405:
        assert set(reply_headers["Allow"].split(",")) == {"GET", "POST"}
    if status == 401:
        assert reply_headers["WWW-Authenticate"].startswith("Bearer")


async def test_invalid_fields_are_422_with_each_failing_field_in_camel_case(
    serve: Serve, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    service = await serve(demo.publisher(), settings)

    code, reply, headers = await fetch(
        "POST",
        service.url + "/things",
        headers=bearer(settings),
        json={"name": "", "quantity": -1, "failAfterWrite": "maybe", "colour": "red"},
    )

    assert code == 422
    assert_error(reply, 422, headers)
    fields = {item["field"]: item for item in reply["details"]}
    assert set(fields) == {"name", "quantity", "failAfterWrite", "colour"}
    assert fields["quantity"]["type"] == "greater_than_equal"
    assert fields["colour"]["type"] == "extra_forbidden"
    assert all(item["message"] for item in fields.values())


async def test_a_bug_is_a_500_that_leaks_nothing(
    serve: Serve, make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()
    service = await serve(demo.publisher(), settings)

    code, reply, headers = await fetch("GET", service.url + "/boom", headers=bearer(settings))

    assert code == 500
    assert_error(reply, 500, headers)
    assert reply["error"] == "Internal Server Error"
    assert "details" not in reply
    assert "hunter2" not in str(reply) and "secret" not in str(reply)
    # The operator gets the traceback in the log, under the request's ID.
    logged = [record for record in caplog.records if record.name == "services.http"]
    assert logged and logged[0].exc_info is not None


async def test_expired_and_foreign_tokens_are_refused(serve: Serve, make_settings: MakeSettings) -> None:
    settings = make_settings()
    service = await serve(demo.publisher(), settings)
    expired = _expired_token(settings)
    other_key = TokenSigner(make_settings(platform=Settings(jwt_secret="another-secret-of-at-least-32-chars!!"))).sign(
        {"sub": "user_1", "role": "customer"}, ttl=60
    )
    service_sub_user_role = token(settings, "service:order-service", role="customer")

    for bad, message in (
        (expired, "Token expired"),
        (other_key.token, "Invalid token signature"),
        (service_sub_user_role, "Invalid token claims"),
    ):
        code, reply, headers = await fetch("GET", service.url + "/whoami", headers={"Authorization": f"Bearer {bad}"})
        assert (code, reply["error"]) == (401, message)
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]


async def test_identity_comes_from_the_token_not_from_user_headers(serve: Serve, make_settings: MakeSettings) -> None:
    settings = make_settings()
    service = await serve(demo.publisher(), settings)

    code, reply, _ = await fetch(
        "GET",
        service.url + "/whoami",
        headers={**bearer(settings, "user_alice", "seller"), "X-User-ID": "user_mallory", "X-User-Role": "admin"},
    )
    code_without_token, _, _ = await fetch(
        "GET", service.url + "/whoami", headers={"X-User-ID": "user_mallory", "X-User-Role": "admin"}
    )

    assert code == 200
    assert reply["data"]["id"] == "user_alice" and reply["data"]["role"] == "seller"
    assert code_without_token == 401


async def test_public_routes_serve_anyone_and_still_know_a_good_token(
    serve: Serve, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    service = await serve(demo.publisher(), settings)

    anonymous = await fetch("GET", service.url + "/open")
    bad_token = await fetch("GET", service.url + "/open", headers={"Authorization": "Bearer nope"})
    known = await fetch("GET", service.url + "/open", headers=bearer(settings, "user_bob"))

    assert [result[0] for result in (anonymous, bad_token, known)] == [200, 200, 200]
    assert [result[1]["data"]["caller"] for result in (anonymous, bad_token, known)] == [None, None, "user_bob"]


async def test_success_envelope_and_request_ids(serve: Serve, make_settings: MakeSettings) -> None:
    settings = make_settings()
    service = await serve(demo.publisher(), settings)

    code, reply, headers = await fetch(
        "POST",
        service.url + "/things",
        headers={**bearer(settings), "X-Request-ID": "trace-123"},
        json={"name": "cup", "quantity": 2},
    )
    generated = await fetch("GET", service.url + "/things", headers={**bearer(settings), "X-Request-ID": "bad id!"})

    assert code == 201
    assert set(reply) == {"success", "data", "timestamp", "requestId"}
    assert reply["success"] is True and reply["requestId"] == "trace-123" == headers["X-Request-ID"]
    assert TIMESTAMP.match(str(reply["timestamp"]))
    assert generated[1]["data"] == [{"id": 1, "name": "cup", "quantity": 2}]
    assert (
        GENERATED_ID.match(generated[2]["X-Request-ID"]) and generated[1]["requestId"] == generated[2]["X-Request-ID"]
    )


async def test_a_service_calls_another_with_a_service_token_and_the_request_id(
    serve: Serve, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    callee = await serve(demo.publisher("user-service"), make_settings(data_dir=settings.data_dir / "callee"))
    caller = await serve(demo.publisher("order-service"), make_settings(service_urls={"user-service": callee.url}))

    code, reply, _ = await fetch(
        "GET", caller.url + "/ask/user-service", headers={**bearer(settings), "X-Request-ID": "chain-1"}
    )

    assert code == 200
    answer = reply["data"]["answer"]
    assert answer == {
        "id": "service:order-service",
        "role": "service",
        "service": "order-service",
        "requestId": "chain-1",
    }


async def test_an_unreachable_service_is_a_502_envelope(serve: Serve, make_settings: MakeSettings) -> None:
    settings = make_settings(service_urls={"user-service": f"http://127.0.0.1:{free_port()}"})
    caller = await serve(demo.publisher("order-service"), settings)

    code, reply, headers = await fetch("GET", caller.url + "/ask/user-service", headers=bearer(settings))

    assert code == 502
    assert_error(reply, 502, headers)
    assert reply["details"] == {"service": "user-service"}


async def test_health_reports_dependencies_and_stays_up_without_the_broker(
    serve: Serve, make_settings: MakeSettings
) -> None:
    dead_broker = f"amqp://guest:secret-pw@127.0.0.1:{free_port()}/"
    service = await serve(demo.publisher(), make_settings(amqp_url=dead_broker))

    code, reply, _ = await fetch("GET", service.url + "/health")

    assert code == 200
    data = reply["data"]
    assert data["status"] == "degraded"
    checks = data["checks"]
    assert checks["database"] == {"status": "up"}
    assert checks["bus"]["status"] == "down" and checks["bus"]["kind"] == "rabbitmq"
    assert "secret-pw" not in str(reply)
    assert checks["outbox"]["pending"] == 0


SQLITE_HEADER = 100
"""Bytes of an SQLite file's header; a file whose header is garbage is "not a database"."""


def corrupt_header(database: Path) -> bytes:
    """Overwrite the database file's header as a failing disk would; returns the original bytes.

    The WAL is checkpointed into the file first (and emptied), so the service's connections must read the
    file itself on their next query."""
    with contextlib.closing(sqlite3.connect(database)) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    with database.open("r+b") as file:
        original = file.read(SQLITE_HEADER)
        file.seek(0)
        file.write(b"\xde\xad" * (SQLITE_HEADER // 2))
    return original


def restore_header(database: Path, original: bytes) -> None:
    """Put the header back as a repair would: the file alone, nobody else writes to it."""
    with database.open("r+b") as file:
        file.write(original)


async def test_health_is_503_down_while_the_database_fails_and_up_again_after(
    serve: Serve, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    service = await serve(demo.publisher(), settings)
    await fetch("POST", service.url + "/things", headers=bearer(settings), json={"name": "cup", "quantity": 1})
    await wait_until(lambda: _outbox_empty(service), 5, "the relay")
    database = settings.database_path(service.runtime.name)

    original = corrupt_header(database)
    try:
        code, reply, headers = await fetch("GET", service.url + "/health")
        things, _, _ = await fetch("GET", service.url + "/things", headers=bearer(settings))
    finally:
        restore_header(database, original)
    await asyncio.sleep(REOPEN_INTERVAL)  # connections that failed are replaced at most this often
    recovered, after, _ = await fetch("GET", service.url + "/health")

    assert code == 503
    assert_error(reply, 503, headers)
    assert reply["error"] == "product-service is down"
    report = reply["details"]
    assert report["status"] == "down"
    assert report["checks"]["database"] == {"status": "down"}
    assert report["checks"]["outbox"] == {"status": "unknown"}
    assert things == 500  # what health reported: the service cannot read its data
    assert (recovered, after["data"]["status"], after["data"]["checks"]["database"]) == (200, "ok", {"status": "up"})


async def test_after_the_file_is_repaired_reads_and_writes_work_again_without_a_restart(
    serve: Serve, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    service = await serve(demo.publisher(), settings)
    headers = bearer(settings)
    await fetch("POST", service.url + "/things", headers=headers, json={"name": "cup", "quantity": 1})
    await wait_until(lambda: _outbox_empty(service), 5, "the relay")
    database = settings.database_path(service.runtime.name)

    original = corrupt_header(database)
    try:
        read_while_broken, _, _ = await fetch("GET", service.url + "/things", headers=headers)
        write_while_broken, _, _ = await fetch(
            "POST", service.url + "/things", headers=headers, json={"name": "lamp", "quantity": 2}
        )
    finally:
        restore_header(database, original)
    await asyncio.sleep(REOPEN_INTERVAL)
    written, created, _ = await fetch(
        "POST", service.url + "/things", headers=headers, json={"name": "vase", "quantity": 3}
    )
    read, listed, _ = await fetch("GET", service.url + "/things", headers=headers)

    assert (read_while_broken, write_while_broken) == (500, 500)
    assert written == 201, created
    assert read == 200, listed
    assert [thing["name"] for thing in listed["data"]] == ["cup", "vase"]


async def _outbox_empty(service: Served) -> bool:
    return await service.runtime.relay.pending() == (0, 0.0)


def gated_service(entered: asyncio.Event, gate: asyncio.Event) -> Service:
    """A service whose GET /slow waits for the test's gate before it answers."""
    routes = Routes()

    @routes.get("/slow")
    async def slow(call: Call) -> dict[str, object]:
        entered.set()
        await gate.wait()
        return {"finished": True}

    return Service(name="product-service", port=3002, routes=routes)


async def test_shutdown_sets_draining_while_a_request_finishes(serve: Serve, make_settings: MakeSettings) -> None:
    entered, gate = asyncio.Event(), asyncio.Event()
    settings = make_settings()
    service = await serve(gated_service(entered, gate), settings)
    runtime = service.runtime
    port = int(service.url.rsplit(":", 1)[1])
    assert (await runtime.health())[1]["status"] == "ok"
    request = asyncio.create_task(fetch("GET", service.url + "/slow", headers=bearer(settings)))
    await asyncio.wait_for(entered.wait(), 5)

    # The runner's cleanup is what SIGTERM runs in `kadai service` (services/kit/server.py).
    stopping = asyncio.create_task(service.stop())
    await wait_until(lambda: runtime.draining, 5, "shutdown to start draining")
    healthy, report = await runtime.health()
    refused = await connect_refused(port)
    assert not request.done() and not stopping.done()
    gate.set()
    code, reply, _ = await asyncio.wait_for(request, 5)
    await asyncio.wait_for(stopping, 5)

    assert (healthy, report["status"]) == (False, "draining")
    assert refused  # the listener closed first: no new requests while the last ones finish
    assert (code, reply["data"]) == (200, {"finished": True})


async def test_health_is_503_while_draining(serve: Serve, make_settings: MakeSettings) -> None:
    service = await serve(demo.publisher(), make_settings())
    service.runtime.draining = True

    code, reply, headers = await fetch("GET", service.url + "/health")

    assert code == 503
    assert_error(reply, 503, headers)
    assert reply["details"]["status"] == "draining"


async def test_metrics_are_exposed_with_the_agreed_names(serve: Serve, make_settings: MakeSettings) -> None:
    settings = make_settings()
    service = await serve(demo.publisher(), settings)
    await fetch("POST", service.url + "/things", headers=bearer(settings), json={"name": "cup", "quantity": 1})
    await fetch("GET", service.url + "/nothing")
    await wait_until(
        lambda: service.metric("kadai_service_events_published_total", type=demo.THING_CREATED) == 1, 5, "the relay"
    )

    async with aiohttp.ClientSession() as session, session.get(service.url + "/metrics") as response:
        text = await response.text()

    assert response.status == 200 and response.content_type == "text/plain"
    requests = (
        'kadai_service_requests_total{method="POST",route="/things",service="product-service",status_class="2xx"}'
    )
    assert f"{requests} 1.0" in text
    assert 'route="unmatched",service="product-service",status_class="4xx"' in text
    assert 'kadai_service_request_duration_seconds_bucket{le="0.005",route="/things",service="product-service"}' in text
    assert 'kadai_service_events_published_total{service="product-service",type="demo.thing.created"}' in text
    for name in (
        "kadai_service_outbox_pending",
        "kadai_service_events_consumed_total",
        "kadai_service_dead_letters_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text
