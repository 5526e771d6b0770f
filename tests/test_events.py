"""The events service against real servers and DynamoDB Local's streams:
watchers (from now, from a cursor, reconnecting during a concurrent run) and
signed webhooks to a real local HTTP receiver that fails first."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from common.caller_auth import Role
from common.dynamodb.streams import decode_cursor
from events_service import server as events_server
from rewards.v1 import events_pb2, events_pb2_grpc, xp_pb2
from tests.cluster import STANDARD_LEVELS, Cluster, rpc_error, unique
from tests.events_support import Receiver, Watcher, expected_events, play, put_catalog, signature_is_valid, wait_for

SECRET = "whsec-" + "s3cr3t" * 4


@pytest.fixture(scope="module")
def events_cluster(dynamodb_endpoint: str) -> Iterator[Cluster]:
    made = Cluster(
        dynamodb_endpoint,
        events=True,
        events_poll_s=0.1,
        webhooks_allow_http=True,
        webhook_first_retry_s=0.2,
    )
    made.put_levels(STANDARD_LEVELS)
    yield made
    made.close()


def test_a_watcher_that_reconnects_during_a_concurrent_run_sees_every_change_exactly_once(
    events_cluster: Cluster,
) -> None:
    ids = put_catalog(events_cluster)
    users = [unique("ev-user") for _ in range(8)]
    watcher = Watcher(events_cluster.events, events_pb2.WatchEventsRequest())  # every user (admin)
    watcher.start(reconnect_every=7)
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda user: play(events_cluster, ids, user), users))
        expected = expected_events(events_cluster, users)
        mine = set(users)
        wait_for(lambda: set(expected) <= {k for k in watcher.keys() if k[0] in mine})
        time.sleep(1.0)  # room for a repeat to show
    finally:
        watcher.stop()
    seen = Counter({k: n for k, n in watcher.keys().items() if k[0] in mine})
    assert seen == expected  # each change once, nothing else
    assert watcher.reconnects >= 10
    # Per user, in the order they happened: each XP event's total is the one before plus its xp.
    kinds = Counter()
    for user in users:
        xp_events = [r.event for r in watcher.responses if r.event.user_id == user and r.event.HasField("xp")]
        total = 0
        for event in xp_events:
            assert event.xp.total_xp == total + event.xp.xp, (user, event)
            total = event.xp.total_xp
        assert total == events_cluster.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user)).total_xp
        kinds.update(events_pb2.EventType.Name(r.event.type) for r in watcher.responses if r.event.user_id == user)
    n = len(users)
    assert kinds == {
        "EVENT_TYPE_XP_AWARDED": 5 * n,  # 4 awards and the first capped activity's
        "EVENT_TYPE_XP_GRANTED": 2 * n,  # the grant and the achievement's reward
        "EVENT_TYPE_XP_ADJUSTED": n,
        "EVENT_TYPE_XP_REVOKED": n,
        "EVENT_TYPE_LEVEL_UP": 2 * n,  # 485 XP at most: levels 2 and 3
        "EVENT_TYPE_ACHIEVEMENT_UNLOCKED": n,
    }


def test_a_watch_from_now_gets_what_happens_after_its_headers_with_its_details(events_cluster: Cluster) -> None:
    ids = put_catalog(events_cluster)
    user = unique("ev-user")
    events_cluster.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user, activity_id=ids["activity"], request_id="before"))
    watcher = Watcher(
        events_cluster.events,
        events_pb2.WatchEventsRequest(
            user_id=user, types=[events_pb2.EVENT_TYPE_XP_AWARDED, events_pb2.EVENT_TYPE_LEVEL_UP]
        ),
    )
    watcher.start()
    try:
        events_cluster.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user, activity_id=ids["activity"], request_id="after"))
        # Not a type it watches, but it raises the level to 3 (level 2 came before the watch).
        events_cluster.xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user, amount=100, reason="gift", request_id="g"))
        wait_for(lambda: len(watcher.responses) >= 2)
        time.sleep(0.5)
    finally:
        watcher.stop()
    award, level_up = [r.event for r in watcher.responses]
    assert (award.event_id, award.user_id, award.type) == ("req#after", user, events_pb2.EVENT_TYPE_XP_AWARDED)
    assert (award.xp.entry_id, award.xp.request_id, award.xp.xp, award.xp.total_xp, award.xp.activity_id) == (
        "req#after",
        "after",
        120,
        240,
        ids["activity"],
    )
    assert award.occurred_at.seconds > 0
    assert level_up.event_id == "level#3" and level_up.type == events_pb2.EVENT_TYPE_LEVEL_UP
    assert (level_up.level_up.previous_level, level_up.level_up.current_level) == (2, 3)
    assert [(r.reward_id, r.quantity) for r in level_up.level_up.rewards] == [("coins", 200)]


def test_a_cursor_this_service_did_not_issue_is_invalid_and_one_past_retention_is_out_of_range(
    events_cluster: Cluster,
) -> None:
    from common.dynamodb.streams import encode_cursor

    def first_answer(cursor: str) -> grpc.RpcError:
        return rpc_error(
            lambda: next(iter(events_cluster.events.WatchEvents(events_pb2.WatchEventsRequest(cursor=cursor))))
        )

    bad = first_answer("not-a-cursor")
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "cursor" in bad.details()
    gone = first_answer(encode_cursor({"user_progress/shardId-00000000000000000000-00000000": "000000000000000000001"}))
    assert gone.code() == grpc.StatusCode.OUT_OF_RANGE and "retention" in gone.details()


def watch_cursor_of(cluster: Cluster, role: Role) -> str:
    """The x-watch-cursor header of a watch of every user, which `role` may open."""
    call = events_pb2_grpc.EventsServiceStub(cluster.channel("events", role)).WatchEvents(
        events_pb2.WatchEventsRequest()
    )
    try:
        return dict(call.initial_metadata())["x-watch-cursor"]
    finally:
        call.cancel()


def test_watching_every_user_takes_the_admin_or_service_role(events_cluster: Cluster) -> None:
    game = events_pb2_grpc.EventsServiceStub(events_cluster.channel("events", Role.GAME))
    refused = rpc_error(lambda: next(iter(game.WatchEvents(events_pb2.WatchEventsRequest()))))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and "user_id" in refused.details()
    one_user = game.WatchEvents(events_pb2.WatchEventsRequest(user_id=unique("ev-user")))
    # Live: the headers carry the cursor of the watch's start, with a position in every shard read.
    every_user = {role: decode_cursor(watch_cursor_of(events_cluster, role)) for role in (Role.ADMIN, Role.SERVICE)}
    assert every_user[Role.ADMIN] and set(every_user[Role.ADMIN]) == set(every_user[Role.SERVICE])
    assert set(decode_cursor(dict(one_user.initial_metadata())["x-watch-cursor"])) == set(every_user[Role.ADMIN])
    one_user.cancel()
    nobody = events_pb2_grpc.EventsServiceStub(events_cluster.channel("events", None))
    assert rpc_error(lambda: next(iter(nobody.WatchEvents(events_pb2.WatchEventsRequest(user_id="x"))))).code() == (
        grpc.StatusCode.UNAUTHENTICATED
    )


def test_a_receiver_that_fails_first_gets_every_event_signed_once_after_its_retries(events_cluster: Cluster) -> None:
    ids = put_catalog(events_cluster)
    receiver = Receiver(fail_first=2)
    url = receiver.start()
    hook = unique("hook")
    events_cluster.events.PutWebhook(
        events_pb2.PutWebhookRequest(webhook=events_pb2.Webhook(webhook_id=hook, url=url, secret=SECRET))
    )
    users = [unique("ev-hook") for _ in range(3)]
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda user: play(events_cluster, ids, user), users))
        expected = {f"{u}/{e}" for u, e in expected_events(events_cluster, users)}
        wait_for(lambda: expected <= set(receiver.delivered()), timeout_s=60)
        time.sleep(1.0)
    finally:
        events_cluster.events.DeleteWebhook(events_pb2.DeleteWebhookRequest(webhook_id=hook))
        receiver.stop()
    mine = [r for r in receiver.snapshot() if r.delivery_id.split("/")[0] in set(users)]
    delivered = Counter(r.delivery_id for r in mine if r.status == 200)
    assert set(delivered) == expected and set(delivered.values()) == {1}  # once each, after its retries
    attempts = Counter(r.delivery_id for r in mine)
    assert set(attempts.values()) == {3}  # two 503s, then the 200: repeats only of the same event
    for request in mine:
        assert signature_is_valid(SECRET, request.signature, request.body)
        event = request.event
        assert request.delivery_id == f"{event['userId']}/{event['eventId']}"
    types = Counter(r.event["type"] for r in mine if r.status == 200)
    assert types["EVENT_TYPE_ACHIEVEMENT_UNLOCKED"] == 3 and types["EVENT_TYPE_LEVEL_UP"] == 6
    # Each delivery's record: done, attempted three times, and expiring (TTL) a week after its delivery.
    records = events_cluster.dynamodb.query(
        TableName=events_cluster.table("webhook_deliveries"),
        KeyConditionExpression="webhook_id = :w",
        ExpressionAttributeValues={":w": {"S": hook}},
        ConsistentRead=True,
    )["Items"]
    assert {r["event_key"]["S"] for r in records} == expected
    week_s = 7 * 24 * 3600
    for record in records:
        assert "pending" not in record and record["attempts"]["N"] == "3"
        delivered_s = int(record["delivered_at"]["N"]) // 1000
        assert int(record["expires_at"]["N"]) == delivered_s + week_s


def test_webhook_admin_rules_and_listing_without_secrets(events_cluster: Cluster) -> None:
    hook = unique("hook")

    def put(**fields: Any) -> events_pb2.Webhook:
        values = {"webhook_id": hook, "url": "https://example.com/hook", "secret": SECRET, **fields}
        return events_cluster.events.PutWebhook(events_pb2.PutWebhookRequest(webhook=events_pb2.Webhook(**values)))

    for fields, named in (
        ({"url": "ftp://example.com"}, "webhook.url"),
        ({"secret": "short"}, "webhook.secret"),
        ({"url": ""}, "webhook.url"),
        ({"webhook_id": ""}, "webhook.webhook_id"),
        ({"types": [0]}, "webhook.types[0]"),
    ):
        error = rpc_error(lambda fields=fields: put(**fields))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and named in error.details(), fields
    stored = put(types=[events_pb2.EVENT_TYPE_LEVEL_UP])
    assert (stored.webhook_id, stored.url, list(stored.types), stored.secret) == (
        hook,
        "https://example.com/hook",
        [events_pb2.EVENT_TYPE_LEVEL_UP],
        "",
    )
    listed = events_cluster.events.ListWebhooks(events_pb2.ListWebhooksRequest(page_size=100)).webhooks
    assert [w.secret for w in listed if w.webhook_id == hook] == [""]
    events_cluster.events.DeleteWebhook(events_pb2.DeleteWebhookRequest(webhook_id=hook))
    gone = rpc_error(lambda: events_cluster.events.DeleteWebhook(events_pb2.DeleteWebhookRequest(webhook_id=hook)))
    assert gone.code() == grpc.StatusCode.NOT_FOUND and hook in gone.details()


def test_http_urls_need_the_local_development_switch(new_cluster: Callable[..., Cluster]) -> None:
    strict = new_cluster(events=True)
    error = rpc_error(
        lambda: strict.events.PutWebhook(
            events_pb2.PutWebhookRequest(
                webhook=events_pb2.Webhook(webhook_id="h", url="http://127.0.0.1:9/hook", secret=SECRET)
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "webhook.url" in error.details() and "REWARDS_WEBHOOKS_ALLOW_HTTP" in error.details()


def test_deliveries_that_fail_for_a_day_are_kept_listed_and_redeliverable(
    new_cluster: Callable[..., Cluster],
) -> None:
    # A "day" of retries of one second, here.
    cluster = new_cluster(
        events=True, events_poll_s=0.1, webhooks_allow_http=True, webhook_first_retry_s=0.2, webhook_retry_window_s=1.0
    )
    cluster.put_levels(STANDARD_LEVELS)
    ids = put_catalog(cluster)
    receiver = Receiver(always_fail=True)
    url = receiver.start()
    cluster.events.PutWebhook(
        events_pb2.PutWebhookRequest(
            webhook=events_pb2.Webhook(
                webhook_id="hook", url=url, secret=SECRET, types=[events_pb2.EVENT_TYPE_ACHIEVEMENT_UNLOCKED]
            )
        )
    )
    user = unique("ev-failed")
    try:
        play(cluster, ids, user)

        def failed() -> list[events_pb2.FailedDelivery]:
            request = events_pb2.ListFailedDeliveriesRequest(webhook_id="hook")
            return list(cluster.events.ListFailedDeliveries(request).deliveries)

        wait_for(lambda: len(failed()) == 1)
        (delivery,) = failed()
        assert delivery.delivery_id == f"{user}/unlock#{ids['achievement']}"
        assert delivery.event.achievement.achievement_id == ids["achievement"]
        assert delivery.attempts >= 2 and delivery.last_error == "HTTP 503" and delivery.failed_at.seconds > 0
        tries = len(receiver.snapshot())
        receiver.always_fail = False
        answer = cluster.events.RedeliverEvents(events_pb2.RedeliverEventsRequest(webhook_id="hook"))
        assert answer.redelivered == 1
        wait_for(lambda: receiver.delivered()[delivery.delivery_id] == 1)
        assert failed() == [] and len(receiver.snapshot()) == tries + 1
    finally:
        receiver.stop()


def test_two_replicas_deliver_each_event_to_a_webhook_once(events_cluster: Cluster) -> None:
    # A second events server on the same tables: a replica. Both read the streams for their watches; the
    # webhooks' reader is one of them at a time (the lease), and each delivery is made once.
    replica, _ = events_cluster.loop.run(
        events_server.create_server("localhost:0", events_cluster.settings, events_cluster.lean)
    )
    events_cluster.loop.run(replica.start())
    ids = put_catalog(events_cluster)
    receiver = Receiver()
    hook = unique("hook")
    events_cluster.events.PutWebhook(
        events_pb2.PutWebhookRequest(webhook=events_pb2.Webhook(webhook_id=hook, url=receiver.start(), secret=SECRET))
    )
    users = [unique("ev-replicas") for _ in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda user: play(events_cluster, ids, user), users))
        expected = {f"{u}/{e}" for u, e in expected_events(events_cluster, users)}
        wait_for(lambda: expected <= set(receiver.delivered()))
        time.sleep(1.0)
    finally:
        events_cluster.events.DeleteWebhook(events_pb2.DeleteWebhookRequest(webhook_id=hook))
        events_cluster.loop.run(replica.stop(None))
        receiver.stop()
    mine = [r.delivery_id for r in receiver.snapshot() if r.delivery_id.split("/")[0] in set(users)]
    assert sorted(mine) == sorted(expected)  # each once: not once per replica
