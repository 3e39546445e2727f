"""broadcast-service: campaigns through HTTP, their hand-off as broadcast.requested on the test's exchange,
delivery counts from notification events, the scheduler (also across a restart), and the whole way
through a real notification-service."""
from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from services import broadcast, notification
from services.broadcast.events import BROADCAST_REQUESTED
from services.events import NOTIFICATION_SENT, USER_CREATED
from services.notification.events import NOTIFICATION_FAILED
from tests.process.helpers import wait_until
from tests.services.conftest import MakeSettings, Serve
from tests.services.consumer_support import call, consuming, event, handled, publish_all, published
from tests.services.helpers import EventProbe, Served, check_openapi

SELLER = ("user_seller", "seller")
ADMIN = ("user_admin", "admin")
FAST = {"BROADCAST_SCHEDULER_INTERVAL": "0.05", "NOTIFY_POLL_INTERVAL": "0.05"}
EVERYONE = {"name": "x", "message": "y", "audience": "all-customers"}


def test_the_openapi_paths_document_every_route() -> None:
    check_openapi(broadcast.SERVICE)


async def start(serve: Serve, make_settings: MakeSettings, rabbitmq_server: str, **environ: str) -> Served:
    service = await serve(broadcast.SERVICE, make_settings(amqp_url=rabbitmq_server, environ={**FAST, **environ}))
    await consuming(service)
    return service


@pytest.fixture
async def broadcasts(serve: Serve, make_settings: MakeSettings, rabbitmq_server: str) -> Served:
    return await start(serve, make_settings, rabbitmq_server)


async def create(service: Served, who: tuple[str, str] = SELLER, **fields: Any) -> dict[str, Any]:
    body = {"name": "Spring sale", "message": "20% off everything", "audience": ["user_c1", "+15550001111"], **fields}
    status, reply = await call(service, "POST", "/broadcasts", as_=who, json=body)
    assert status == 201, reply
    campaign: dict[str, Any] = reply["data"]
    return campaign


async def campaign(service: Served, campaign_id: str, who: tuple[str, str] = SELLER) -> dict[str, Any]:
    status, reply = await call(service, "GET", f"/broadcasts/{campaign_id}", as_=who)
    assert status == 200, reply
    found: dict[str, Any] = reply["data"]
    return found


def outcome(kind: str, campaign_id: str, notification_id: str) -> Any:
    return event(
        kind,
        {
            "notificationId": notification_id,
            "channel": "sms",
            "to": "x",
            "template": "broadcast",
            "campaignId": campaign_id,
        },
        source="notification-service",
    )


@pytest.mark.rabbitmq
async def test_a_campaign_is_handed_over_and_counted_until_every_recipient_is_in(
    broadcasts: Served, probe: EventProbe
) -> None:
    created = await create(broadcasts, audience=["user_c1", "+15550001111", "c@example.com", "user_c1"])
    assert created["status"] == "draft" and created["scheduledAt"] is None and created["ownerId"] == "user_seller"
    assert created["counts"] == {"recipients": 0, "delivered": 0, "failed": 0, "pending": 0}

    status, reply = await call(broadcasts, "POST", f"/broadcasts/{created['id']}/send", as_=SELLER)

    assert status == 202 and reply["data"]["status"] == "sending" and reply["data"]["requestedAt"]
    assert reply["data"]["counts"] == {"recipients": 3, "delivered": 0, "failed": 0, "pending": 3}
    [requested] = await published(probe, BROADCAST_REQUESTED, 1)
    assert requested.data == {
        "campaignId": created["id"],
        "senderId": "user_seller",
        "message": "20% off everything",
        "recipients": ["user_c1", "+15550001111", "c@example.com"],
    }

    first = outcome(NOTIFICATION_SENT, created["id"], "ntf_1")
    await publish_all(
        probe,
        first,
        first,
        outcome(NOTIFICATION_SENT, created["id"], "ntf_2"),
        outcome(NOTIFICATION_SENT, "bc_someone_else", "ntf_9"),
    )
    await handled(broadcasts, NOTIFICATION_SENT, 3)
    await handled(broadcasts, NOTIFICATION_SENT, 1, outcome="duplicate")
    halfway = await campaign(broadcasts, created["id"])
    assert halfway["status"] == "sending"
    assert halfway["counts"] == {"recipients": 3, "delivered": 2, "failed": 0, "pending": 1}

    await probe.publish(outcome(NOTIFICATION_FAILED, created["id"], "ntf_3"))
    await handled(broadcasts, NOTIFICATION_FAILED, 1)
    done = await campaign(broadcasts, created["id"])
    assert done["status"] == "sent" and done["completedAt"]
    assert done["counts"] == {"recipients": 3, "delivered": 2, "failed": 1, "pending": 0}
    again = await call(broadcasts, "POST", f"/broadcasts/{created['id']}/send", as_=SELLER)
    assert again[0] == 409 and again[1]["details"] == {"status": "sent"}


