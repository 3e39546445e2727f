"""Graceful shutdown of a real `kadai service` process: SIGTERM lets a request in flight finish, and the
event it committed while the service was stopping reaches RabbitMQ before the process exits."""
from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from services.events import ORDER_CREATED
from services.product import SERVICE as PRODUCTS
from tests.conftest import StartUpstream
from tests.process.helpers import clean_env, connect_refused, json_lines, start_kadai_service, wait_until
from tests.services.conftest import MakeSettings, Serve
from tests.services.helpers import EventProbe, bearer
from tests.support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]

_FORWARDED = ("Authorization", "Content-Type", "Accept", "X-Request-ID")


def gated_forwarder(target: str, entered: asyncio.Event, gate: asyncio.Event) -> web.Application:
    """An HTTP hop in front of a real service that holds every request until the test opens the gate."""

    async def forward(request: web.Request) -> web.Response:
        entered.set()
        await gate.wait()
        headers = {name: request.headers[name] for name in _FORWARDED if name in request.headers}
        body = await request.read()
        async with (
            aiohttp.ClientSession() as session,
            session.request(request.method, target + request.path_qs, data=body, headers=headers) as answer,
        ):
            return web.Response(
                status=answer.status, body=await answer.read(), headers={"Content-Type": answer.headers["Content-Type"]}
            )

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", forward)
    return app


async def request_json(method: str, url: str, **options: Any) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.request(method, url, **options) as response,
    ):
        return response.status, await response.json()


async def test_sigterm_lets_a_request_in_flight_finish_and_publishes_its_event_before_exiting(
    tmp_path: Path,
    serve: Serve,
    make_settings: MakeSettings,
    start_upstream: StartUpstream,
    probe: EventProbe,
    rabbitmq_server: str,
    events_prefix: str,
) -> None:
    settings = make_settings()
    products = await serve(PRODUCTS, settings)
    status, created = await request_json(
        "POST",
        products.url + "/products",
        headers=bearer(settings, "user_seller", "seller"),
        json={"name": "Lamp", "priceCents": 2500, "stock": 10},
    )
    assert status == 201, created
    product_id = created["data"]["product"]["id"]
    entered, gate = asyncio.Event(), asyncio.Event()
    # order-service checks each new order's items with product-service: that call waits at the gate.
    product_url = await start_upstream(gated_forwarder(products.url, entered, gate))

    port = free_port()
    data_dir = tmp_path / "order-data"
    env = clean_env(
        AMQP_URL=rabbitmq_server,
        KADAI_EVENTS_PREFIX=events_prefix,
        KADAI_DATA_DIR=str(data_dir),
        PRODUCT_SERVICE_URL=product_url,
        ORDER_PRODUCT_TIMEOUT="20s",
        KADAI_DRAIN_TIMEOUT="20s",
        PYTHONUNBUFFERED="1",
    )
    log_path = tmp_path / "order-service.log"
    process = start_kadai_service("order", port, env, log_path)
    order: asyncio.Task[tuple[int, dict[str, Any]]] | None = None
    try:

        async def connected() -> bool:
            assert process.poll() is None, log_path.read_text()
            with contextlib.suppress(aiohttp.ClientConnectionError):
                status, health = await request_json("GET", f"http://127.0.0.1:{port}/health")
                return status == 200 and health["data"]["status"] == "ok"  # "degraded" until the broker answers
            return False

        await wait_until(connected, 20, "order-service to answer, connected to RabbitMQ")
        order = asyncio.create_task(
            request_json(
                "POST",
                f"http://127.0.0.1:{port}/orders",
                headers={**bearer(settings, "user_buyer", "customer"), "X-Request-ID": "in-flight-1"},
                json={"items": [{"productId": product_id, "quantity": 2}]},
            )
        )
        await asyncio.wait_for(entered.wait(), 10)

        process.send_signal(signal.SIGTERM)
        await wait_until(lambda: connect_refused(port), 10, "order-service to stop listening")
        await asyncio.sleep(0.5)
        assert process.poll() is None and not order.done()  # waiting for the request, not gone
        gate.set()
        status, placed = await asyncio.wait_for(order, 20)
        code = await asyncio.to_thread(process.wait, 20)
    finally:
        gate.set()
        if process.poll() is None:
            process.kill()
            process.wait()
        if order is not None and not order.done():
            order.cancel()

    assert code == 0, log_path.read_text()
    assert status == 201, placed
    order_id = placed["data"]["order"]["id"]
    assert placed["data"]["order"]["status"] == "pending"
    [event] = await probe.wait_for(1, timeout=10)
    assert (event.type, event.source, event.request_id) == (ORDER_CREATED, "order-service", "in-flight-1")
    assert event.data["orderId"] == order_id and event.data["items"][0]["productId"] == product_id
    with contextlib.closing(sqlite3.connect(data_dir / "order-service.sqlite3")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM kadai_outbox WHERE sent_at IS NULL").fetchone() == (0,)
        assert conn.execute("SELECT status FROM orders WHERE id = ?", (order_id,)).fetchone() == ("pending",)
    messages = [line["message"] for line in json_lines(log_path.read_text())]
    draining = messages.index("shutting down: draining")
    answered = messages.index("POST /orders 201")
    assert draining < answered < len(messages) - 1 and messages[-1] == "order-service stopped"
