"""Channels: signed, idempotent, retried webhooks; a hanging gateway delays nobody else."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from alerts.channels import (
    CALL_CONTACT,
    INCIDENT_OPENED,
    GatewayChannel,
    Notice,
    Notifier,
    RetryPolicy,
    WebhookChannel,
    WebSocketHub,
    verify,
)
from alerts.metrics import AlertMetrics
from devices.auth import Principal
from tests.alerts.world import FakeGateway
from tests.fixtures.services import eventually


def notice(i: int, *, phones: tuple[str, ...] = ()) -> Notice:
    return Notice(
        kind=CALL_CONTACT if phones else INCIDENT_OPENED,
        key=f"k{i}",
        area_path="sjz.a.b.c",
        severity="critical",
        incident_id=i,
        phones=phones,
        body={"text": "help"},
    )


async def test_a_channel_that_times_out_does_not_delay_the_others() -> None:
    metrics = AlertMetrics(CollectorRegistry())
    hung = FakeGateway(delay_s=30)
    fast = FakeGateway()
    hub = WebSocketHub(metrics=metrics)
    session = hub.connect(Principal(1, "d", "dispatcher", "sjz.a"))
    async with hung.running(), fast.running():
        gateway = GatewayChannel(
            base_url=hung.url,
            api_key="k",
            timeout_s=0.5,
            retry=RetryPolicy(max_attempts=1, attempt_timeout_s=10),
        )
        webhook = WebhookChannel(url=fast.url, secret="s3cret", timeout_s=5)
        notifier = Notifier([gateway, webhook, hub], metrics=metrics)
        async with notifier.running():
            started = time.monotonic()
            for i in range(5):
                notifier.publish(notice(i, phones=("+86-1",)))
            await eventually(lambda: len(fast.requests) == 5, timeout_s=5)
            webhook_done_s = max(t for *_, t in fast.requests) - started
            # The live push to the hub is not held up either.
            assert session.queue.qsize() == 0  # call_contact is not a console notice
            hub.publish(
                Notice(
                    kind="live_alarm", key="x", area_path="sjz.a.b.c", severity="critical", body={}
                )
            )
            assert session.queue.qsize() == 1
            await eventually(
                lambda: metrics.channel_failed.labels("gateway", "timeout")._value.get() == 5,
                timeout_s=5,
            )
        await gateway.aclose()
        await webhook.aclose()
    assert webhook_done_s < 0.4, webhook_done_s
    assert hung.requests == []  # it never answered within the timeout


async def test_webhook_is_signed_idempotent_and_retried() -> None:
    metrics = AlertMetrics(CollectorRegistry())
    flaky = FakeGateway(fail_first=2)
    async with flaky.running():
        webhook = WebhookChannel(
            url=flaky.url,
            secret="s3cret",
            timeout_s=10,
            retry=RetryPolicy(base_backoff_s=0.05, max_backoff_s=0.1),
        )
        notifier = Notifier([webhook], metrics=metrics)
        async with notifier.running():
            notifier.publish(notice(7))
            await eventually(lambda: metrics.channel_sent.labels("webhook")._value.get() == 1)
        await webhook.aclose()
    assert len(flaky.requests) == 3  # two 503s, then accepted
    keys = {h["idempotency-key"] for _, h, _, _ in flaky.requests}
    assert keys == {"k7"}  # the same key on every retry: the receiver can dedupe
    for _, headers, body, _ in flaky.requests:
        assert verify(
            b"s3cret", body, headers["x-carecall-signature"], now_s=time.time(), tolerance_s=60
        )
        assert not verify(
            b"wrong", body, headers["x-carecall-signature"], now_s=time.time(), tolerance_s=60
        )


async def test_hub_sends_only_within_scope() -> None:
    hub = WebSocketHub()
    a = hub.connect(Principal(1, "a", "dispatcher", "sjz.a"))
    b = hub.connect(Principal(2, "b", "dispatcher", "sjz.b"))
    city = hub.connect(Principal(3, "c", "supervisor", "sjz"))
    prefix = hub.connect(Principal(4, "p", "dispatcher", "sjz.ab"))  # not an ancestor of sjz.a.*
    n = hub.publish(
        Notice(kind="incident_event", key="e", area_path="sjz.a.s.c", severity="high", body={})
    )
    await asyncio.sleep(0)
    assert n == 2
    assert (a.queue.qsize(), b.queue.qsize(), city.queue.qsize(), prefix.queue.qsize()) == (
        1,
        0,
        1,
        0,
    )


async def test_hub_shows_unplaced_incidents_only_to_sessions_that_may_see_them() -> None:
    hub = WebSocketHub()
    city = hub.connect(Principal(1, "c", "dispatcher", "sjz"))  # one city among several
    root = hub.connect(Principal(2, "r", "dispatcher", "sjz"), sees_unplaced=True)
    admin = hub.connect(Principal(3, "a", "admin", "sjz.a"), sees_unplaced=True)
    n = hub.publish(
        Notice(kind="live_alarm", key="k", area_path=None, severity="critical", body={})
    )
    assert n == 2
    assert (city.queue.qsize(), root.queue.qsize(), admin.queue.qsize()) == (0, 1, 1)