@pytest.mark.rabbitmq
async def test_all_customers_is_resolved_from_user_events_in_batches(
    serve: Serve, make_settings: MakeSettings, rabbitmq_server: str, probe: EventProbe
) -> None:
    service = await start(serve, make_settings, rabbitmq_server, BROADCAST_BATCH_SIZE="2")
    users = [(f"user_c{number}", "customer") for number in range(5)] + [("user_s1", "seller"), ("user_a1", "admin")]
    await publish_all(probe, *(event(USER_CREATED, {"userId": id_, "role": role}) for id_, role in users))
    await handled(service, USER_CREATED, len(users))
    created = await create(service, ADMIN, audience="all-customers")
    assert created["audience"] == "all-customers"

    status, reply = await call(service, "POST", f"/broadcasts/{created['id']}/send", as_=ADMIN)

    assert status == 202 and reply["data"]["counts"]["recipients"] == 5
    batches = await published(probe, BROADCAST_REQUESTED, 3)
    assert [len(item.data["recipients"]) for item in batches] == [2, 2, 1]
    assert sorted(r for item in batches for r in item.data["recipients"]) == [f"user_c{n}" for n in range(5)]


@pytest.mark.rabbitmq
async def test_an_empty_audience_is_sent_at_once(broadcasts: Served, probe: EventProbe) -> None:
    created = await create(broadcasts, audience="all-customers")

    status, reply = await call(broadcasts, "POST", f"/broadcasts/{created['id']}/send", as_=SELLER)

    assert status == 202 and reply["data"]["status"] == "sent" and reply["data"]["completedAt"]
    await wait_until(lambda: len(probe.received) == 0, 0.3, "nothing published")


@pytest.mark.rabbitmq
async def test_a_scheduled_campaign_goes_out_when_due_even_after_a_restart(
    serve: Serve, make_settings: MakeSettings, rabbitmq_server: str, probe: EventProbe
) -> None:
    settings = make_settings(amqp_url=rabbitmq_server, environ=FAST)
    first = await serve(broadcast.SERVICE, settings)
    due = datetime.now(UTC) + timedelta(seconds=0.6)
    later = datetime.now(UTC) + timedelta(hours=1)
    soon = await create(first, scheduledAt=due.isoformat())
    kept = await create(first, scheduledAt=later.astimezone(timezone(timedelta(hours=2))).isoformat())
    assert soon["status"] == "scheduled" and soon["scheduledAt"] == due.isoformat(timespec="milliseconds")[:23] + "Z"
    assert kept["scheduledAt"].endswith("Z")  # stored in UTC whatever zone it came in
    await first.stop()
    with sqlite3.connect(settings.database_path("broadcast-service")) as db:
        assert db.execute("SELECT status FROM campaigns WHERE id = ?", (soon["id"],)).fetchone() == ("scheduled",)
    await asyncio.sleep(max(0.0, due.timestamp() - time.time()))  # it falls due while the service is down

    second = await serve(broadcast.SERVICE, settings)

    [requested] = await published(probe, BROADCAST_REQUESTED, 1)
    assert requested.data["campaignId"] == soon["id"] and requested.request_id
    assert (await campaign(second, soon["id"]))["status"] == "sending"
    assert (await campaign(second, kept["id"]))["status"] == "scheduled"
    early = await call(second, "POST", f"/broadcasts/{kept['id']}/send", as_=SELLER)
    assert early[0] == 202 and early[1]["data"]["status"] == "sending"


