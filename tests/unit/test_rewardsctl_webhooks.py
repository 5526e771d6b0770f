"""rewardsctl's webhook commands and their client (rewardsctl.service_clients.
EventsClient) against grpc_testing's scripted channel, as
test_rewardsctl_service_clients does for the other services: no server, no
DynamoDB, no socket. The commands against the real Events service are in
tests/test_rewardsctl_webhooks.py."""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, NoReturn

import grpc
import grpc_testing
import pytest

from common.channels import CLIENT_CHANNEL_OPTIONS
from common.config import ENVIRONMENT_VARIABLES, Settings
from rewards.v1 import events_pb2
from rewardsctl.__main__ import main
from rewardsctl.service_clients import EventsClient
from tests.unit.test_rewardsctl_service_clients import (
    BEARER,
    TIMEOUT_S,
    TOKEN,
    ScriptedServices,
    SentCall,
    _ScriptedChannel,
    method,
    path,
    result,
)

EVENTS = events_pb2.DESCRIPTOR.services_by_name["EventsService"]
TARGET = "events.test:50054"


class _EventsChannel(_ScriptedChannel):
    """The stub of the Events service also makes WatchEvents (server streaming),
    which rewardsctl never calls."""

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        def never_called(*args: Any, **kwargs: Any) -> NoReturn:
            raise NotImplementedError(f"rewardsctl does not call {method}")

        return never_called


