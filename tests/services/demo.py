"""Two small services built on the kit for its tests: a publisher of "demo.thing.created" events with
routes that exercise every reply kind, and a consumer whose handler can be made to fail or to wait."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pydantic import Field

from services.kit import (
    Call,
    CamelModel,
    Event,
    EventContext,
    Migration,
    Ok,
    Routes,
    Service,
    ok,
)

THING_CREATED = "demo.thing.created"


class ThingIn(CamelModel):
    name: str = Field(min_length=1, max_length=50)
    quantity: int = Field(ge=0)
    fail_after_write: bool = False


def publisher(name: str = "product-service") -> Service:
    routes = Routes()

    @routes.post("/things")
    async def create(call: Call) -> Ok:
        body = await call.body(ThingIn)
        async with call.db.transaction() as tx:
            result = await tx.execute("INSERT INTO things (name, quantity) VALUES (?, ?)", (body.name, body.quantity))
            event = tx.publish(THING_CREATED, {"thingId": result.lastrowid, "name": body.name})
            if body.fail_after_write:
                raise RuntimeError("failed after writing")
        return ok({"id": result.lastrowid, "eventId": event.id}, status=201)

    @routes.get("/things")
    async def things(call: Call) -> list[dict[str, object]]:
        return [dict(row) for row in await call.db.fetchall("SELECT id, name, quantity FROM things ORDER BY id")]

    @routes.get("/boom")
    async def boom(call: Call) -> Ok:
        raise RuntimeError("secret-internal-detail: password=hunter2 at /srv/kadai/db.py:42")

    @routes.get("/whoami")
    async def whoami(call: Call) -> dict[str, object]:
        caller = call.caller
        return {"id": caller.id, "role": caller.role, "service": caller.service, "requestId": call.request_id}

    @routes.get("/open", public=True)
    async def open_route(call: Call) -> dict[str, object]:
        caller = call.optional_caller
        return {"caller": caller.id if caller else None}

    @routes.get("/admin", roles=("admin",))
    async def admin(call: Call) -> dict[str, object]:
        return {"admin": True}

    @routes.get("/ask/{service}")
    async def ask(call: Call) -> dict[str, object]:
        """Calls another service's /whoami with this service's token."""
        reply = await call.services.get(call.path("service"), "/whoami", timeout=2.0)
        return {"status": reply.status, "answer": reply.data}

    return Service(
        name=name,
        port=3002,
        routes=routes,
        migrations=(
            Migration(1, "things", "CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"),
            Migration(2, "thing quantity", "ALTER TABLE things ADD COLUMN quantity INTEGER NOT NULL DEFAULT 0"),
        ),
        publishes=(THING_CREATED,),
    )


@dataclass
class Controls:
    """How a test steers the consumer's handler."""

    poison: set[str] = field(default_factory=set)
    """Thing names the handler fails on."""
    gate: asyncio.Event | None = None
    """When set (the object, not the event), the handler waits for it before writing."""
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[tuple[str, int]] = field(default_factory=list)
    """(event ID, attempt) of every handler call."""


def consumer(controls: Controls, name: str = "analytics-service") -> Service:
    async def on_thing(event: Event, ctx: EventContext) -> None:
        controls.calls.append((event.id, ctx.attempt))
        controls.entered.set()
        if controls.gate is not None:
            await controls.gate.wait()
        await ctx.tx.execute("INSERT INTO effects (event_id, name) VALUES (?, ?)", (event.id, event.data["name"]))
        if event.data["name"] in controls.poison:
            raise ValueError(f"cannot handle {event.data['name']}")

    routes = Routes()

    @routes.get("/effects")
    async def effects(call: Call) -> list[dict[str, object]]:
        return [dict(row) for row in await call.db.fetchall("SELECT event_id, name FROM effects ORDER BY rowid")]

    return Service(
        name=name,
        port=3007,
        routes=routes,
        migrations=(Migration(1, "effects", "CREATE TABLE effects (event_id TEXT NOT NULL, name TEXT NOT NULL)"),),
        handlers={THING_CREATED: on_thing},
    )