@pytest.mark.rabbitmq
async def test_the_routes_answer_only_owners_and_admins(broadcasts: Served) -> None:
    mine = await create(broadcasts)
    theirs = await create(broadcasts, ("user_other_seller", "seller"))

    listed = await call(broadcasts, "GET", "/broadcasts", as_=SELLER)
    everything = await call(broadcasts, "GET", "/broadcasts?pageSize=1&page=2", as_=ADMIN)
    by_owner = await call(broadcasts, "GET", "/broadcasts?ownerId=user_other_seller&status=draft", as_=ADMIN)

    assert [item["id"] for item in listed[1]["data"]["items"]] == [mine["id"]]
    assert everything[1]["data"]["pagination"] == {"page": 2, "pageSize": 1, "total": 2, "totalPages": 2}
    assert [item["id"] for item in by_owner[1]["data"]["items"]] == [theirs["id"]]
    assert (await campaign(broadcasts, theirs["id"], ADMIN))["id"] == theirs["id"]
    assert (await call(broadcasts, "GET", f"/broadcasts/{theirs['id']}", as_=SELLER))[0] == 404
    assert (await call(broadcasts, "POST", f"/broadcasts/{theirs['id']}/send", as_=SELLER))[0] == 404
    assert (await call(broadcasts, "GET", "/broadcasts/bc_missing", as_=ADMIN))[0] == 404
    assert (await call(broadcasts, "GET", "/broadcasts?ownerId=user_other_seller", as_=SELLER))[0] == 403
    assert (await call(broadcasts, "GET", "/broadcasts"))[0] == 401
    customer = await call(broadcasts, "POST", "/broadcasts", as_=("user_c1", "customer"), json={})
    assert customer[0] == 403 and customer[1]["details"] == {"allowedRoles": ["admin", "seller"]}


@pytest.mark.rabbitmq
@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"name": " ", "message": "", "audience": []}, {"name", "message", "audience"}),
        ({"name": "x", "message": "y", "audience": ["user_1", "not a recipient!", 7]}, {"audience"}),
        ({"name": "x", "message": "y", "audience": "everyone"}, {"audience"}),
        ({**EVERYONE, "scheduledAt": "2020-01-01T00:00:00Z"}, {"scheduledAt"}),
        ({**EVERYONE, "scheduledAt": "2999-01-01T00:00:00"}, {"scheduledAt"}),
        # In the future, but past year 9999 once in UTC: no date the service can store.
        ({**EVERYONE, "scheduledAt": "9999-12-31T23:59:59-14:00"}, {"scheduledAt"}),
        ({**EVERYONE, "colour": "red"}, {"colour"}),
    ],
    ids=["empty-fields", "bad-recipient", "unknown-audience", "past", "no-zone", "beyond-year-9999", "unknown-field"],
)
async def test_invalid_campaigns_are_422_with_the_failing_fields(
    broadcasts: Served, body: dict[str, Any], fields: set[str]
) -> None:
    status, reply = await call(broadcasts, "POST", "/broadcasts", as_=SELLER, json=body)

    assert status == 422, reply
    assert {item["field"].split(".")[0] for item in reply["details"]} >= fields
    assert all(item["field"].split(".")[0] in fields for item in reply["details"]), reply["details"]


@pytest.mark.rabbitmq
async def test_a_body_that_is_not_json_is_400(broadcasts: Served) -> None:
    status, reply = await call(broadcasts, "POST", "/broadcasts", as_=SELLER, data=b"{not json")
    assert (status, reply["error"]) == (400, "The body is not valid JSON")


@pytest.mark.rabbitmq
async def test_a_campaign_reaches_its_recipients_through_the_notification_service(
    serve: Serve, make_settings: MakeSettings, rabbitmq_server: str, probe: EventProbe
) -> None:
    settings = make_settings(amqp_url=rabbitmq_server, environ=FAST)
    campaigns = await serve(broadcast.SERVICE, settings)
    notifications = await serve(notification.SERVICE, settings)
    await consuming(campaigns)
    await consuming(notifications)
    await probe.publish(event(USER_CREATED, {"userId": "user_c1", "email": "c1@example.com", "role": "customer"}))
    await handled(notifications, USER_CREATED, 1)
    await handled(campaigns, USER_CREATED, 1)
    created = await create(campaigns, audience="all-customers")

    await call(campaigns, "POST", f"/broadcasts/{created['id']}/send", as_=SELLER)

    [sent] = await published(probe, NOTIFICATION_SENT, 1)
    assert sent.data["to"] == "c1@example.com" and sent.data["campaignId"] == created["id"]
    await handled(campaigns, NOTIFICATION_SENT, 1)
    done = await campaign(campaigns, created["id"])
    assert done["status"] == "sent" and done["counts"]["delivered"] == 1
    status, reply = await call(notifications, "GET", "/notifications", as_=("user_c1", "customer"))
    assert status == 200 and [item["message"] for item in reply["data"]["items"]] == ["20% off everything"]
