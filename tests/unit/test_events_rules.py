"""The events service's pure rules (events_service/domain.py, the cursor and
position rules of common/dynamodb/streams.py, events_service/hub.batch_of):
which stream record is which event, webhook rules, signatures, retry delays,
filters, cursors, and how a round's records are ordered."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import types
import zlib
from decimal import Decimal

import pytest

from common.caller_auth import Role
from common.dynamodb.streams import Round, StreamRecord, decode_cursor, encode_cursor, is_after
from common.errors import InvalidField
from common.models import ACHIEVEMENT, ACTIVITY, ADJUSTMENT, GRANT, REVOKE, Reward
from events_service import domain
from events_service.domain import (
    AchievementUnlocked,
    Event,
    EventFilter,
    EventType,
    LevelUp,
    Webhook,
    XpChanged,
    check_webhook,
    event_from_record,
    record_moment_ms,
    retry_delay_s,
    signature_header,
)
from events_service.hub import Batch, StreamItem, batch_of
from tests.unit.events_fakes import LEVELS, PROGRESS, T0_MS, UNLOCKS, iso, level_record, unlock_record, xp_record

AT = T0_MS + 1_234  # 2024-05-01T12:00:01.234000Z
AT_ISO = "2024-05-01T12:00:01.234000Z"


# --- event_from_record: user_progress ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "event_type", "change", "detail"),
    [
        pytest.param(
            ACTIVITY,
            EventType.XP_AWARDED,
            {"request_id": "r1", "activity_id": "win-match"},
            XpChanged("e1", "r1", 150, 1150, activity_id="win-match"),
            id="activity",
        ),
        pytest.param(
            GRANT,
            EventType.XP_GRANTED,
            {"request_id": "r1", "reason": "tournament prize"},
            XpChanged("e1", "r1", 150, 1150, reason="tournament prize"),
            id="grant",
        ),
        pytest.param(
            ACHIEVEMENT,
            EventType.XP_GRANTED,
            {"achievement_id": "first-win"},
            XpChanged("e1", "", 150, 1150, achievement_id="first-win"),
            id="achievement",
        ),
        pytest.param(
            ADJUSTMENT,
            EventType.XP_ADJUSTED,
            {"request_id": "r1", "reason": "bug 42"},
            XpChanged("e1", "r1", 150, 1150, reason="bug 42"),
            id="adjustment",
        ),
        pytest.param(
            REVOKE,
            EventType.XP_REVOKED,
            {"request_id": "r1", "reason": "cheating"},
            XpChanged("e1", "r1", 150, 1150, reason="cheating"),
            id="revoke",
        ),
    ],
)
def test_a_progress_update_that_moved_last_change_is_its_xp_event(
    kind: str, event_type: EventType, change: dict[str, str], detail: XpChanged
) -> None:
    record = xp_record("7", at_ms=AT, entry_id="e1", kind=kind, xp=150, total_xp=1150, **change)

    assert event_from_record(record) == Event("e1", "u1", event_type, AT_ISO, detail)


def test_a_revoke_of_negative_xp_keeps_its_sign_and_the_new_total() -> None:
    record = xp_record("7", at_ms=AT, entry_id="rev#req#r1", kind=REVOKE, xp=-150, total_xp=40, request_id="r9")

    assert event_from_record(record) == Event(
        "rev#req#r1", "u1", EventType.XP_REVOKED, AT_ISO, XpChanged("rev#req#r1", "r9", -150, 40)
    )


def test_the_total_comes_from_the_new_image_not_from_the_old_total_plus_xp() -> None:
    # Concurrent awards ADD to the total: the new image's total is the only exact one.
    record = xp_record("7", at_ms=AT, entry_id="e1", xp=10, total_xp=500)
    assert record.old_image is not None
    record.old_image["total_xp"] = Decimal(300)

    event = event_from_record(record)

    assert event is not None and isinstance(event.detail, XpChanged)
    assert (event.detail.xp, event.detail.total_xp) == (10, 500)


def test_an_update_that_did_not_move_last_change_is_no_event() -> None:
    # A level-up's update of the progress item (level, next threshold): last_change is the award's, again.
    record = xp_record("7", at_ms=AT, entry_id="req#r1", previous_entry_id="req#r1")
    assert record.old_image is not None
    record.old_image["last_change"] = dict(record.new_image["last_change"])
    record.new_image["level"] = Decimal(2)

    assert event_from_record(record) is None


def test_a_capped_change_is_no_event() -> None:
    record = xp_record("7", at_ms=AT, entry_id="req#r1", capped=True)

    assert event_from_record(record) is None


def test_a_progress_update_without_last_change_is_no_event() -> None:
    # An unlock without XP, or an item written before last_change existed.
    record = StreamRecord(
        "user_progress", PROGRESS, "7", "MODIFY", {"user_id": "u1", "total_xp": Decimal(5)}, None, T0_MS
    )

    assert event_from_record(record) is None


def test_the_insert_of_a_progress_item_by_a_first_award_is_an_event() -> None:
    record = xp_record(
        "7",
        at_ms=AT,
        entry_id="req#r1",
        xp=150,
        total_xp=150,
        previous_entry_id=None,
        event_name="INSERT",
        request_id="r1",
        activity_id="win-match",
    )

    assert event_from_record(record) == Event(
        "req#r1", "u1", EventType.XP_AWARDED, AT_ISO, XpChanged("req#r1", "r1", 150, 150, activity_id="win-match")
    )


def test_a_removed_progress_item_is_no_event() -> None:
    record = StreamRecord(
        "user_progress", PROGRESS, "7", "REMOVE", {}, {"user_id": "u1", "last_change": {"entry_id": "e1"}}, T0_MS
    )

    assert event_from_record(record) is None


# --- event_from_record: unlocks and level-ups ------------------------------------------------------


def test_an_unlock_record_inserted_is_an_achievement_unlocked_event() -> None:
    record = unlock_record("8", at_ms=AT, achievement_id="wins-10", xp_reward=250)

    assert event_from_record(record) == Event(
        "unlock#wins-10", "u1", EventType.ACHIEVEMENT_UNLOCKED, AT_ISO, AchievementUnlocked("wins-10", 250)
    )


@pytest.mark.parametrize("event_name", ["MODIFY", "REMOVE"])
def test_a_later_change_of_an_unlock_record_is_no_event(event_name: str) -> None:
    assert event_from_record(unlock_record("8", at_ms=AT, event_name=event_name)) is None


def test_a_level_reward_inserted_is_a_level_up_from_its_from_level() -> None:
    record = level_record("9", at_ms=AT, level=4, from_level=2, rewards=[("coins", 10), ("chest", 1)])

    assert event_from_record(record) == Event(
        "level#4", "u1", EventType.LEVEL_UP, AT_ISO, LevelUp(2, 4, (Reward("coins", 10), Reward("chest", 1)))
    )


def test_a_level_reward_without_rewards_is_a_level_up_with_none() -> None:
    record = level_record("9", at_ms=AT, level=2, from_level=1, rewards=())

    assert event_from_record(record) == Event("level#2", "u1", EventType.LEVEL_UP, AT_ISO, LevelUp(1, 2, ()))


@pytest.mark.parametrize("event_name", ["MODIFY", "REMOVE"])
def test_a_level_reward_changed_or_removed_is_no_event(event_name: str) -> None:
    assert event_from_record(level_record("9", at_ms=AT, event_name=event_name)) is None


# --- record_moment_ms -------------------------------------------------------------------------


def test_a_records_moment_is_its_items_own_time_to_the_millisecond() -> None:
    # approximate_ms is rounded to the second: the item's time is exact.
    assert record_moment_ms(xp_record("1", at_ms=AT)) == AT
    assert record_moment_ms(unlock_record("2", at_ms=AT + 1)) == AT + 1
    assert record_moment_ms(level_record("3", at_ms=AT + 2)) == AT + 2
    assert [r.approximate_ms for r in (xp_record("1", at_ms=AT), level_record("3", at_ms=AT + 2))] == [
        T0_MS + 1000,
        T0_MS + 1000,
    ]


def test_a_record_without_a_time_of_its_own_takes_the_streams_moment() -> None:
    record = StreamRecord("user_progress", PROGRESS, "7", "MODIFY", {"user_id": "u1"}, None, T0_MS + 5000)

    assert record_moment_ms(record) == T0_MS + 5000


# --- signatures -----------------------------------------------------------------------------------


def test_the_signature_header_is_an_hmac_sha256_of_the_timestamp_and_body() -> None:
    secret, body = "s" * 32, b'{"eventId":"req#r1","userId":"u1"}'

    header = signature_header(secret, 1_714_564_800, body)

    expected = hmac.new(secret.encode(), b"1714564800." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1714564800,v1={expected}"
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)


def test_the_signature_changes_with_the_secret_the_timestamp_and_the_body() -> None:
    base = signature_header("k" * 16, 100, b"{}")

    assert len({base, signature_header("j" * 16, 100, b"{}"), signature_header("k" * 16, 101, b"{}")}) == 3
    assert signature_header("k" * 16, 100, b"{ }") != base


# --- check_webhook ---------------------------------------------------------------------------------

SECRET = "0123456789abcdef"  # 16 characters: the shortest allowed


def webhook(url: str = "https://hooks.example.com/rewards", secret: str = SECRET) -> Webhook:
    return Webhook("wh-1", url, frozenset(), secret)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/rewards",
        "https://hooks.example.com:8443/rewards?game=arena",
        "https://10.0.0.7/hook",
        "https://[::1]:8443/hook",
    ],
)
def test_an_https_url_is_accepted(url: str) -> None:
    hook = webhook(url)

    assert check_webhook(hook, allow_http=False) is hook


def test_an_http_url_is_refused_unless_allowed_for_local_development() -> None:
    hook = webhook("http://localhost:9000/hook")

    with pytest.raises(InvalidField) as refused:
        check_webhook(hook, allow_http=False)

    assert refused.value.field == "webhook.url"
    assert refused.value.rule == (
        "must be an https:// URL (http:// only with REWARDS_WEBHOOKS_ALLOW_HTTP=true, for local development)"
    )
    assert check_webhook(hook, allow_http=True) is hook


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/x", "hooks.example.com/x", "javascript:alert(1)", "//h/x"])
@pytest.mark.parametrize("allow_http", [False, True])
def test_other_schemes_are_refused_whatever_allow_http(url: str, allow_http: bool) -> None:
    with pytest.raises(InvalidField) as refused:
        check_webhook(webhook(url), allow_http=allow_http)

    assert (refused.value.field, refused.value.rule) == ("webhook.url", "must be an https:// URL")


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        pytest.param("", "is required", id="empty"),
        pytest.param("https://", "must name a host", id="no host"),
        pytest.param("https:///path", "must name a host", id="empty host"),
        pytest.param(
            "https://user:pass@hooks.example.com/x",
            "must not hold credentials (the signature authenticates the sender)",
            id="user and password",
        ),
        pytest.param(
            "https://user@hooks.example.com/x",
            "must not hold credentials (the signature authenticates the sender)",
            id="user",
        ),
        pytest.param(
            "https://:pass@hooks.example.com/x",
            "must not hold credentials (the signature authenticates the sender)",
            id="password",
        ),
        pytest.param(
            "https://hooks.example.com:99999/x", "is not a URL (its port or host is malformed)", id="bad port"
        ),
        pytest.param("https://[::1/x", "is not a URL (its port or host is malformed)", id="bad ipv6"),
    ],
)
def test_a_url_breaking_a_rule_is_refused_naming_the_rule(url: str, rule: str) -> None:
    with pytest.raises(InvalidField) as refused:
        check_webhook(webhook(url), allow_http=True)

    assert (refused.value.field, refused.value.rule) == ("webhook.url", rule)


def test_a_url_of_2048_characters_is_accepted_and_one_more_is_refused() -> None:
    prefix = "https://hooks.example.com/"
    longest = prefix + "a" * (2048 - len(prefix))

    assert check_webhook(webhook(longest), allow_http=False).url == longest
    with pytest.raises(InvalidField) as refused:
        check_webhook(webhook(longest + "a"), allow_http=False)
    assert (refused.value.field, refused.value.rule) == ("webhook.url", "must be at most 2048 characters")


@pytest.mark.parametrize("length", [16, 17, 255, 256])
def test_a_secret_of_16_to_256_characters_is_accepted(length: int) -> None:
    assert check_webhook(webhook(secret="x" * length), allow_http=False).secret == "x" * length


@pytest.mark.parametrize("length", [0, 15, 257])
def test_a_secret_shorter_or_longer_is_refused(length: int) -> None:
    with pytest.raises(InvalidField) as refused:
        check_webhook(webhook(secret="x" * length), allow_http=False)

    assert (refused.value.field, refused.value.rule) == (
        "webhook.secret",
        f"must be 16 to 256 characters (got {length})",
    )


def test_the_url_is_checked_before_the_secret() -> None:
    with pytest.raises(InvalidField) as refused:
        check_webhook(webhook("http://h/x", secret="short"), allow_http=False)

    assert refused.value.field == "webhook.url"


# --- retry_delay_s ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "ceiling"),
    [(0, 5.0), (1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (10, 2560.0), (11, 3600.0), (12, 3600.0), (40, 3600.0)],
)
def test_a_retry_delay_is_drawn_from_the_upper_half_of_a_doubling_ceiling(attempts: int, ceiling: float) -> None:
    delays = [retry_delay_s(attempts, 5.0) for _ in range(300)]

    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 4  # spread, not one value


@pytest.mark.parametrize("end", ["low", "high"])
def test_the_retry_delays_bounds_double_from_the_first_delay_up_to_an_hour(
    monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    monkeypatch.setattr(
        domain, "random", types.SimpleNamespace(uniform=lambda low, high: low if end == "low" else high)
    )

    ceilings = [retry_delay_s(attempts, 2.0) for attempts in range(1, 14)]

    expected = [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 3600.0, 3600.0]
    assert ceilings == (expected if end == "high" else [c / 2 for c in expected])


def test_a_retry_delay_after_very_many_attempts_is_still_capped_at_an_hour() -> None:
    assert 1800.0 <= retry_delay_s(2000, 5.0) <= 3600.0


# --- filters and webhooks' wants ----------------------------------------------------------------


def xp_event(user_id: str = "u1", event_type: EventType = EventType.XP_AWARDED) -> Event:
    return Event("req#r1", user_id, event_type, AT_ISO, XpChanged("req#r1", "r1", 10, 110))


@pytest.mark.parametrize(
    ("event_filter", "matches"),
    [
        (EventFilter(), [True, True, True]),
        (EventFilter(user_id="u1"), [True, True, False]),
        (EventFilter(types=frozenset({EventType.LEVEL_UP})), [False, True, False]),
        (EventFilter(types=frozenset({EventType.XP_AWARDED, EventType.LEVEL_UP})), [True, True, True]),
        (EventFilter(user_id="u1", types=frozenset({EventType.XP_AWARDED})), [True, False, False]),
        (EventFilter(user_id="u3"), [False, False, False]),
    ],
)
def test_an_event_filter_takes_one_user_or_all_and_some_types_or_all(
    event_filter: EventFilter, matches: list[bool]
) -> None:
    events = [xp_event("u1"), xp_event("u1", EventType.LEVEL_UP), xp_event("u2")]

    assert [event_filter.matches(e) for e in events] == matches


def test_a_webhook_wants_its_types_or_every_type() -> None:
    every = Webhook("w", "https://h/x", frozenset(), SECRET)
    levels = Webhook("w", "https://h/x", frozenset({EventType.LEVEL_UP}), SECRET)

    assert [every.wants(xp_event(event_type=t), AT) for t in EventType] == [True] * 6
    assert [levels.wants(xp_event(event_type=t), AT) for t in EventType] == [t == EventType.LEVEL_UP for t in EventType]


def test_a_webhook_wants_the_events_from_its_creation_on() -> None:
    hook = Webhook("w", "https://h/x", frozenset(), SECRET, created_at_ms=AT)

    assert [hook.wants(xp_event(), moment) for moment in (AT - 1, AT, AT + 1)] == [False, True, True]


def test_an_events_key_is_its_user_and_id() -> None:
    assert xp_event("u7").key == "u7/req#r1"


def test_iso_to_ms_is_exact_to_the_millisecond() -> None:
    assert [domain.iso_to_ms(iso(T0_MS + ms)) for ms in (0, 1, 999, 123_456)] == [
        T0_MS,
        T0_MS + 1,
        T0_MS + 999,
        T0_MS + 123_456,
    ]
    assert domain.iso_to_ms("") == 0


# --- cursors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "positions",
    [
        {},
        {"user_progress/shardId-1": "49650000000000000001"},
        {
            "user_progress/shardId-1": "12",
            "user_achievements/shardId-2": "",
            "level_rewards/shardId-3": "@1714564800000",
        },
    ],
)
def test_a_cursor_decodes_to_the_positions_it_was_made_of(positions: dict[str, str]) -> None:
    cursor = encode_cursor(positions)

    assert decode_cursor(cursor) == positions
    assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)  # URL-safe, unpadded


def test_a_cursor_is_the_same_whatever_the_order_of_its_positions() -> None:
    assert encode_cursor({"a/1": "1", "b/2": "2"}) == encode_cursor({"b/2": "2", "a/1": "1"})


def raw_cursor(value: object) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw)).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("not a cursor", id="garbage"),
        pytest.param("!!!!", id="not base64"),
        pytest.param(base64.urlsafe_b64encode(b'{"v":1,"p":{}}').decode(), id="not compressed"),
        pytest.param(raw_cursor(b"\xff\xfe"), id="not json"),
        pytest.param(raw_cursor([1, 2]), id="not an object"),
        pytest.param(raw_cursor({"p": {}}), id="no version"),
        pytest.param(raw_cursor({"v": 2, "p": {}}), id="another version"),
        pytest.param(raw_cursor({"v": 1}), id="no positions"),
        pytest.param(raw_cursor({"v": 1, "p": ["a/1"]}), id="positions not an object"),
        pytest.param(raw_cursor({"v": 1, "p": {"noshard": "1"}}), id="shard without table"),
        pytest.param(raw_cursor({"v": 1, "p": {"t/s": 12}}), id="position a number"),
        pytest.param(raw_cursor({"v": 1, "p": {"t/s": "12a"}}), id="position not digits"),
        pytest.param(raw_cursor({"v": 1, "p": {"t/s": "@"}}), id="moment without digits"),
        pytest.param(raw_cursor({"v": 1, "p": {"t/s": "@-5"}}), id="negative moment"),
        pytest.param(raw_cursor({"v": 1, "p": {f"t/{i}": "1" for i in range(10_001)}}), id="too many shards"),
        pytest.param(raw_cursor(b"[" * 100_000 + b"]" * 100_000), id="deeply nested"),
    ],
)
def test_a_cursor_this_service_did_not_issue_is_an_invalid_cursor_field(cursor: str) -> None:
    with pytest.raises(InvalidField) as refused:
        decode_cursor(cursor)

    assert (refused.value.field, refused.value.rule) == ("cursor", "is not a cursor this service issued")


def test_a_cursor_that_inflates_far_past_any_cursor_issued_is_refused() -> None:
    bomb = raw_cursor(b'{"v":1,"p":{}}' + b" " * 16_000_000)  # ~20 KB of text

    with pytest.raises(InvalidField):
        decode_cursor(bomb)


@pytest.mark.parametrize(
    ("sequence", "position", "after"),
    [
        ("11", "10", True),
        ("10", "10", False),
        ("9", "10", False),
        ("100", "99", True),
        ("1", "", True),
        ("1", "@5", True),
    ],
)
def test_a_record_is_after_a_position_by_its_sequence_number_compared_as_numbers(
    sequence: str, position: str, after: bool
) -> None:
    assert is_after(sequence, position) is after


# --- batch_of ----------------------------------------------------------------------------------


def test_a_round_is_merged_by_time_across_shards_keeping_each_shards_order() -> None:
    p1 = xp_record("101", at_ms=T0_MS + 1000, entry_id="p1")
    p_level = xp_record("102", at_ms=T0_MS + 1000, entry_id="p1", previous_entry_id="p1")  # no event
    p2 = xp_record("103", at_ms=T0_MS + 4000, entry_id="p2")
    p3 = xp_record("104", at_ms=T0_MS + 3000, entry_id="p3")  # earlier than p2, yet after it in its shard
    a1 = unlock_record("201", at_ms=T0_MS + 2000, achievement_id="a1")
    a2 = unlock_record("202", at_ms=T0_MS + 5000, achievement_id="a2")
    l1 = level_record("301", at_ms=T0_MS + 1500, level=2)
    round_ = Round(
        records=[p1, p_level, p2, p3, a1, a2, l1],
        finished=["user_progress/shard-0"],
        started={UNLOCKS + "-child": "", LEVELS + "-child": ""},
    )

    batch = batch_of(round_)

    assert [(i.shard, i.sequence, i.event.event_id if i.event else None) for i in batch.items] == [
        (PROGRESS, "101", "p1"),
        (PROGRESS, "102", None),
        (LEVELS, "301", "level#2"),
        (UNLOCKS, "201", "unlock#a1"),
        (PROGRESS, "103", "p2"),
        (PROGRESS, "104", "p3"),
        (UNLOCKS, "202", "unlock#a2"),
    ]
    assert batch.finished == ("user_progress/shard-0",)
    assert batch.started == ((LEVELS + "-child", ""), (UNLOCKS + "-child", ""))


def test_an_xp_change_comes_before_the_level_up_it_caused_from_another_shard() -> None:
    # The follower gives the level_rewards shard's records first; the award happened first.
    level = level_record("9", at_ms=T0_MS + 20, level=2)
    award = xp_record("5", at_ms=T0_MS + 10, entry_id="req#r1")

    batch = batch_of(Round(records=[level, award]))

    assert [i.event.event_id for i in batch.items if i.event] == ["req#r1", "level#2"]


def test_an_empty_round_is_an_empty_batch() -> None:
    assert batch_of(Round()) == Batch((), (), ())


def test_a_batch_item_keeps_its_records_shard_and_sequence() -> None:
    record = unlock_record("42", at_ms=AT)

    assert batch_of(Round(records=[record])).items == (StreamItem(UNLOCKS, "42", event_from_record(record)),)


def test_a_delivery_key_is_the_plain_ids_while_they_fit_a_sort_key_and_their_digest_past_it() -> None:
    def key(user_id: str, event_id: str) -> str:
        return domain.Event(event_id, user_id, EventType.XP_AWARDED, "", domain.XpChanged(event_id, "", 1, 1)).key

    assert key("alice", "req#r1") == "alice/req#r1"
    fits = "a" * (1024 - len("/req#r"))
    assert key(fits, "req#r") == f"{fits}/req#r"  # exactly 1,024 bytes
    longest = "\U0001f3b2" * 128  # 128 four-byte characters, within the id rules
    plain = f"{longest}/req#{longest}"
    assert len(plain.encode()) > 1024
    assert key(longest, f"req#{longest}") == "sha256:" + hashlib.sha256(plain.encode()).hexdigest()
    assert "/" not in key(longest, f"req#{longest}")  # never another event's plain key


@pytest.mark.parametrize(
    "positions",
    [
        {"user_progress/shardId-1": "\u0661\u0662"},  # digits of another script
        {"user_progress/shardId-1": "1" * 41},
        {"user_progress/shardId-1": "@" + "1" * 16},
        {"user_progress/shardId-1": "-1"},
        {"user_progress/shard id": "1"},
        {"User_Progress/shardId-1": "1"},
        {"/shardId-1": "1"},
    ],
)
def test_a_cursor_naming_what_no_stream_spells_is_refused(positions: dict[str, str]) -> None:
    with pytest.raises(InvalidField) as refused:
        decode_cursor(encode_cursor(positions))
    assert refused.value.field == "cursor"


@pytest.mark.parametrize(
    ("user_id", "role", "allowed"),
    [
        ("", Role.GAME, False),
        ("alice", Role.GAME, True),
        ("", Role.ADMIN, True),
        ("", Role.SERVICE, True),
        ("", None, True),  # auth off: no caller
    ],
)
def test_a_watch_of_every_user_takes_the_admin_or_service_role(user_id: str, role: Role | None, allowed: bool) -> None:
    event_filter = domain.EventFilter(user_id)
    if allowed:
        domain.require_watch_allowed(event_filter, role)
        return
    with pytest.raises(domain.WatchNotAllowed) as refused:
        domain.require_watch_allowed(event_filter, role)
    assert refused.value.grpc_code.name == "PERMISSION_DENIED" and "user_id" in str(refused.value)
