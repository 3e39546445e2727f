"""The test command's promise: the Redis and RabbitMQ of REDIS_URL / AMQP_URL are there and answer."""
from __future__ import annotations

import pytest

from tests import backends
from tests.support import free_port


@pytest.mark.redis
def test_redis_answers(redis_server: str) -> None:
    assert backends.redis_answers(redis_server)


@pytest.mark.rabbitmq
def test_rabbitmq_answers(rabbitmq_server: str) -> None:
    assert backends.amqp_answers(rabbitmq_server)


def test_probes_say_no_for_a_closed_port() -> None:
    closed = free_port()
    assert not backends.redis_answers(f"redis://127.0.0.1:{closed}/0", timeout=0.5)
    assert not backends.amqp_answers(f"amqp://guest:guest@127.0.0.1:{closed}/", timeout=0.5)


def test_probes_do_not_mistake_one_server_for_the_other() -> None:
    url_redis, url_amqp = backends.redis_url(), backends.amqp_url()
    backends.require("Redis", backends.redis_answers(url_redis), url_redis)
    backends.require("RabbitMQ", backends.amqp_answers(url_amqp), url_amqp)
    assert not backends.amqp_answers(url_redis, timeout=0.5)
    assert not backends.redis_answers(url_amqp, timeout=0.5)


def test_missing_backend_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="Redis is not reachable at redis://u:\\*\\*\\*@"):
        backends.require("Redis", False, "redis://u:secret@127.0.0.1:1/0")


def test_missing_backend_skips_loudly_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="MISSING BACKEND: RabbitMQ"):
        backends.require("RabbitMQ", False, "amqp://127.0.0.1:1/")
