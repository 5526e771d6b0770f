"""rewardsctl's webhook commands against real servers (the Events service
included) and DynamoDB Local: `webhooks add` (with a secret given, or one it
makes and prints once), `list` (never a secret), the https rule, `remove`,
and a delivery that failed for good, listed by `failed` and sent again by
`redeliver` to a real local HTTP receiver."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.protobuf import json_format

from devcluster.dynamodb_local import REPO_ROOT
from rewards.v1 import events_pb2, xp_pb2
from rewardsctl.__main__ import main
from tests.cluster import Cluster, mint_test_token, unique
from tests.events_support import Receiver, signature_is_valid

GIVEN_SECRET = "a-secret-of-the-test-0123456789"
# What secrets.token_urlsafe(32) makes: 43 characters of the URL-safe base64 alphabet.
GENERATED_SECRET = re.compile(r"^secret ([A-Za-z0-9_-]{43})$", re.MULTILINE)
# How long a test waits for the Events service to read, deliver or fail something.
WAIT_S = 30.0


def run_main(cluster: Cluster, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """main() in this process, configured by flags."""
    capsys.readouterr()
    status = main([*args, "--events-target", f"localhost:{cluster.ports['events']}", "--token", mint_test_token()])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def run_command(cluster: Cluster, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command, `python -m rewardsctl`, configured by environment variables."""
    return subprocess.run(
        [sys.executable, "-m", "rewardsctl", *args],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "REWARDS_EVENTS_TARGET": f"localhost:{cluster.ports['events']}",
            "REWARDS_TOKEN": mint_test_token(),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def eventually(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    """Polls `check` until it returns something true, which it returns; fails after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.1)


# --- add, list, remove ----------------------------------------------------------------------------


def test_add_list_and_remove_webhooks(new_cluster: Callable[..., Cluster], capsys: pytest.CaptureFixture[str]) -> None:
    cluster = new_cluster(events=True)  # https urls only
    assert run_main(cluster, capsys, "webhooks", "list") == (
        0,
        "no webhooks (`rewardsctl webhooks add WEBHOOK_ID URL` adds one)\n",
        "",
    )

    # A secret given: it is not printed.
    status, out, err = run_main(
        cluster,
        capsys,
        "webhooks",
        "add",
        "crm",
        "https://crm.example.com/rewards",
        "--type",
        "level_up",
        "--type",
        "ACHIEVEMENT_UNLOCKED,level_up",
        "--secret",
        GIVEN_SECRET,
    )
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "webhook crm: https://crm.example.com/rewards, level_up, achievement_unlocked (events that happen from "
        "now on are POSTed to it, signed with its secret)"
    ]

    # No secret given: the real command makes one and prints it, once. REWARDS_EVENTS_TARGET names the service.
    added = run_command(cluster, "webhooks", "add", "analytics", "https://analytics.example.com/in")
    assert added.returncode == 0, added.stderr
    lines = added.stdout.splitlines()
    assert lines[0] == (
        "webhook analytics: https://analytics.example.com/in, every type (events that happen from now on are "
        "POSTed to it, signed with its secret)"
    )
    match = GENERATED_SECRET.search(added.stdout)
    assert match, added.stdout
    generated = match.group(1)
    assert lines[2:] == [
        "  shown this once: the service never returns it; keep it where the receiver checks the "
        "Rewards-Signature header"
    ]
    # --json: the service's answer, with the secret the command made (the only place it is shown).
    status, out, _ = run_main(cluster, capsys, "webhooks", "add", "billing", "https://billing.example.com/", "--json")
    assert status == 0
    answer = json.loads(out)
    assert answer["webhook_id"] == "billing" and answer["types"] == []
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", answer["secret"]) and answer["secret"] != generated

    # The list never shows a secret, as text or JSON.
    status, out, _ = run_main(cluster, capsys, "webhooks", "list")
    assert status == 0
    assert out.splitlines() == [
        "analytics  https://analytics.example.com/in  every type",
        "billing    https://billing.example.com/      every type",
        "crm        https://crm.example.com/rewards   level_up, achievement_unlocked",
    ]
    status, out, _ = run_main(cluster, capsys, "webhooks", "list", "--json")
    assert status == 0
    listed = json.loads(out)["webhooks"]
    assert [(w["webhook_id"], w["types"], w["secret"]) for w in listed] == [
        ("analytics", [], ""),
        ("billing", [], ""),
        ("crm", ["EVENT_TYPE_LEVEL_UP", "EVENT_TYPE_ACHIEVEMENT_UNLOCKED"], ""),
    ]
    assert GIVEN_SECRET not in out and generated not in out and answer["secret"] not in out

    # Adding an id again replaces that webhook; --secret-env reads the secret from the environment.
    replaced = run_command(
        cluster,
        "webhooks",
        "add",
        "crm",
        "https://crm.example.com/v2",
        "--type",
        "xp-awarded",
        "--secret-env",
        "CRM_SECRET",
        CRM_SECRET=GIVEN_SECRET,
    )
    assert replaced.returncode == 0, replaced.stderr
    assert "secret" not in replaced.stdout.replace("signed with its secret", "")
    status, out, _ = run_main(cluster, capsys, "webhooks", "list")
    assert out.splitlines()[2] == "crm        https://crm.example.com/v2        xp_awarded"

    # Remove; removing it again is NOT_FOUND.
    status, out, err = run_main(cluster, capsys, "webhooks", "remove", "billing")
    assert (status, out, err) == (0, "removed webhook billing: its pending deliveries stop\n", "")
    status, out, err = run_main(cluster, capsys, "webhooks", "remove", "billing")
    assert (status, out) == (1, "")
    assert err == "rewardsctl: webhooks remove failed: NOT_FOUND: webhook 'billing' does not exist\n"
    status, out, _ = run_main(cluster, capsys, "webhooks", "list")
    assert [line.split()[0] for line in out.splitlines()] == ["analytics", "crm"]


def test_refused_webhooks_name_the_field_and_change_nothing(
    new_cluster: Callable[..., Cluster], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = new_cluster(events=True)  # without webhooks_allow_http: https urls only

    status, out, err = run_main(cluster, capsys, "webhooks", "add", "plain", "http://127.0.0.1:8081/hook")
    assert (status, out) == (1, "")
    assert err == (
        "rewardsctl: webhooks add failed: INVALID_ARGUMENT: webhook.url must be an https:// URL (http:// only "
        "with REWARDS_WEBHOOKS_ALLOW_HTTP=true, for local development)\n"
    )
    status, out, err = run_main(
        cluster, capsys, "webhooks", "add", "short", "https://example.com/", "--secret", "too-short"
    )
    assert (status, out) == (1, "")
    assert err == (
        "rewardsctl: webhooks add failed: INVALID_ARGUMENT: webhook.secret must be 16 to 256 characters (got 9)\n"
    )
    # The command line's own mistakes: exit status 2, nothing sent.
    status, out, err = run_main(
        cluster, capsys, "webhooks", "add", "env", "https://example.com/", "--secret-env", "REWARDS_TEST_UNSET_SECRET"
    )
    assert (status, out) == (2, "")
    assert err == (
        "rewardsctl: --secret-env REWARDS_TEST_UNSET_SECRET: the variable is not set or empty; nothing was changed\n"
    )
    with pytest.raises(SystemExit) as exited:
        run_main(cluster, capsys, "webhooks", "add", "typo", "https://example.com/", "--type", "level-upp")
    assert exited.value.code == 2
    assert "argument --type: unknown event type 'level-upp' (known: xp_awarded, xp_granted, xp_adjusted, " in (
        capsys.readouterr().err
    )
    assert run_main(cluster, capsys, "webhooks", "list")[1].startswith("no webhooks")

    # No token: the hint says where to get one.
    plain = run_command(cluster, "webhooks", "list", REWARDS_TOKEN="")
    assert plain.returncode == 1
    assert plain.stderr.startswith("rewardsctl: webhooks list failed: UNAUTHENTICATED: ")
    assert "pass a token with --token or REWARDS_TOKEN" in plain.stderr
    # No service there: the hint names the target.
    down = run_command(cluster, "webhooks", "list", "--timeout", "2", REWARDS_EVENTS_TARGET="localhost:1")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr
    assert "check that the service runs at localhost:1" in down.stderr


# --- failed deliveries, sent again ----------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver(always_fail=True)
    yield made
    made.stop()


def reader_is_live(cluster: Cluster) -> bool:
    """The webhooks' reader of the streams has saved where it reads from: an event from now on is delivered
    (before, it starts from its first read, and an earlier event is in no delivery)."""
    item = cluster.dynamodb.get_item(
        TableName=cluster.table("event_readers"), Key={"reader": {"S": "webhooks"}}, ConsistentRead=True
    ).get("Item")
    return bool(item and item.get("cursor"))


def test_a_delivery_that_failed_is_listed_and_sent_again(
    new_cluster: Callable[..., Cluster], capsys: pytest.CaptureFixture[str], receiver: Receiver
) -> None:
    # Retried 0.2 s apart (doubling), failed for good after 1 s of retries.
    cluster = new_cluster(events=True, webhook_first_retry_s=0.2, webhook_retry_window_s=1.0, webhooks_allow_http=True)
    activity = xp_pb2.Activity(activity_id="win-match", name="Win a match", xp=150)
    cluster.xp.PutActivity(xp_pb2.PutActivityRequest(activity=activity))
    url = receiver.start()
    hook = "game-backend"
    status, _, err = run_main(
        cluster, capsys, "webhooks", "add", hook, url, "--type", "xp_awarded", "--secret", GIVEN_SECRET
    )
    assert status == 0, err
    status, out, _ = run_main(cluster, capsys, "webhooks", "failed", hook)
    assert (status, out) == (0, f"{hook}: no failed deliveries\n")
    eventually(lambda: reader_is_live(cluster), "the events service reads the streams for webhooks")

    user = unique("player")
    cluster.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user, activity_id="win-match", request_id="win-1"))
    history = cluster.xp.ListXpHistory(xp_pb2.ListXpHistoryRequest(user_id=user))
    delivery_id = f"{user}/{history.entries[0].entry_id}"

    def failed_lines() -> list[str]:
        status, out, err = run_main(cluster, capsys, "webhooks", "failed", hook)
        assert status == 0, err
        return out.splitlines() if delivery_id in out else []

    lines = eventually(failed_lines, f"`webhooks failed` lists {delivery_id}")
    assert len(receiver.posts(503)) >= 2  # the first attempt and at least one retry
    assert re.fullmatch(
        re.escape(delivery_id) + r"  xp_awarded  \d+ attempts  failed \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  HTTP 503",
        lines[0],
    ), lines[0]
    assert lines[1:] == [
        f"1 failed delivery of {hook}: `rewardsctl webhooks redeliver {hook} [DELIVERY_ID ...]` sends them "
        "(all, or those named) again"
    ]
    status, out, _ = run_main(cluster, capsys, "webhooks", "failed", hook, "--json")
    [failed] = json.loads(out)["deliveries"]
    assert failed["delivery_id"] == delivery_id and failed["last_error"] == "HTTP 503"
    assert failed["attempts"] >= 2 and failed["failed_at"]
    assert (failed["event"]["user_id"], failed["event"]["type"]) == (user, "EVENT_TYPE_XP_AWARDED")
    assert failed["event"]["xp"]["xp"] == 150

    # The receiver is back: the failed delivery, named, is sent again (an id that is no failed delivery is not).
    receiver.always_fail = False
    status, out, err = run_main(cluster, capsys, "webhooks", "redeliver", hook, delivery_id, f"{user}/no-such-entry")
    assert (status, err) == (0, "")
    assert out == (
        f"queued 1 failed delivery of {hook} again (1 of the 2 named); the other 1 are not failed deliveries of "
        f"{hook} (pending, delivered or unknown: `rewardsctl webhooks failed {hook}` lists the failed ones)\n"
    )
    delivered = eventually(lambda: receiver.posts(200), f"{delivery_id} is delivered again")
    [received] = delivered
    assert received.delivery_id == delivery_id and received.headers["Rewards-Webhook-Id"] == hook
    assert signature_is_valid(GIVEN_SECRET, received.signature, received.body)
    event = json_format.Parse(received.body, events_pb2.Event())  # the protobuf JSON mapping of Event
    assert (event.user_id, event.event_id, event.xp.xp) == (user, history.entries[0].entry_id, 150)

    status, out, _ = run_main(cluster, capsys, "webhooks", "failed", hook)
    assert (status, out) == (0, f"{hook}: no failed deliveries\n")
    status, out, _ = run_main(cluster, capsys, "webhooks", "redeliver", hook)
    assert (status, out) == (0, f"{hook}: no failed deliveries to deliver again\n")


def test_redeliver_without_ids_sends_every_failed_delivery_again(
    new_cluster: Callable[..., Cluster], capsys: pytest.CaptureFixture[str], receiver: Receiver
) -> None:
    cluster = new_cluster(events=True, webhook_first_retry_s=0.2, webhook_retry_window_s=1.0, webhooks_allow_http=True)
    for activity_id in ("win-match", "daily-login"):
        cluster.xp.PutActivity(
            xp_pb2.PutActivityRequest(activity=xp_pb2.Activity(activity_id=activity_id, name=activity_id, xp=10))
        )
    hook = "every-event"
    assert run_main(cluster, capsys, "webhooks", "add", hook, receiver.start())[0] == 0
    eventually(lambda: reader_is_live(cluster), "the events service reads the streams for webhooks")
    user = unique("player")
    for n, activity_id in enumerate(("win-match", "daily-login")):
        cluster.xp.AwardXp(xp_pb2.AwardXpRequest(user_id=user, activity_id=activity_id, request_id=f"r-{n}"))
    entries = cluster.xp.ListXpHistory(xp_pb2.ListXpHistoryRequest(user_id=user)).entries
    delivery_ids = {f"{user}/{entry.entry_id}" for entry in entries}

    def failed_ids() -> set[str]:
        status, out, _ = run_main(cluster, capsys, "webhooks", "failed", hook, "--json")
        assert status == 0
        found = {d["delivery_id"] for d in json.loads(out)["deliveries"]}
        return found if found >= delivery_ids else set()

    assert eventually(failed_ids, f"`webhooks failed` lists {sorted(delivery_ids)}") == delivery_ids

    receiver.always_fail = False
    status, out, _ = run_main(cluster, capsys, "webhooks", "redeliver", hook, "--json")
    assert (status, json.loads(out)) == (0, {"redelivered": 2})

    def delivered_ids() -> set[str]:
        found = {r.delivery_id for r in receiver.posts(200)}
        return found if found >= delivery_ids else set()

    assert eventually(delivered_ids, "both deliveries are sent again") == delivery_ids
    assert run_main(cluster, capsys, "webhooks", "failed", hook)[1] == f"{hook}: no failed deliveries\n"