class ScriptedEvents(ScriptedServices):
    """The Events service, played by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.channel = grpc_testing.channel([EVENTS], grpc_testing.strict_real_time())

    def insecure_channel(self, target: str, options: Any = None, compression: Any = None) -> _ScriptedChannel:
        self.opened.append((target, options))
        self.channels.append(_EventsChannel(target, self))
        return self.channels[-1]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> ScriptedEvents:
    scripted = ScriptedEvents()
    monkeypatch.setattr(grpc, "insecure_channel", scripted.insecure_channel)
    for variable in [*ENVIRONMENT_VARIABLES.values(), "AWS_DEFAULT_REGION"]:
        monkeypatch.delenv(variable, raising=False)
    return scripted


def run_main(events: ScriptedEvents, argv: Sequence[str]) -> Future[int]:
    return events.start(lambda: main(list(argv)))


def webhook(webhook_id: str, *types: events_pb2.EventType.ValueType) -> events_pb2.Webhook:
    return events_pb2.Webhook(webhook_id=webhook_id, url=f"https://{webhook_id}.example.com/", types=list(types))


def test_the_listings_follow_next_page_token_with_token_and_deadline_on_every_call(events: ScriptedEvents) -> None:
    client = EventsClient(TARGET, TIMEOUT_S, Settings(), token=TOKEN)
    assert events.opened == [(TARGET, CLIENT_CHANNEL_OPTIONS)]
    listing = events.start(client.list_webhooks)
    pages = [
        events_pb2.ListWebhooksResponse(webhooks=[webhook("a"), webhook("b")], next_page_token="b"),
        events_pb2.ListWebhooksResponse(webhooks=[webhook("c")]),
    ]
    answered = [events.answer(method(EVENTS, "ListWebhooks"), listing, page) for page in pages]
    assert [request for _, request in answered] == [
        events_pb2.ListWebhooksRequest(page_size=100, page_token=token) for token in ("", "b")
    ]
    assert all(BEARER in metadata for metadata, _ in answered)
    assert [w.webhook_id for w in result(listing)] == ["a", "b", "c"]

    failed = events.start(lambda: client.failed_deliveries("a"))
    pages_of_failed = [
        events_pb2.ListFailedDeliveriesResponse(
            deliveries=[events_pb2.FailedDelivery(delivery_id="u1/e1")], next_page_token="u1/e1"
        ),
        events_pb2.ListFailedDeliveriesResponse(deliveries=[events_pb2.FailedDelivery(delivery_id="u2/e1")]),
    ]
    requests = [events.answer(method(EVENTS, "ListFailedDeliveries"), failed, page)[1] for page in pages_of_failed]
    assert requests == [
        events_pb2.ListFailedDeliveriesRequest(webhook_id="a", page_size=100, page_token=token)
        for token in ("", "u1/e1")
    ]
    assert [d.delivery_id for d in result(failed)] == ["u1/e1", "u2/e1"]
    assert (
        events.sent
        == [SentCall(TARGET, path(EVENTS, "ListWebhooks"), TIMEOUT_S)] * 2
        + [SentCall(TARGET, path(EVENTS, "ListFailedDeliveries"), TIMEOUT_S)] * 2
    )
    client.close()
    assert [c.closed for c in events.channels] == [True]


def test_redeliver_sends_at_most_100_ids_a_call_and_adds_up_what_was_queued(events: ScriptedEvents) -> None:
    client = EventsClient(TARGET, TIMEOUT_S, Settings(), token=TOKEN)
    ids = tuple(f"user-{n}/entry" for n in range(250))
    redelivering = events.start(lambda: client.redeliver("a", ids))
    requests = [
        events.answer(
            method(EVENTS, "RedeliverEvents"), redelivering, events_pb2.RedeliverEventsResponse(redelivered=queued)
        )[1]
        for queued in (100, 99, 50)
    ]
    assert [list(r.delivery_ids) for r in requests] == [list(ids[:100]), list(ids[100:200]), list(ids[200:])]
    assert result(redelivering) == 249
    # Without ids: one call, which asks for every failed delivery.
    everything = events.start(lambda: client.redeliver("a"))
    _, request = events.answer(
        method(EVENTS, "RedeliverEvents"), everything, events_pb2.RedeliverEventsResponse(redelivered=3)
    )
    assert request == events_pb2.RedeliverEventsRequest(webhook_id="a")
    assert result(everything) == 3


def test_webhook_commands_call_localhost_50054_unless_told_otherwise(
    events: ScriptedEvents, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings().events_target == "localhost:50054"
    listing = run_main(events, ["webhooks", "list", "--token", TOKEN])
    events.answer(
        method(EVENTS, "ListWebhooks"),
        listing,
        events_pb2.ListWebhooksResponse(
            webhooks=[webhook("crm", events_pb2.EVENT_TYPE_LEVEL_UP, events_pb2.EVENT_TYPE_ACHIEVEMENT_UNLOCKED)]
        ),
    )
    assert result(listing) == 0
    assert capsys.readouterr().out == "crm  https://crm.example.com/  level_up, achievement_unlocked\n"

    monkeypatch.setenv("REWARDS_EVENTS_TARGET", "events.from-env:7000")
    removing = run_main(events, ["webhooks", "remove", "crm", "--token", TOKEN])
    events.answer(method(EVENTS, "DeleteWebhook"), removing, events_pb2.DeleteWebhookResponse())
    assert result(removing) == 0
    flagged = run_main(events, ["webhooks", "redeliver", "crm", "--events-target", TARGET, "--timeout", "3"])
    events.answer(method(EVENTS, "RedeliverEvents"), flagged, events_pb2.RedeliverEventsResponse(redelivered=2))
    assert result(flagged) == 0
    assert events.sent == [
        SentCall("localhost:50054", path(EVENTS, "ListWebhooks"), 10.0),
        SentCall("events.from-env:7000", path(EVENTS, "DeleteWebhook"), 10.0),
        SentCall(TARGET, path(EVENTS, "RedeliverEvents"), 3.0),
    ]
    assert all(c.closed for c in events.channels)
    assert capsys.readouterr().out == (
        "removed webhook crm: its pending deliveries stop\n"
        "queued 2 failed deliveries of crm again: each is sent again, with retries as a new delivery\n"
    )


def test_add_without_a_secret_sends_a_new_one_and_prints_it_once(
    events: ScriptedEvents, capsys: pytest.CaptureFixture[str]
) -> None:
    adding = run_main(
        events,
        ["webhooks", "add", "crm", "https://crm.example.com/", "--type", "Level_Up", "--events-target", TARGET],
    )
    _, request = events.answer(method(EVENTS, "PutWebhook"), adding, webhook("crm", events_pb2.EVENT_TYPE_LEVEL_UP))
    assert result(adding) == 0
    sent = request.webhook
    assert (sent.webhook_id, sent.url, list(sent.types)) == (
        "crm",
        "https://crm.example.com/",
        [events_pb2.EVENT_TYPE_LEVEL_UP],
    )
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", sent.secret)
    out = capsys.readouterr().out
    assert out.count(sent.secret) == 1 and f"\nsecret {sent.secret}\n" in out


def test_a_failure_names_the_events_target_and_exits_1(
    events: ScriptedEvents, capsys: pytest.CaptureFixture[str]
) -> None:
    failing = run_main(events, ["webhooks", "failed", "crm", "--events-target", TARGET])
    events.fail(
        method(EVENTS, "ListFailedDeliveries"),
        failing,
        grpc.StatusCode.UNAVAILABLE,
        "failed to connect to all addresses",
    )
    assert result(failing) == 1
    assert capsys.readouterr().err == (
        "rewardsctl: listing the failed deliveries of crm failed: UNAVAILABLE: failed to connect to all addresses\n"
        f"  check that the service runs at {TARGET} (`make up` starts the local cluster)\n"
        "  safe to retry: run the same command again\n"
    )


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["webhooks", "add", "a", "https://a.example/", "--type", "levelup"], "unknown event type 'levelup'"),
        (["webhooks", "add", "a", "https://a.example/", "--secret", "s" * 16, "--secret-env", "S"], "not allowed"),
        (["webhooks", "remove"], "the following arguments are required: WEBHOOK_ID"),
        (["webhooks", "list", "--xp-target", "localhost:1"], "unrecognized arguments: --xp-target"),
    ],
)
def test_bad_webhook_command_lines_exit_2_and_call_nothing(
    events: ScriptedEvents, capsys: pytest.CaptureFixture[str], argv: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--token", TOKEN])
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err
    assert events.sent == []
