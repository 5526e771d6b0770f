"""Hostile input, property-based: hypothesis throws generated requests (empty,
huge, unicode, control and format characters, text not in NFC, negative and extreme numbers, oversized
lists, forged page tokens and cursors, absent nested messages, raw bytes) at every RPC of
the four services and checks the contract for each answer:

1. the status is one the contract names for caller input (OK, INVALID_ARGUMENT,
   NOT_FOUND, FAILED_PRECONDITION; RESOURCE_EXHAUSTED only for a request over
   1 MiB; for WatchEvents, read with a short deadline, also DEADLINE_EXCEEDED
   when no event came, OUT_OF_RANGE, and only OUT_OF_RANGE, for a cursor naming
   a shard no longer in the streams, and UNAVAILABLE only where DynamoDB Local
   fails for a cursor position past a 64-bit integer), never INTERNAL or UNKNOWN;
2. INVALID_ARGUMENT names, first in its message and in the BadRequest detail,
   a field of the request that breaks a documented limit, and a request that
   breaks a documented limit is INVALID_ARGUMENT;
3. a refused write (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION,
   RESOURCE_EXHAUSTED) leaves every table of the stage as it was;
4. an accepted request is answered with values that fit it;
5. the servers still serve afterwards.

The documented limits are restated here from README.md and the proto comments
(`verdict_*`), not imported from the services, so that the test checks the
services against the contract rather than against themselves.

All tests share one stage (four servers, own table prefix) seeded with a small
catalog, so that valid requests, which the strategies mix in, reach the success
paths; for the events RPCs also webhooks, deliveries that failed and cursors a
watch issued. Hypothesis is derandomized and keeps no database, so CI runs the
same examples every time.

The faults it found are at the end, one test each, with the smallest example
hypothesis found as an explicit example, so that they would show at once if they
came back. All of them are fixed: no input is left out of the property tests."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import unicodedata
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import example, given, settings
from hypothesis import strategies as st

from common.dynamodb import ALL_TABLES
from common.dynamodb.streams import encode_cursor
from common.dynamodb.tables import EVENT_READERS
from rewards.v1 import achievements_pb2 as ach
from rewards.v1 import events_pb2 as ev
from rewards.v1 import levels_pb2 as lv
from rewards.v1 import xp_pb2 as xp
from tests.cluster import STANDARD_LEVELS, Cluster, authorized_channel, unique

# --- the contract, restated (README "Bad input" table, proto comments) ---------

MAX_ID = 128
MAX_CHECK_REQUEST_ID = 256
MAX_NAME, MAX_DESCRIPTION, MAX_REASON = 200, 2000, 256
MAX_XP = 1_000_000_000
MAX_LEVEL = 1_000_000
MAX_REWARDS = 50
MAX_QUANTITY = 1_000_000_000
MAX_REQUIRED_ACHIEVEMENTS = 50
MAX_MIN_TOTAL_XP = 10**12
MAX_MIN_LEVEL = 1_000_000
MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE = 100, 50
# events.proto: "user_id and webhook_id 1 to 128 characters with no control characters; url at most 2048
# characters; secret 16 to 256 characters; page_size 1 to 100 (0 means 50); at most 100 delivery_ids, each
# at most 1,024 bytes of UTF-8 (as ListFailedDeliveries gives them)"; urls https only (the stage does not
# allow http) and without credentials (README, Security).
MAX_URL = 2048
MIN_SECRET, MAX_SECRET = 16, 256
MAX_DELIVERY_IDS = 100
# A delivery_id is "<user_id>/<event_id>", or "sha256:" and the hex digest of its UTF-8 when that is over
# 1,024 bytes (FailedDelivery.delivery_id, a DynamoDB sort key). The event ids the service makes run to 136
# characters ("rev#req#<request_id>"), so a delivery_id, in RedeliverEvents and as ListFailedDeliveries'
# page_token (the last delivery_id of the page before), is 1 to 128 + 1 + 136 characters under the id
# rules (README: no control or format characters, NFC, no surrounding white space) and at most 1,024 bytes.
MAX_DELIVERY_ID = MAX_ID + 1 + len("rev#req#") + MAX_ID
MAX_DELIVERY_ID_BYTES = 1024
EVENT_TYPES = sorted(v for v in ev.EventType.values() if v != ev.EVENT_TYPE_UNSPECIFIED)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
# "Requests over 1 MiB are RESOURCE_EXHAUSTED" (README); gRPC itself refuses them.
MAX_REQUEST_BYTES = 1024 * 1024
# A default gRPC client takes response metadata (status message and details
# included) up to 8 KB for sure, refuses it past 16 KB, and in between refuses
# at random. The test's client refuses past 8 KB every time, so that an answer
# too large for some default clients fails here reproducibly.
DEFAULT_CLIENT_METADATA_BYTES = 8 * 1024
CLIENT_OPTIONS = [
    ("grpc.max_metadata_size", DEFAULT_CLIENT_METADATA_BYTES),
    ("grpc.absolute_max_metadata_size", DEFAULT_CLIENT_METADATA_BYTES),
]

ALLOWED_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}
# WatchEvents is a stream that never ends by itself: it is read with a short deadline. A valid watch
# then ends DEADLINE_EXCEEDED (no event came) unless an event came; one from a well-formed cursor that
# names shards no longer in the streams, OUT_OF_RANGE ("a cursor older than the streams' retention").
WATCH_TIMEOUT_S = 1.5
STREAM_CODES = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OUT_OF_RANGE}
# A cursor (common/dynamodb/streams.py): base64url of zlib of {"v": 1, "p": {shard key: position}}, at most
# 1 MiB inflated; a shard key "<table>/<shard id>" and a position "" (the shard's start), a sequence number
# (after it) or "@<unix ms>", in ASCII. Anything else is INVALID_ARGUMENT (cursor).
CURSOR_SHARD_KEY = re.compile(r"[a-z_]{1,64}/[A-Za-z0-9_.-]{1,65}", re.ASCII)
CURSOR_POSITION = re.compile(r"|[0-9]{1,40}|@[0-9]{1,15}", re.ASCII)
MAX_CURSOR_JSON_BYTES = 1024 * 1024
# A well-formed sequence number the shard never issued is INVALID_ARGUMENT (GetShardIterator's
# ValidationException), or read after when the shard may yet reach it. DynamoDB's sequence numbers are 21 to
# 40 digits (Streams API, GetShardIterator): a shorter one is never issued.
MIN_SEQUENCE_DIGITS = 21
# DynamoDB Local answers GetShardIterator HTTP 500 (InternalFailure, not ValidationException) for a
# sequence number of 21 to 40 digits past a signed 64-bit integer: the service, given a 5xx, answers
# UNAVAILABLE. Only for such a cursor position is UNAVAILABLE let through.
DYNAMODB_LOCAL_MAX_SEQUENCE = 2**63 - 1
# Refusals, after which every table must be as it was.
REJECTIONS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

# Derandomized and without a database: every run (and CI) tries the same examples.
# Examples per RPC keep the file within about a minute on two cores.
EXAMPLES_PER_RPC = 50
HOSTILE = settings(
    max_examples=EXAMPLES_PER_RPC,
    deadline=None,
    derandomize=True,
    database=None,
)
# A valid watch lasts WATCH_TIMEOUT_S: fewer examples, so that WatchEvents adds well under half a minute.
WATCH_EXAMPLES = 20
HOSTILE_WATCH = settings(HOSTILE, max_examples=WATCH_EXAMPLES)

# --- the seeded stage -----------------------------------------------------------

SEED_ACTIVITIES = [
    xp.Activity(activity_id="win-match", name="Win a match", category="pvp", xp=150),
    xp.Activity(activity_id="lose-match", name="Play a match", category="pvp", xp=20),
    xp.Activity(activity_id="daily-login", name="Daily login", category="daily", xp=10),
    xp.Activity(
        activity_id="quest-🐉", name="Slay the dragon 🐉", description="بطل\nheld", category="クエスト", xp=1000
    ),
    xp.Activity(activity_id="zero-xp", name="Nothing", xp=0),
    xp.Activity(activity_id="max-xp", name="Everything", xp=MAX_XP),
    # The longest id in 4-byte characters: the most bytes a key and an error message can get.
    xp.Activity(
        activity_id="🐉" * MAX_ID,
        name="🐉" * MAX_NAME,
        description="🐉" * MAX_DESCRIPTION,
        category="🐉" * MAX_ID,
        xp=7,
    ),
    # For DeleteActivity to delete (DISPOSABLE_ACTIVITY_IDS).
    xp.Activity(activity_id="disposable-1", name="To delete"),
    xp.Activity(activity_id="disposable-✨", name="To delete"),
]
SEED_ACHIEVEMENTS = [
    ach.Achievement(achievement_id="first-win", name="First win", xp_reward=50),
    ach.Achievement(
        achievement_id="veteran",
        name="Veteran",
        xp_reward=100,
        requirements=ach.Requirements(required_achievements=["first-win"], min_total_xp=500, min_level=3),
    ),
    ach.Achievement(achievement_id="hidden-gem", name="Hidden gem", hidden=True),
    ach.Achievement(achievement_id="новичок", name="Новичок", description="первый шаг", xp_reward=5),
    ach.Achievement(
        achievement_id="far-away",
        name="Far away",
        xp_reward=MAX_XP,
        requirements=ach.Requirements(min_total_xp=MAX_MIN_TOTAL_XP, min_level=MAX_MIN_LEVEL),
    ),
    # For DeleteAchievement to delete (DISPOSABLE_ACHIEVEMENT_IDS).
    ach.Achievement(achievement_id="disposable-1", name="To delete"),
    ach.Achievement(achievement_id="disposable-✨", name="To delete"),
]
# Levels 20-22 are there for DeleteLevel; the valid levels PutLevel and
# DeleteLevel send stay above STANDARD_LEVELS, so that level-ups stay reachable.
SEED_LEVELS = STANDARD_LEVELS + [lv.Level(level=n, xp_required=n * 10**6) for n in (20, 21, 22)]

# Valid values, unicode included, so that some requests succeed; "missing-*"
# ids are valid but not in the catalog (NOT_FOUND).
USER_IDS = [
    "player-1",
    "player-2",
    "spieler-ü",
    "玩家-三",
    "🎮-gamer",
    "لاعب",
    "joueur-é",  # in NFC: é is U+00E9
    "u" * MAX_ID,
    "🎲" * MAX_ID,
]
ACTIVITY_IDS = [a.activity_id for a in SEED_ACTIVITIES] + ["missing-activity", "new-activity-✨"]
ACHIEVEMENT_IDS = [a.achievement_id for a in SEED_ACHIEVEMENTS] + ["missing-achievement", "new-achievement-✨"]
# Deletes aim at entries seeded (or put) for the purpose, so that the other
# RPCs keep a catalog to succeed with whatever order the tests run in.
DISPOSABLE_ACTIVITY_IDS = ["disposable-1", "disposable-✨", "missing-activity", "new-activity-✨"]
DISPOSABLE_ACHIEVEMENT_IDS = ["disposable-1", "disposable-✨", "missing-achievement", "new-achievement-✨"]
DISPOSABLE_LEVELS = [20, 21, 22, 23]
# GrantXp may name an achievement; these are never in the catalog, so that grants
# here do not block the catalog's unlocks (that interaction has its own test).
GRANT_ONLY_ACHIEVEMENT_IDS = ["grant-only-1", "grant-only-✨"]
REQUEST_IDS = ["", "match-1", "match-2", "☃-request", "r" * MAX_ID, "🎮" * MAX_ID]
CATEGORIES = ["", "pvp", "daily", "クエスト", "missing-category"]
NAMES = ["Win", "Ежедневный вход", "🏆🏆", "multi\nline", "n" * MAX_NAME]
DESCRIPTIONS = ["", "tab\tand\nnewline", "مرحبا بالعالم", "d" * MAX_DESCRIPTION]
REASONS = ["bonus", "tournament\nbonus", "r" * MAX_REASON]
REWARD_IDS = ["coins", "chest-🎁", "gold" * 32]

# Webhooks POST to a port where nothing listens: a delivery fails at its first attempt (the stage keeps
# no retry window), so that failed deliveries exist for ListFailedDeliveries and RedeliverEvents. No
# webhook exists while the other services' RPCs run (Stage.reset_catalog): none of their events is
# delivered anywhere, and no delivery is written behind a refused write's back.
NOWHERE = "https://127.0.0.1:1"
SEED_SECRET = "whsec-" + "s3cr3t" * 4
SEED_WEBHOOKS = [
    ev.Webhook(webhook_id="hook-1", url=f"{NOWHERE}/hook", secret=SEED_SECRET),
    ev.Webhook(
        webhook_id="hook-✨",
        url=f"{NOWHERE}/✨?team=🐉",
        types=[ev.EVENT_TYPE_LEVEL_UP, ev.EVENT_TYPE_ACHIEVEMENT_UNLOCKED],
        secret="🔑" * MIN_SECRET,
    ),
    # The longest id, url and secret, the id and secret in 4-byte characters.
    ev.Webhook(
        webhook_id="🪝" * MAX_ID, url=NOWHERE + "/" + "p" * (MAX_URL - len(NOWHERE) - 1), secret="🔑" * MAX_SECRET
    ),
    # For DeleteWebhook to delete (DISPOSABLE_WEBHOOK_IDS).
    ev.Webhook(webhook_id="disposable-1", url=f"{NOWHERE}/1", secret=SEED_SECRET),
    ev.Webhook(webhook_id="disposable-✨", url=f"{NOWHERE}/2", secret=SEED_SECRET),
]
WEBHOOK_IDS = [w.webhook_id for w in SEED_WEBHOOKS] + ["missing-webhook", "new-webhook-✨"]
DISPOSABLE_WEBHOOK_IDS = ["disposable-1", "disposable-✨", "missing-webhook", "new-webhook-✨"]
# The webhook whose deliveries the stage makes fail (of these players' events). The stage's awards have a
# request_id of 128 four-byte characters: the last player's ids are over 1,024 bytes, "sha256:" ones.
FAILING_WEBHOOK = "hook-1"
HOOK_USERS = ["hook-user-1", "hook-user-2", "🦄" * MAX_ID]
VALID_URLS = [
    f"{NOWHERE}/hook",
    NOWHERE,
    "HTTPS://127.0.0.1:1/Hook",
    "https://localhost:1/hooks/🐉?team=✨&x=1#frag",
    NOWHERE + "/" + "p" * (MAX_URL - len(NOWHERE) - 1),
]
SECRETS = [
    "s" * MIN_SECRET,
    SEED_SECRET,
    "🔑" * MIN_SECRET,
    "s" * MAX_SECRET,
    "🐉" * MAX_SECRET,
    "a secret\twith spaces",
]

WHITESPACE = " \t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u2007\u200a\u2028\u2029\u202f\u205f\u3000"
# Characters that look like nothing or reorder text: all but the last two are
# format characters (Cf), which ids must not contain; anywhere else they must not
# upset anything.
INVISIBLE = "\u200b\u200c\u200d\u200e\u200f\u202a\u202e\u2066\u2069\ufeff\u00ad\ufffc\ufffd"
RTL = "שלוםمرحبا\u0627\u0644"
EMOJI = "🎮🏆🐉👩‍👩‍👧✨🇺🇳"
# Not in NFC, which ids must be in: decomposed letters (NFD), and singletons
# that NFC replaces (ANGSTROM SIGN, OHM SIGN, CJK COMPATIBILITY IDEOGRAPH).
NOT_NFC = [
    unicodedata.normalize("NFD", "café"),
    unicodedata.normalize("NFD", "spieler-ü"),
    unicodedata.normalize("NFD", "한국"),
    "\u212b",
    "player-\u2126",
    "\uf900",
]


# --- strategies -----------------------------------------------------------------


def _repeated_to(unit: str, length: int) -> str:
    # Built, not drawn character by character: hypothesis stays fast at thousands of characters.
    return (unit * (length // len(unit) + 1))[:length]


def sized_text(lengths: st.SearchStrategy[int]) -> st.SearchStrategy[str]:
    """Text of exactly the drawn length, from a short drawn unit (which may be
    multi-byte, astral, control or white space)."""
    return st.builds(_repeated_to, st.text(min_size=1, max_size=3), lengths)


def near(limit: int) -> st.SearchStrategy[int]:
    return st.sampled_from([limit - 1, limit, limit + 1])


def hostile_text(limit: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(""),
        st.text(alphabet=st.sampled_from(WHITESPACE), min_size=1, max_size=4),
        st.text(max_size=24),  # any unicode: control characters, NUL, unassigned, private use
        st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cn"]), min_size=1, max_size=8),
        st.text(alphabet=st.sampled_from(INVISIBLE + RTL + EMOJI), min_size=1, max_size=12),
        st.sampled_from(NOT_NFC),
        st.text(alphabet=st.characters(min_codepoint=0x10000), min_size=1, max_size=8),  # 4 UTF-8 bytes each
        sized_text(near(limit)),
        # The longest allowed length in 4-byte characters: DynamoDB counts bytes in keys.
        st.builds(_repeated_to, st.sampled_from(["🐉", "\U0010fffd", "𝔘"]), near(limit)),
        sized_text(st.integers(limit + 2, 6000)),
    )


def padded(valid: list[str]) -> st.SearchStrategy[str]:
    """A valid value with something put before, after or inside it."""
    return st.builds(
        lambda value, extra, where: {
            "before": extra + value,
            "after": value + extra,
            "inside": value[:1] + extra + value[1:],
        }[where],
        st.sampled_from([v for v in valid if v] or ["x"]),
        st.sampled_from(
            [" ", "\t", "\n", "\x00", "\x7f", "\x1b[31m", "\u3000", "\xa0", "\u200b", "\u202e", "\ufeff", "🐉"]
        ),
        st.sampled_from(["before", "after", "inside"]),
    )


def text_field(valid: list[str], limit: int) -> tuple[st.SearchStrategy[str], st.SearchStrategy[str]]:
    """(valid values, any values) of one string field."""
    return st.sampled_from(valid), st.one_of(st.sampled_from(valid), hostile_text(limit), padded(valid))


def int_field(valid: tuple[int, int], bits: int) -> tuple[st.SearchStrategy[int], st.SearchStrategy[int]]:
    """(valid values, any values) of one integer field of `bits` bits."""
    low, high = valid
    lowest, highest = INT32 if bits == 32 else INT64
    edges = sorted(
        {
            v
            for v in (
                low,
                high,
                low - 1,
                high + 1,
                0,
                -1,
                1,
                -high,
                lowest,
                lowest + 1,
                highest - 1,
                highest,
                INT32[0],
                INT32[1],
                10**12,
                10**12 + 1,
                10**15,
            )
            if lowest <= v <= highest
        }
    )
    in_range = st.one_of(st.sampled_from([low, high]), st.integers(low, high))
    return in_range, st.one_of(in_range, st.sampled_from(edges), st.integers(lowest, highest))


Choices = tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]


def message_field(
    build: Callable[..., Any], finish_valid: Callable[[Any], Any] | None = None, **fields: Choices
) -> Choices:
    """(valid messages, any messages), from (valid, any) choices per field.
    Valid messages have every field valid, so that the success path is reached
    often (`finish_valid` mends what independent fields cannot, an achievement
    requiring itself). The others are either valid but for one field, which
    checks that the refusal blames that field, or anything at all."""

    def drawn(pick: Callable[[str, Choices], st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
        return st.fixed_dictionaries({name: pick(name, pair) for name, pair in fields.items()}).map(
            lambda v: build(**v)
        )

    valid = drawn(lambda name, pair: pair[0])
    if finish_valid is not None:
        valid = valid.map(finish_valid)
    one_field_off = st.one_of(
        [drawn(lambda name, pair, off=off: pair[1] if name == off else pair[0]) for off in fields]
    )
    return valid, st.one_of(one_field_off, drawn(lambda name, pair: pair[1]))


def optional_message(choices: Choices) -> Choices:
    """A nested message: present when valid; otherwise also absent (None) or
    present with every field at its default ("empty")."""
    return choices[0], st.one_of(st.none(), st.just("empty"), choices[1])


def with_nested(message: Message, name: str, value: Any) -> Message:
    if value == "empty":
        getattr(message, name).SetInParent()
    elif value is not None:
        getattr(message, name).CopyFrom(value)
    return message


def requests(choices: Choices) -> st.SearchStrategy[Message]:
    return st.one_of(choices[0], choices[1])


def page_tokens(stage: Stage, key: str) -> st.SearchStrategy[str]:
    """Issued tokens and forgeries: text, base64 of bytes, base64 of JSON of the
    right or wrong shape with hostile values. (Deeply nested JSON has its own test.)"""

    json_values = st.one_of(
        st.text(max_size=12),
        hostile_text(MAX_ID),
        st.integers(),
        st.floats(),
        st.none(),
        st.booleans(),
        st.lists(st.integers(), max_size=3),
        st.sampled_from(ACTIVITY_IDS + ACHIEVEMENT_IDS),
    )
    forged = st.one_of(
        st.fixed_dictionaries({key: json_values}),
        st.fixed_dictionaries({key: json_values, "category": json_values}),
        st.dictionaries(
            st.one_of(st.sampled_from([key, "category", "user_id", "level"]), st.text(max_size=6)),
            json_values,
            max_size=4,
        ),
        st.one_of(st.integers(), st.text(max_size=10), st.lists(st.text(max_size=4), max_size=3), st.none()),
    ).map(lambda value: json.dumps(value).encode())
    raw = st.one_of(
        st.binary(max_size=64),
        forged,
        st.sampled_from([b"{}", b"[]", b"null", b"1e999", b'""', b"\xef\xbb\xbf{}", b'{"a":1,"a":2}']),
    )
    return st.one_of(
        st.just(""),
        st.sampled_from(sorted(token for _, token in stage.seed_tokens)),  # issued, perhaps for another listing
        st.text(max_size=40),
        st.builds(_b64, raw, st.booleans(), st.booleans()),
        sized_text(st.integers(1000, 20000)),
    )


def event_types() -> Choices:
    """(valid, any) repeated EventType: known types (repeats too), or also EVENT_TYPE_UNSPECIFIED,
    unknown numbers and the int32 extremes."""
    odd = st.sampled_from([ev.EVENT_TYPE_UNSPECIFIED, 7, 99, -1, *INT32])
    return (
        st.lists(st.sampled_from(EVENT_TYPES), max_size=len(EVENT_TYPES) + 1),
        st.one_of(
            st.lists(st.one_of(st.sampled_from(EVENT_TYPES), odd), min_size=1, max_size=8),
            st.integers(0, 40).map(lambda n: [EVENT_TYPES[i % len(EVENT_TYPES)] for i in range(n)]),
        ),
    )


def urls() -> Choices:
    """(valid, any) webhook urls: https, http, ftp and other schemes, credentials, hosts and ports
    good and bad, hostile paths, no scheme at all, around the 2048-character limit and far past it."""
    scheme = st.sampled_from(["https", "HTTPS", "http", "ftp", "wss", "file", "javascript", "h", ""])
    userinfo = st.sampled_from(["", "user@", "user:pass@", ":pass@", "user:@", "@", ":@", "a@b@"])
    host = st.one_of(
        st.sampled_from(["127.0.0.1", "localhost", "[::1]", "[::1", "hooks.invalid", "bücher.invalid", "🐉.invalid"]),
        st.sampled_from(["\u2100.invalid", "ﬁ.invalid", "xn--bcher-kva.invalid", "h" * 253, ""]),
        hostile_text(MAX_URL // 4),  # long parts within the limit, in 4-byte characters too
    )
    port = st.one_of(
        st.sampled_from(["", ":1", ":443", ":0", ":65535", ":65536", ":99999", ":-1", ":", ":x", ":１２"]),
        st.builds(lambda text: ":" + text, hostile_text(MAX_URL // 4)),
    )
    path = st.one_of(
        st.sampled_from(["", "/", "/hook", "/hooks?x=1#frag", "/🐉", "/a b", "/%00", "/../..", "?only=query"]),
        st.builds(lambda text: "/" + text, hostile_text(MAX_URL // 4)),
    )
    structured = st.builds(
        lambda scheme, userinfo, host, port, path: f"{scheme}://{userinfo}{host}{port}{path}",
        scheme,
        userinfo,
        host,
        port,
        path,
    )
    sized = st.builds(
        lambda prefix, unit, length: prefix + _repeated_to(unit, max(length - len(prefix), 0)),
        st.sampled_from([f"{NOWHERE}/", "https://", "http://127.0.0.1:1/", "https://h:", "https://u:p@h/"]),
        st.sampled_from(["p", "é", "🐉", "%", " "]),
        st.one_of(near(MAX_URL), st.integers(MAX_URL + 2, 20_000)),
    )
    junk = st.sampled_from(
        [
            "junk",
            "https:",
            "https://",
            "https:///x",
            "//127.0.0.1:1/",
            "127.0.0.1:1/hook",
            "https:127.0.0.1",
            "mailto:a@b",
        ]
    )
    valid, hostile = text_field(VALID_URLS, MAX_URL)
    return valid, st.one_of(hostile, structured, sized, junk)


def _b64(raw: bytes, urlsafe: bool = True, strip: bool = True) -> str:
    encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
    return encoded.rstrip("=") if strip else encoded


def cursor_entries(cursor: str) -> dict[str, Any] | None:
    """The entries (shard key: position) of a text in a cursor's form, read as encode_cursor writes it, not
    yet checked; None when it is not in that form (or inflates past MAX_CURSOR_JSON_BYTES)."""
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), MAX_CURSOR_JSON_BYTES)
        values = None if inflater.unconsumed_tail else json.loads(raw)
    except (ValueError, zlib.error, RecursionError):
        return None
    if not isinstance(values, dict) or values.get("v") != 1 or not isinstance(values.get("p"), dict):
        return None
    return values["p"]


def cursor_positions(cursor: str) -> dict[str, str] | None:
    """The positions a cursor names; None when it is not a well-formed cursor."""
    entries = cursor_entries(cursor)
    if entries is None or not all(
        CURSOR_SHARD_KEY.fullmatch(shard) and isinstance(position, str) and CURSOR_POSITION.fullmatch(position)
        for shard, position in entries.items()
    ):
        return None
    return entries


SOURCE_TABLES = ["user_progress", "user_achievements", "level_rewards"]


def cursors(stage: Stage) -> Choices:
    """(valid, any) cursors: empty, issued by a watch, or well-formed (encode_cursor) but naming only
    shards of the source tables that are not in their streams (OUT_OF_RANGE: "older than the
    retention"); otherwise text, base64 and zlib junk, and cursors in the issued form with forged shard
    keys and positions (sequence numbers too short, too long, past a 64-bit integer, digits of other
    scripts)."""
    shard_ids = sorted({key.split("/", 1)[1] for key in stage.shard_keys})
    gone_shard = st.builds(lambda shard, n: shard[:-n] + "0" * n, st.sampled_from(shard_ids), st.integers(1, 8))
    forged_key = st.one_of(
        st.builds(
            lambda table, shard: f"{table}/{shard}",
            st.sampled_from(SOURCE_TABLES + ["xp_ledger", "", "🐉"]),
            st.one_of(st.sampled_from(shard_ids), gone_shard, st.text(max_size=24)),  # live ids, under any table
        ),
        st.text(max_size=12).map(lambda text: text + "/"),
    )
    position = st.one_of(
        st.just(""),
        st.sampled_from(sorted(position for _, position in stage.issued_positions)),
        st.integers(0, 2**64).map(lambda n: f"@{n}"),
        st.integers(0, 10**40).map(lambda n: str(n).zfill(21)),  # shaped like DynamoDB's sequence numbers
        st.integers(0, 10**50).map(str),
        st.integers(DYNAMODB_LOCAL_MAX_SEQUENCE - 1, DYNAMODB_LOCAL_MAX_SEQUENCE + 2).map(lambda n: str(n).zfill(21)),
        st.integers(0, 10**15).map(lambda n: f"@{n}"),  # "@" and up to 16 digits
        st.text(alphabet=st.characters(categories=["Nd"]), min_size=1, max_size=24),  # digits of any script
    )
    well_formed = st.dictionaries(
        st.one_of(st.sampled_from(stage.shard_keys), forged_key), position, min_size=1, max_size=4
    ).map(encode_cursor)
    shapes = st.one_of(
        st.fixed_dictionaries({"v": st.sampled_from([1, 2, "1", None]), "p": st.one_of(st.integers(), st.text())}),
        st.fixed_dictionaries(
            {"v": st.just(1), "p": st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.none()))}
        ),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    ).map(lambda value: json.dumps(value).encode())
    zlib_junk = st.one_of(
        st.builds(zlib.compress, st.one_of(shapes, st.binary(max_size=40))),
        # Far larger inflated than any cursor, from a few KB.
        st.sampled_from([2 * 10**6, 2 * 10**7]).map(lambda n: zlib.compress(b'{"v":1,"p":{}' + b" " * n + b"}")),
    )
    expired = st.dictionaries(
        st.builds(lambda table, shard: f"{table}/{shard}", st.sampled_from(SOURCE_TABLES), gone_shard).filter(
            lambda key: key not in stage.shard_keys
        ),
        position,
        min_size=1,
        max_size=3,
    ).map(encode_cursor)
    valid = st.one_of(st.sampled_from([""] + stage.issued_cursors), expired)
    # Well-formed ones half the time: they are the ones that reach the streams.
    return valid, st.one_of(
        well_formed,
        st.one_of(
            valid,
            st.builds(_b64, st.one_of(zlib_junk, st.binary(max_size=64)), st.booleans(), st.booleans()),
            hostile_text(MAX_ID),
            padded(stage.issued_cursors),
            sized_text(st.integers(1000, 20000)),
        ),
    )


def delivery_ids(stage: Stage) -> Choices:
    """(valid, any) RedeliverEvents.delivery_ids: some failed deliveries (or none: all of them), up to
    the limit; otherwise hostile ids, ids over 1024 bytes, and lists past the limit."""
    failed = stage.failed_deliveries[FAILING_WEBHOOK]
    known = failed + ["missing-user/req#missing", "🐉/level#2", "sha256:" + "0" * 64, "🐉" * MAX_ID + "/rev#req#x"]

    def numbered(count: int) -> list[str]:
        return [f"user-{i}/req#{i}" for i in range(count)]

    return (
        st.one_of(
            st.lists(st.sampled_from(known), max_size=4),
            st.integers(MAX_DELIVERY_IDS - 2, MAX_DELIVERY_IDS).map(numbered),
        ),
        st.one_of(
            st.lists(text_field(known, MAX_DELIVERY_ID)[1], min_size=1, max_size=6),
            st.lists(delivery_shaped(), min_size=1, max_size=3),
            st.integers(MAX_DELIVERY_IDS - 1, 150).map(numbered),
            st.builds(
                lambda ids, times: ids * times,
                st.lists(st.sampled_from(failed), min_size=1, max_size=3),
                st.integers(40, 60),
            ),
        ),
    )


def delivery_shaped() -> st.SearchStrategy[str]:
    """Delivery ids, "<user_id>/<event_id>", of hostile parts: 4-byte characters at the limits (a key's
    bytes), and "sha256:" ones of hex digests or not."""
    part = st.one_of(
        st.builds(_repeated_to, st.sampled_from(["🐉", "u", "é"]), near(MAX_ID)),
        st.builds(
            lambda unit, length: "rev#req#" + _repeated_to(unit, length), st.sampled_from(["🐉", "r"]), near(MAX_ID)
        ),
        hostile_text(MAX_ID),
        st.sampled_from(["", "/", "req#x", "level#2"]),
    )
    hashed = st.builds(
        lambda digest: "sha256:" + digest,
        st.one_of(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), hostile_text(MAX_ID)),
    )
    return st.one_of(st.builds(lambda user, event: f"{user}/{event}", part, part), hashed)


# --- verdicts: which fields of a request break a documented limit ----------------


@dataclass
class Verdict:
    broken: set[str] = field(default_factory=set)  # break a documented limit: must be INVALID_ARGUMENT
    doubtful: set[str] = field(default_factory=set)  # the contract leaves open: either answer
    # Unless INVALID_ARGUMENT names a field above: the one code the request must get (None: any of the RPC's).
    expected: grpc.StatusCode | None = None
    # Codes besides the RPC's that this request may get (DynamoDB Local's quirks, each said where it is added).
    also_allowed: set[grpc.StatusCode] = field(default_factory=set)

    def allows_naming(self, name: str) -> bool:
        return name in self.broken or name in self.doubtful


def _has_control_character(value: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in value)


def _has_format_character(value: str) -> bool:
    return any(unicodedata.category(ch) == "Cf" for ch in value)


def check_id(verdict: Verdict, name: str, value: str, *, required: bool = True, max_length: int = MAX_ID) -> None:
    """ids: 1 to 128 characters, in Unicode NFC, no control or format characters,
    no surrounding white space."""
    if not value:
        if required:
            verdict.broken.add(name)
        return
    if (
        len(value) > max_length
        or _has_control_character(value)
        or _has_format_character(value)
        or not unicodedata.is_normalized("NFC", value)
        or value[0].isspace()
        or value[-1].isspace()
    ):
        verdict.broken.add(name)


def check_text(verdict: Verdict, name: str, value: str, *, max_length: int, required: bool = False) -> None:
    if len(value) > max_length or (required and not value):
        verdict.broken.add(name)
    if required and value and not value.strip():
        verdict.doubtful.add(name)  # "required": whether white space alone counts is not said
    if _has_control_character(value.replace("\n", "").replace("\t", "")):
        verdict.doubtful.add(name)  # control characters in text: not documented either way


def check_range(verdict: Verdict, name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        verdict.broken.add(name)


def check_page(verdict: Verdict, stage: Stage, listing: tuple[str, str], page_size: int, page_token: str) -> None:
    check_range(verdict, "page_size", page_size, 0, MAX_PAGE_SIZE)
    if page_token and (listing, page_token) not in stage.issued_tokens:
        verdict.doubtful.add("page_token")  # a forged token may happen to be well formed


def verdict_put_activity(request: xp.PutActivityRequest, stage: Stage) -> Verdict:
    verdict = Verdict()
    if not request.HasField("activity"):
        verdict.broken.add("activity")
        return verdict
    activity = request.activity
    check_id(verdict, "activity.activity_id", activity.activity_id)
    check_text(verdict, "activity.name", activity.name, max_length=MAX_NAME, required=True)
    check_text(verdict, "activity.description", activity.description, max_length=MAX_DESCRIPTION)
    check_id(verdict, "activity.category", activity.category, required=False)
    check_range(verdict, "activity.xp", activity.xp, 0, MAX_XP)
    return verdict


def verdict_activity_id(request: Any, stage: Stage) -> Verdict:
    verdict = Verdict()
    check_id(verdict, "activity_id", request.activity_id)
    return verdict


def verdict_list_activities(request: xp.ListActivitiesRequest, stage: Stage) -> Verdict:
    verdict = Verdict()
    check_id(verdict, "category", request.category, required=False)
    check_page(verdict, stage, ("ListActivities", request.category), request.page_size, request.page_token)
    return verdict


def verdict_award_xp(request: xp.AwardXpRequest, stage: Stage) -> Verdict:
    verdict = Verdict()
    check_id(verdict, "user_id", request.user_id)
    check_id(verdict, "activity_id", request.activity_id)
    check_id(verdict, "request_id", request.request_id, required=False)
    return verdict


def verdict_grant_xp(request: xp.GrantXpRequest, stage: Stage) -> Verdict:
    verdict = Verdict()
    check_id(verdict, "user_id", request.user_id)
    check_range(verdict, "amount", request.amount, 0, MAX_XP)
    check_text(verdict, "reason", request.reason, max_length=MAX_REASON, required=True)
    check_id(verdict, "request_id", request.request_id, required=False)
    check_id(verdict, "achievement_id", request.achievement_id, required=False)
    if request.request_id and request.achievement_id:  # "request_id must be empty" when achievement_id is set
        verdict.broken.update({"request_id", "achievement_id"})
    return verdict


def verdict_user_id(request: Any, stage: Stage) -> Verdict:
    verdict = Verdict()
    check_id(verdict, "user_id", request.user_id)
    return verdict


def verdict_user_page(listing: str) -> Callable[[Any, Stage], Verdict]:
    """A user's paged listing: the user_id and the page fields."""

    def verdict(request: Any, stage: Stage) -> Verdict:
        found = verdict_user_id(request, stage)
        check_page(found, stage, (listing, request.user_id), request.page_size, request.page_token)
        return found

    return verdict


def verdict_list_levels(request: lv.ListLevelsRequest, stage: Stage) -> Verdict:
    verdict = Verdict()
    check_page(verdict, stage, ("ListLevels", ""), request.page_size, request.page_token)
    return verdict


def verdict_put_achievement(request: ach.PutAchievementRequest, stage: Stage) -> Verdict:
    verdict = Verdict()
    if not request.HasField("achievement"):
        verdict.broken.add("achievement")
        return verdict
    achievement = request.achievement
    check_id(verdict, "achievement.achievement_id", achievement.achievement_id)
    check_text(verdict, "achievement.name", achievement.name, max_length=MAX_NAME, required=True)
    check_text(verdict, "achievement.description", achievement.description, max_length=MAX_DESCRIPTION)
    check_range(verdict, "achievement.xp_reward", achievement.xp_reward, 0, MAX_XP)
    requirements = achievement.requirements
    required = list(requirements.required_achievements)
    for i, required_id in enumerate(required):
        name = f"achievement.requirements.required_achievements[{i}]"
        check_id(verdict, name, required_id)
        if required_id == achievement.achievement_id:
            verdict.broken.add(name)  # "at most 50 required achievements (not itself)"
    if len(set(required)) > MAX_REQUIRED_ACHIEVEMENTS:
        verdict.broken.add("achievement.requirements.required_achievements")
    elif len(required) > MAX_REQUIRED_ACHIEVEMENTS:
        verdict.doubtful.add("achievement.requirements.required_achievements")  # duplicates: count them or not
    check_range(verdict, "achievement.requirements.min_total_xp", requirements.min_total_xp, 0, MAX_MIN_TOTAL_XP)
    check_range(verdict, "achievement.requirements.min_level", requirements.min_level, 0, MAX_MIN_LEVEL)
    return verdict


def verdict_achievement_id(request: Any, stage: Stage) -> Verdict:
    verdict = Verdict()
    check_id(verdict, "achievement_id", request.achievement_id)
    return verdict


def verdict_list_achievements(request: ach.ListAchievementsRequest, stage: Stage) -> Verdict:
    verdict = Verdict()
    check_page(verdict, stage, ("ListAchievements", ""), request.page_size, request.page_token)
    return verdict


def verdict_unlock(request: ach.UnlockAchievementRequest, stage: Stage) -> Verdict:
    verdict = Verdict()
    check_id(verdict, "user_id", request.user_id)
    check_id(verdict, "achievement_id", request.achievement_id)
    check_id(verdict, "request_id", request.request_id, required=False)
    return verdict


def verdict_put_level(request: lv.PutLevelRequest, stage: Stage) -> Verdict:
    verdict = Verdict()
    if not request.HasField("level"):
        verdict.broken.add("level")
        return verdict
    level = request.level
    check_range(verdict, "level.level", level.level, 1, MAX_LEVEL)
    check_range(verdict, "level.xp_required", level.xp_required, 0, MAX_XP)
    if len(level.rewards) > MAX_REWARDS:
        verdict.broken.add("level.rewards")
    for i, reward in enumerate(level.rewards):
        check_id(verdict, f"level.rewards[{i}].reward_id", reward.reward_id)
        check_range(verdict, f"level.rewards[{i}].quantity", reward.quantity, 1, MAX_QUANTITY)
    return verdict


def verdict_delete_level(request: lv.DeleteLevelRequest, stage: Stage) -> Verdict:
    verdict = Verdict()
    if request.level < 1:
        verdict.broken.add("level")
    elif request.level > MAX_LEVEL:
        verdict.doubtful.add("level")  # past any level that can exist: NOT_FOUND would do as well
    return verdict


def verdict_check_level_up(request: lv.CheckLevelUpRequest, stage: Stage) -> Verdict:
    verdict = Verdict()
    check_id(verdict, "user_id", request.user_id)
    check_id(verdict, "request_id", request.request_id, required=False, max_length=MAX_CHECK_REQUEST_ID)
    return verdict


def check_events_id(verdict: Verdict, name: str, value: str, *, required: bool = True) -> None:
    """An id of events.proto that README's id rules do not list (webhook_id): "1 to 128 characters with
    no control characters". Whether the other id rules (NFC, format characters, white space) apply to it
    is not said: either answer."""
    if not value:
        if required:
            verdict.broken.add(name)
        return
    if len(value) > MAX_ID or _has_control_character(value):
        verdict.broken.add(name)
    elif _has_format_character(value) or not unicodedata.is_normalized("NFC", value) or value != value.strip():
        verdict.doubtful.add(name)


def check_event_types(verdict: Verdict, name: str, values: list[int]) -> None:
    # EVENT_TYPE_UNSPECIFIED and numbers EventType lacks: not said; refusing them names the entry or the list.
    for i, value in enumerate(values):
        if value not in EVENT_TYPES:
            verdict.doubtful.update({f"{name}[{i}]", name})


def check_url(verdict: Verdict, name: str, url: str) -> None:
    """Required, at most 2048 characters, https (the stage does not allow http), no credentials.
    What a URL parser makes of the rest (white space, control characters, odd hosts and ports) is not
    said: either answer."""
    if not url or len(url) > MAX_URL:
        verdict.broken.add(name)
        return
    if any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in url):
        verdict.doubtful.add(name)
        return
    parts = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", url, re.DOTALL)
    if parts is None:
        # No scheme at all, or a scheme without "//": not an https url, unless it starts like one.
        (verdict.doubtful if url.lower().startswith("https:") else verdict.broken).add(name)
        return
    scheme, authority, _ = parts.groups()
    userinfo, at, host_port = authority.rpartition("@")
    if scheme.lower() != "https" or userinfo.replace(":", ""):
        verdict.broken.add(name)
        return
    host, _, port = host_port.partition(":")
    if (
        at
        or not re.fullmatch(r"[A-Za-z0-9.-]+", host)
        or (":" in host_port and not (port.isascii() and port.isdigit() and int(port) <= 65535))
    ):
        verdict.doubtful.add(name)


def check_delivery_id(verdict: Verdict, name: str, value: str, *, required: bool = True) -> None:
    """A delivery id (MAX_DELIVERY_ID): 1 to 265 characters under the id rules, at most 1,024 bytes of
    UTF-8. One within them that names no failed delivery finds none: it is not refused."""
    if not value:
        if required:
            verdict.broken.add(name)
        return
    check_id(verdict, name, value, max_length=MAX_DELIVERY_ID)
    if len(value.encode()) > MAX_DELIVERY_ID_BYTES:
        verdict.broken.add(name)


def check_cursor(verdict: Verdict, stage: Stage, cursor: str) -> None:
    if not cursor or cursor in stage.issued_cursors:
        return
    positions = cursor_positions(cursor)
    if positions is None:
        verdict.broken.add("cursor")  # not in the issued form, or a shard key or position of another shape
        return
    if any(shard.split("/", 1)[0] in SOURCE_TABLES and shard not in stage.shard_keys for shard in positions):
        # A shard of a source table that is no longer in its stream: "older than the streams' retention".
        verdict.expected = grpc.StatusCode.OUT_OF_RANGE
        return
    # Sequence numbers in live shards that no watch here was given (shards of other tables are not read).
    unissued = [
        position
        for shard, position in positions.items()
        if shard in stage.shard_keys and position.isdigit() and (shard, position) not in stage.issued_positions
    ]
    if not unissued:
        return
    verdict.doubtful.add("cursor")  # perhaps one its shard issued since, or one it may yet reach: read after it
    if any(len(p) >= MIN_SEQUENCE_DIGITS and int(p) > DYNAMODB_LOCAL_MAX_SEQUENCE for p in unissued):
        # DynamoDB Local's HTTP 500 for it (see DYNAMODB_LOCAL_MAX_SEQUENCE); on AWS a ValidationException.
        verdict.also_allowed.add(grpc.StatusCode.UNAVAILABLE)
    elif any(len(p) < MIN_SEQUENCE_DIGITS for p in unissued):
        verdict.broken.add("cursor")  # a number no shard issues


def verdict_watch_events(request: ev.WatchEventsRequest, stage: Stage) -> Verdict:
    verdict = Verdict()
    check_id(verdict, "user_id", request.user_id, required=False)  # empty: every user (the stage is admin)
    check_event_types(verdict, "types", list(request.types))
    check_cursor(verdict, stage, request.cursor)
    return verdict


def verdict_put_webhook(request: ev.PutWebhookRequest, stage: Stage) -> Verdict:
    verdict = Verdict()
    if not request.HasField("webhook"):
        verdict.broken.add("webhook")
        return verdict
    webhook = request.webhook
    check_events_id(verdict, "webhook.webhook_id", webhook.webhook_id)
    check_url(verdict, "webhook.url", webhook.url)
    check_event_types(verdict, "webhook.types", list(webhook.types))
    if not MIN_SECRET <= len(webhook.secret) <= MAX_SECRET:
        verdict.broken.add("webhook.secret")
    elif _has_control_character(webhook.secret):
        verdict.doubtful.add("webhook.secret")
    return verdict


def verdict_webhook_id(request: Any, stage: Stage) -> Verdict:
    verdict = Verdict()
    check_events_id(verdict, "webhook_id", request.webhook_id)
    return verdict


def verdict_list_webhooks(request: ev.ListWebhooksRequest, stage: Stage) -> Verdict:
    verdict = Verdict()
    check_page(verdict, stage, ("ListWebhooks", ""), request.page_size, request.page_token)
    return verdict


def verdict_list_failed_deliveries(request: ev.ListFailedDeliveriesRequest, stage: Stage) -> Verdict:
    # Its page_token is the last delivery_id of the page before: any delivery id is one (the page after it).
    verdict = verdict_webhook_id(request, stage)
    check_range(verdict, "page_size", request.page_size, 0, MAX_PAGE_SIZE)
    check_delivery_id(verdict, "page_token", request.page_token, required=False)
    return verdict


def verdict_redeliver_events(request: ev.RedeliverEventsRequest, stage: Stage) -> Verdict:
    verdict = verdict_webhook_id(request, stage)
    if len(request.delivery_ids) > MAX_DELIVERY_IDS:
        verdict.broken.add("delivery_ids")
    for i, delivery_id in enumerate(request.delivery_ids):
        check_delivery_id(verdict, f"delivery_ids[{i}]", delivery_id)
    return verdict


# --- what an accepted request must be answered with -------------------------------


def delivery_id_of(user_id: str, event_id: str) -> str:
    """FailedDelivery.delivery_id: "<user_id>/<event_id>", or "sha256:" and the hex digest of its UTF-8
    when that is over 1,024 bytes."""
    plain = f"{user_id}/{event_id}"
    if len(plain.encode()) <= MAX_DELIVERY_ID_BYTES:
        return plain
    return "sha256:" + hashlib.sha256(plain.encode()).hexdigest()


def ok_put_activity(stage: Stage, request: xp.PutActivityRequest, response: xp.Activity) -> None:
    assert response == request.activity


def ok_get_activity(stage: Stage, request: xp.GetActivityRequest, response: xp.Activity) -> None:
    assert response.activity_id == request.activity_id
    assert 0 <= response.xp <= MAX_XP


def ok_list_activities(stage: Stage, request: xp.ListActivitiesRequest, response: xp.ListActivitiesResponse) -> None:
    assert len(response.activities) <= (request.page_size or DEFAULT_PAGE_SIZE)
    if request.category:
        assert {a.category for a in response.activities} <= {request.category}
    if response.next_page_token:
        stage.issued_tokens.add((("ListActivities", request.category), response.next_page_token))


def ok_empty(stage: Stage, request: Message, response: Message) -> None:
    assert response.ByteSize() == 0


def ok_award(stage: Stage, request: xp.AwardXpRequest | xp.GrantXpRequest, response: xp.AwardXpResponse) -> None:
    assert response.user_id == request.user_id
    assert 0 <= response.xp_awarded <= MAX_XP
    assert response.total_xp >= response.xp_awarded
    if isinstance(request, xp.GrantXpRequest):
        assert response.xp_awarded == request.amount  # a repeat with another amount is refused
    assert not response.level_check_deferred  # Levels is up and the deadline generous
    assert response.level_up.user_id == request.user_id
    assert response.level == response.level_up.current_level
    assert response.total_xp == response.level_up.total_xp


def ok_progress(stage: Stage, request: xp.GetProgressRequest, response: xp.UserProgress) -> None:
    assert response.user_id == request.user_id
    assert response.total_xp >= 0 and response.level >= 0
    assert list(response.unlocked_achievements) == sorted(set(response.unlocked_achievements))


def ok_put_achievement(stage: Stage, request: ach.PutAchievementRequest, response: ach.Achievement) -> None:
    expected = ach.Achievement()
    expected.CopyFrom(request.achievement)
    # Stored with its requirements spelled out, duplicates dropped (first kept).
    deduplicated = list(dict.fromkeys(expected.requirements.required_achievements))
    del expected.requirements.required_achievements[:]
    expected.requirements.required_achievements.extend(deduplicated)
    assert response == expected


def ok_get_achievement(stage: Stage, request: ach.GetAchievementRequest, response: ach.Achievement) -> None:
    assert response.achievement_id == request.achievement_id


def ok_list_achievements(
    stage: Stage, request: ach.ListAchievementsRequest, response: ach.ListAchievementsResponse
) -> None:
    assert len(response.achievements) <= (request.page_size or DEFAULT_PAGE_SIZE)
    if response.next_page_token:
        stage.issued_tokens.add((("ListAchievements", ""), response.next_page_token))


def ok_unlock(stage: Stage, request: ach.UnlockAchievementRequest, response: ach.UnlockAchievementResponse) -> None:
    assert response.achievement.achievement_id == request.achievement_id
    if not response.already_unlocked:
        # 0 where a GrantXp naming the achievement paid it before the unlock.
        assert response.xp_awarded in (response.achievement.xp_reward, 0)
    assert response.total_xp >= response.xp_awarded >= 0


def ok_user_achievements(
    stage: Stage, request: ach.ListUserAchievementsRequest, response: ach.ListUserAchievementsResponse
) -> None:
    assert response.user_id == request.user_id
    ids = [a.achievement_id for a in response.achievements]
    assert ids == sorted(set(ids)) and len(ids) <= (request.page_size or DEFAULT_PAGE_SIZE)
    if response.next_page_token:
        stage.issued_tokens.add((("ListUserAchievements", request.user_id), response.next_page_token))


def ok_levels_reached(
    stage: Stage, request: lv.ListLevelsReachedRequest, response: lv.ListLevelsReachedResponse
) -> None:
    assert response.user_id == request.user_id
    numbers = [level.level for level in response.levels]
    assert numbers == sorted(set(numbers)) and len(numbers) <= (request.page_size or DEFAULT_PAGE_SIZE)
    if response.next_page_token:
        stage.issued_tokens.add((("ListLevelsReached", request.user_id), response.next_page_token))


def ok_put_level(stage: Stage, request: lv.PutLevelRequest, response: lv.Level) -> None:
    assert response == request.level


def ok_list_levels(stage: Stage, request: lv.ListLevelsRequest, response: lv.ListLevelsResponse) -> None:
    numbers = [level.level for level in response.levels]
    assert numbers == sorted(set(numbers)) and len(numbers) <= (request.page_size or DEFAULT_PAGE_SIZE)
    assert all(1 <= n <= MAX_LEVEL for n in numbers)
    if response.next_page_token:
        stage.issued_tokens.add((("ListLevels", ""), response.next_page_token))


def ok_check_level_up(stage: Stage, request: lv.CheckLevelUpRequest, response: lv.LevelUpResult) -> None:
    assert response.user_id == request.user_id
    assert response.current_level >= response.previous_level >= 0
    if not response.leveled_up:
        assert not response.rewards and response.current_level == response.previous_level


def ok_watch_events(stage: Stage, request: ev.WatchEventsRequest, response: ev.WatchEventsResponse) -> None:
    """An event came: one the watch asked for, with a cursor to reconnect with."""
    event = response.event
    assert event.event_id and event.user_id and event.occurred_at.seconds > 0, response
    if request.user_id:
        assert event.user_id == request.user_id, response
    if request.types:
        assert event.type in request.types, response
    assert event.type in EVENT_TYPES and event.WhichOneof("detail"), response
    assert cursor_positions(response.cursor) is not None, response.cursor


def ok_put_webhook(stage: Stage, request: ev.PutWebhookRequest, response: ev.Webhook) -> None:
    # "Returns the webhook without its secret."
    assert not response.secret
    assert (response.webhook_id, response.url) == (request.webhook.webhook_id, request.webhook.url)
    assert set(response.types) == set(request.webhook.types)


def ok_list_webhooks(stage: Stage, request: ev.ListWebhooksRequest, response: ev.ListWebhooksResponse) -> None:
    ids = [w.webhook_id for w in response.webhooks]
    assert ids == sorted(set(ids)) and len(ids) <= (request.page_size or DEFAULT_PAGE_SIZE)
    assert not any(w.secret for w in response.webhooks)  # "secrets are never shown"
    if response.next_page_token:
        stage.issued_tokens.add((("ListWebhooks", ""), response.next_page_token))


def ok_list_failed_deliveries(
    stage: Stage, request: ev.ListFailedDeliveriesRequest, response: ev.ListFailedDeliveriesResponse
) -> None:
    # "in delivery_id order", after the page_token (the last delivery_id of the page before).
    ids = [d.delivery_id for d in response.deliveries]
    assert ids == sorted(set(ids)) and all(i > request.page_token for i in ids), (request.page_token, ids)
    assert len(response.deliveries) <= (request.page_size or DEFAULT_PAGE_SIZE)
    for delivery in response.deliveries:
        assert delivery.delivery_id == delivery_id_of(delivery.event.user_id, delivery.event.event_id), delivery
        assert delivery.attempts >= 1 and delivery.last_error and delivery.failed_at.seconds > 0, delivery
    if request.webhook_id not in stage.failed_deliveries:
        assert not response.deliveries  # no delivery of it failed
    if response.next_page_token:
        stage.issued_tokens.add((("ListFailedDeliveries", request.webhook_id), response.next_page_token))


def ok_redeliver_events(stage: Stage, request: ev.RedeliverEventsRequest, response: ev.RedeliverEventsResponse) -> None:
    failed = stage.failed_deliveries.get(request.webhook_id, [])
    # At most the failed deliveries it names, or all of them (a name repeated while the dispatcher
    # fails it again in between may count twice).
    most = sum(d in failed for d in request.delivery_ids) if request.delivery_ids else len(failed)
    assert 0 <= response.redelivered <= most, response
    if response.redelivered:
        # They fail again at once: wait, so that no write of the dispatcher falls into the next request's check.
        stage.settle_deliveries()


# --- the RPCs -------------------------------------------------------------------

SERVICE_NAMES = {
    "xp": "XpService",
    "achievements": "AchievementsService",
    "levels": "LevelsService",
    "events": "EventsService",
}


@dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    request_type: type[Message]
    response_type: type[Message]
    writes: bool
    verdict: Callable[[Any, Stage], Verdict]
    accepted: Callable[[Stage, Any, Any], None]
    streaming: bool = False  # server streaming: its first response is read (WATCH_TIMEOUT_S)

    @property
    def path(self) -> str:
        return f"/rewards.v1.{SERVICE_NAMES[self.service]}/{self.name}"

    @property
    def allowed(self) -> set[grpc.StatusCode]:
        return ALLOWED_CODES | (STREAM_CODES if self.streaming else set())

    @property
    def hostile(self) -> settings:
        return HOSTILE_WATCH if self.streaming else HOSTILE


RPCS = {
    rpc.name: rpc
    for rpc in [
        Rpc("xp", "PutActivity", xp.PutActivityRequest, xp.Activity, True, verdict_put_activity, ok_put_activity),
        Rpc("xp", "GetActivity", xp.GetActivityRequest, xp.Activity, False, verdict_activity_id, ok_get_activity),
        Rpc(
            "xp",
            "ListActivities",
            xp.ListActivitiesRequest,
            xp.ListActivitiesResponse,
            False,
            verdict_list_activities,
            ok_list_activities,
        ),
        Rpc(
            "xp",
            "DeleteActivity",
            xp.DeleteActivityRequest,
            xp.DeleteActivityResponse,
            True,
            verdict_activity_id,
            ok_empty,
        ),
        Rpc("xp", "AwardXp", xp.AwardXpRequest, xp.AwardXpResponse, True, verdict_award_xp, ok_award),
        Rpc("xp", "GrantXp", xp.GrantXpRequest, xp.AwardXpResponse, True, verdict_grant_xp, ok_award),
        Rpc("xp", "GetProgress", xp.GetProgressRequest, xp.UserProgress, False, verdict_user_id, ok_progress),
        Rpc(
            "achievements",
            "PutAchievement",
            ach.PutAchievementRequest,
            ach.Achievement,
            True,
            verdict_put_achievement,
            ok_put_achievement,
        ),
        Rpc(
            "achievements",
            "GetAchievement",
            ach.GetAchievementRequest,
            ach.Achievement,
            False,
            verdict_achievement_id,
            ok_get_achievement,
        ),
        Rpc(
            "achievements",
            "ListAchievements",
            ach.ListAchievementsRequest,
            ach.ListAchievementsResponse,
            False,
            verdict_list_achievements,
            ok_list_achievements,
        ),
        Rpc(
            "achievements",
            "DeleteAchievement",
            ach.DeleteAchievementRequest,
            ach.DeleteAchievementResponse,
            True,
            verdict_achievement_id,
            ok_empty,
        ),
        Rpc(
            "achievements",
            "UnlockAchievement",
            ach.UnlockAchievementRequest,
            ach.UnlockAchievementResponse,
            True,
            verdict_unlock,
            ok_unlock,
        ),
        Rpc(
            "achievements",
            "ListUserAchievements",
            ach.ListUserAchievementsRequest,
            ach.ListUserAchievementsResponse,
            False,
            verdict_user_page("ListUserAchievements"),
            ok_user_achievements,
        ),
        Rpc("levels", "PutLevel", lv.PutLevelRequest, lv.Level, True, verdict_put_level, ok_put_level),
        Rpc(
            "levels",
            "ListLevels",
            lv.ListLevelsRequest,
            lv.ListLevelsResponse,
            False,
            verdict_list_levels,
            ok_list_levels,
        ),
        Rpc(
            "levels",
            "ListLevelsReached",
            lv.ListLevelsReachedRequest,
            lv.ListLevelsReachedResponse,
            False,
            verdict_user_page("ListLevelsReached"),
            ok_levels_reached,
        ),
        Rpc(
            "levels", "DeleteLevel", lv.DeleteLevelRequest, lv.DeleteLevelResponse, True, verdict_delete_level, ok_empty
        ),
        Rpc(
            "levels",
            "CheckLevelUp",
            lv.CheckLevelUpRequest,
            lv.LevelUpResult,
            True,
            verdict_check_level_up,
            ok_check_level_up,
        ),
        Rpc(
            "events",
            "WatchEvents",
            ev.WatchEventsRequest,
            ev.WatchEventsResponse,
            False,
            verdict_watch_events,
            ok_watch_events,
            streaming=True,
        ),
        Rpc("events", "PutWebhook", ev.PutWebhookRequest, ev.Webhook, True, verdict_put_webhook, ok_put_webhook),
        Rpc(
            "events",
            "ListWebhooks",
            ev.ListWebhooksRequest,
            ev.ListWebhooksResponse,
            False,
            verdict_list_webhooks,
            ok_list_webhooks,
        ),
        Rpc(
            "events",
            "DeleteWebhook",
            ev.DeleteWebhookRequest,
            ev.DeleteWebhookResponse,
            True,
            verdict_webhook_id,
            ok_empty,
        ),
        Rpc(
            "events",
            "ListFailedDeliveries",
            ev.ListFailedDeliveriesRequest,
            ev.ListFailedDeliveriesResponse,
            False,
            verdict_list_failed_deliveries,
            ok_list_failed_deliveries,
        ),
        Rpc(
            "events",
            "RedeliverEvents",
            ev.RedeliverEventsRequest,
            ev.RedeliverEventsResponse,
            True,
            verdict_redeliver_events,
            ok_redeliver_events,
        ),
    ]
}


def _without_self_requirement(achievement: ach.Achievement) -> ach.Achievement:
    kept = [a for a in achievement.requirements.required_achievements if a != achievement.achievement_id]
    del achievement.requirements.required_achievements[:]
    achievement.requirements.required_achievements.extend(kept)
    return achievement


def requests_for(name: str, stage: Stage) -> st.SearchStrategy[Message]:
    """Every request an RPC can be sent, valid ones often enough to succeed."""
    user_id = text_field(USER_IDS, MAX_ID)
    request_id = text_field(REQUEST_IDS, MAX_ID)
    amount = int_field((0, MAX_XP), 64)
    if name == "PutActivity":
        activity = message_field(
            xp.Activity,
            activity_id=text_field(ACTIVITY_IDS, MAX_ID),
            name=text_field(NAMES, MAX_NAME),
            description=text_field(DESCRIPTIONS, MAX_DESCRIPTION),
            category=text_field(CATEGORIES, MAX_ID),
            xp=amount,
        )
        return requests(
            message_field(
                lambda activity: with_nested(xp.PutActivityRequest(), "activity", activity),
                activity=optional_message(activity),
            )
        )
    if name == "GetActivity":
        return requests(message_field(xp.GetActivityRequest, activity_id=text_field(ACTIVITY_IDS, MAX_ID)))
    if name == "DeleteActivity":
        return requests(
            message_field(xp.DeleteActivityRequest, activity_id=text_field(DISPOSABLE_ACTIVITY_IDS, MAX_ID))
        )
    if name == "ListActivities":
        issued = [(listing[1], token) for listing, token in stage.seed_tokens if listing[0] == "ListActivities"]
        return requests(
            message_field(
                lambda page, page_size: xp.ListActivitiesRequest(
                    category=page[0], page_token=page[1], page_size=page_size
                ),
                page=(
                    st.one_of(st.tuples(st.sampled_from(CATEGORIES), st.just("")), st.sampled_from(issued)),
                    st.tuples(text_field(CATEGORIES, MAX_ID)[1], page_tokens(stage, "activity_id")),
                ),
                page_size=int_field((0, MAX_PAGE_SIZE), 32),
            )
        )
    if name == "AwardXp":
        return requests(
            message_field(
                xp.AwardXpRequest, user_id=user_id, activity_id=text_field(ACTIVITY_IDS, MAX_ID), request_id=request_id
            )
        )
    if name == "GrantXp":
        # request_id and achievement_id together break a rule: valid grants set one or neither.
        keys = (
            st.one_of(
                st.tuples(st.sampled_from(REQUEST_IDS), st.just("")),
                st.tuples(st.just(""), st.sampled_from(GRANT_ONLY_ACHIEVEMENT_IDS)),
            ),
            st.tuples(request_id[1], text_field([""] + GRANT_ONLY_ACHIEVEMENT_IDS, MAX_ID)[1]),
        )
        return requests(
            message_field(
                lambda user_id, amount, reason, keys: xp.GrantXpRequest(
                    user_id=user_id, amount=amount, reason=reason, request_id=keys[0], achievement_id=keys[1]
                ),
                user_id=user_id,
                amount=amount,
                reason=text_field(REASONS, MAX_REASON),
                keys=keys,
            )
        )
    if name in ("GetProgress", "ListUserAchievements", "ListLevelsReached"):
        return requests(message_field(RPCS[name].request_type, user_id=user_id))
    if name == "PutAchievement":

        def distinct(count: int) -> list[str]:
            return [f"req-{i}" for i in range(count)]

        required = (
            st.one_of(
                st.lists(st.sampled_from(ACHIEVEMENT_IDS), max_size=4, unique=True),
                st.integers(MAX_REQUIRED_ACHIEVEMENTS - 2, MAX_REQUIRED_ACHIEVEMENTS).map(distinct),
            ),
            st.one_of(
                st.lists(text_field(ACHIEVEMENT_IDS, MAX_ID)[1], max_size=6),
                st.lists(st.sampled_from(ACHIEVEMENT_IDS), min_size=2, max_size=8),  # repeats, itself perhaps
                st.integers(MAX_REQUIRED_ACHIEVEMENTS - 1, 60).map(distinct),
                # more than 50 entries, few of them distinct
                st.builds(
                    lambda ids, times: ids * times,
                    st.lists(st.sampled_from(ACHIEVEMENT_IDS), min_size=1, max_size=3),
                    st.integers(17, 30),
                ),
            ),
        )
        requirements = message_field(
            ach.Requirements,
            required_achievements=required,
            min_total_xp=int_field((0, MAX_MIN_TOTAL_XP), 64),
            min_level=int_field((0, MAX_MIN_LEVEL), 32),
        )
        achievement = message_field(
            lambda requirements, **values: with_nested(ach.Achievement(**values), "requirements", requirements),
            finish_valid=_without_self_requirement,
            achievement_id=text_field(ACHIEVEMENT_IDS, MAX_ID),
            name=text_field(NAMES, MAX_NAME),
            description=text_field(DESCRIPTIONS, MAX_DESCRIPTION),
            xp_reward=amount,
            hidden=(st.booleans(), st.booleans()),
            requirements=(
                st.one_of(st.none(), requirements[0]),
                st.one_of(st.none(), st.just("empty"), requirements[1]),
            ),
        )
        return requests(
            message_field(
                lambda achievement: with_nested(ach.PutAchievementRequest(), "achievement", achievement),
                achievement=optional_message(achievement),
            )
        )
    if name == "GetAchievement":
        return requests(message_field(ach.GetAchievementRequest, achievement_id=text_field(ACHIEVEMENT_IDS, MAX_ID)))
    if name == "DeleteAchievement":
        return requests(
            message_field(ach.DeleteAchievementRequest, achievement_id=text_field(DISPOSABLE_ACHIEVEMENT_IDS, MAX_ID))
        )
    if name == "ListAchievements":
        issued_tokens = [token for listing, token in stage.seed_tokens if listing[0] == "ListAchievements"]
        return requests(
            message_field(
                ach.ListAchievementsRequest,
                page_size=int_field((0, MAX_PAGE_SIZE), 32),
                page_token=(st.sampled_from([""] + issued_tokens), page_tokens(stage, "achievement_id")),
            )
        )
    if name == "UnlockAchievement":
        return requests(
            message_field(
                ach.UnlockAchievementRequest,
                user_id=user_id,
                achievement_id=text_field(ACHIEVEMENT_IDS, MAX_ID),
                request_id=request_id,
            )
        )
    if name == "PutLevel":
        reward = message_field(
            lv.Reward, reward_id=text_field(REWARD_IDS, MAX_ID), quantity=int_field((1, MAX_QUANTITY), 64)
        )

        def numbered_rewards(count: int) -> list[lv.Reward]:
            return [lv.Reward(reward_id=f"item-{i}", quantity=i + 1) for i in range(count)]

        level = message_field(
            lambda rewards, **values: lv.Level(rewards=rewards, **values),
            # Valid levels stay above STANDARD_LEVELS, so that the other RPCs keep
            # reachable level-ups (DeleteLevel aims there too).
            level=(st.integers(6, MAX_LEVEL), int_field((1, MAX_LEVEL), 32)[1]),
            xp_required=int_field((0, MAX_XP), 64),
            rewards=(
                st.one_of(
                    st.lists(reward[0], max_size=3), st.integers(MAX_REWARDS - 2, MAX_REWARDS).map(numbered_rewards)
                ),
                st.one_of(st.lists(reward[1], max_size=5), st.integers(MAX_REWARDS - 1, 60).map(numbered_rewards)),
            ),
        )
        return requests(
            message_field(
                lambda level: with_nested(lv.PutLevelRequest(), "level", level), level=optional_message(level)
            )
        )
    if name == "ListLevels":
        return st.just(lv.ListLevelsRequest())
    if name == "DeleteLevel":
        return requests(
            message_field(
                lv.DeleteLevelRequest,
                level=(st.sampled_from(DISPOSABLE_LEVELS + [MAX_LEVEL]), int_field((1, MAX_LEVEL), 32)[1]),
            )
        )
    if name == "CheckLevelUp":
        return requests(
            message_field(
                lv.CheckLevelUpRequest,
                user_id=user_id,
                request_id=text_field(
                    REQUEST_IDS + ["c" * MAX_CHECK_REQUEST_ID, "🐉" * MAX_CHECK_REQUEST_ID], MAX_CHECK_REQUEST_ID
                ),
            )
        )
    if name == "WatchEvents":
        return requests(
            message_field(
                ev.WatchEventsRequest,
                user_id=(st.sampled_from([""] + USER_IDS + HOOK_USERS), user_id[1]),
                types=event_types(),
                cursor=cursors(stage),
            )
        )
    if name == "PutWebhook":
        webhook = message_field(
            ev.Webhook,
            webhook_id=text_field(WEBHOOK_IDS, MAX_ID),
            url=urls(),
            types=event_types(),
            secret=(
                st.sampled_from(SECRETS),
                st.one_of(st.sampled_from(SECRETS), hostile_text(MAX_SECRET), sized_text(near(MIN_SECRET))),
            ),
        )
        return requests(
            message_field(
                lambda webhook: with_nested(ev.PutWebhookRequest(), "webhook", webhook),
                webhook=optional_message(webhook),
            )
        )
    if name == "ListWebhooks":
        issued_tokens = [token for listing, token in stage.seed_tokens if listing[0] == "ListWebhooks"]
        return requests(
            message_field(
                ev.ListWebhooksRequest,
                page_size=int_field((0, MAX_PAGE_SIZE), 32),
                page_token=(
                    st.sampled_from([""] + issued_tokens),
                    st.one_of(page_tokens(stage, "webhook_id"), text_field(WEBHOOK_IDS, MAX_ID)[1]),
                ),
            )
        )
    if name == "DeleteWebhook":
        return requests(message_field(ev.DeleteWebhookRequest, webhook_id=text_field(DISPOSABLE_WEBHOOK_IDS, MAX_ID)))
    if name == "ListFailedDeliveries":
        issued = [(listing[1], token) for listing, token in stage.seed_tokens if listing[0] == name]
        return requests(
            message_field(
                lambda page, page_size: ev.ListFailedDeliveriesRequest(
                    webhook_id=page[0], page_token=page[1], page_size=page_size
                ),
                page=(
                    st.one_of(st.tuples(st.sampled_from(WEBHOOK_IDS), st.just("")), st.sampled_from(issued)),
                    st.tuples(
                        text_field(WEBHOOK_IDS, MAX_ID)[1],
                        st.one_of(
                            page_tokens(stage, "event_key"),
                            delivery_shaped(),
                            st.sampled_from(stage.failed_deliveries[FAILING_WEBHOOK]),
                        ),
                    ),
                ),
                page_size=int_field((0, MAX_PAGE_SIZE), 32),
            )
        )
    if name == "RedeliverEvents":
        return requests(
            message_field(
                ev.RedeliverEventsRequest,
                webhook_id=text_field([FAILING_WEBHOOK, "hook-✨", "missing-webhook"], MAX_ID),
                delivery_ids=delivery_ids(stage),
            )
        )
    raise AssertionError(f"no requests for {name}")


# --- the stage and the properties -------------------------------------------------


def _canonical(value: Any) -> Any:
    """An item in DynamoDB's typed JSON with its sets sorted: sets come back in any order."""
    if isinstance(value, dict):
        return {k: sorted(v) if k in ("SS", "NS", "BS") else _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    response: bytes | None
    error: grpc.RpcError | None


class Stage:
    """The four servers on their own tables, a snapshot of those tables, and
    the page tokens, cursors and failed deliveries the servers made."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.channels = {
            service: authorized_channel(f"localhost:{cluster.ports[service]}", options=CLIENT_OPTIONS)
            for service in SERVICE_NAMES
        }
        # From the definitions, not list_tables: the session's emulator holds many stages' tables. Not
        # event_readers: the webhooks' reader of the streams renews its lease there and saves its position
        # as it reads the other services' writes, whatever the requests (no request writes it).
        self.tables = sorted(cluster.table(table.name) for table in ALL_TABLES if table is not EVENT_READERS)
        self._scans = ThreadPoolExecutor(len(self.tables), thread_name_prefix="snapshot")
        self._snapshot: dict[str, frozenset[str]] | None = None
        self.issued_tokens: set[tuple[tuple[str, str], str]] = set()
        self.seed_tokens: list[tuple[tuple[str, str], str]] = []
        # Cursors a watch answered with, the (shard key, position) pairs in them, every shard key of the
        # stage's streams, and the deliveries that failed per webhook: all made by the fixture.
        self.issued_cursors: list[str] = []
        self.issued_positions: set[tuple[str, str]] = set()
        self.shard_keys: list[str] = []
        self.failed_deliveries: dict[str, list[str]] = {}

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self._scans.shutdown()

    def reset_catalog(self, *, webhooks: bool = False) -> None:
        """Back to the seeded catalog, so that each test starts from the same
        catalog whatever ran before it (users keep their progress), with no
        webhook, or (`webhooks`, for the events RPCs) the seeded ones."""
        dynamodb, table = self.cluster.dynamodb, self.cluster.table
        for name, key in (
            ("activities", "activity_id"),
            ("achievements", "achievement_id"),
            ("levels", "level"),
            ("webhooks", "webhook_id"),
        ):
            for page in dynamodb.get_paginator("scan").paginate(
                TableName=table(name), ProjectionExpression="#k", ExpressionAttributeNames={"#k": key}
            ):
                for item in page["Items"]:
                    dynamodb.delete_item(TableName=table(name), Key=item)
        self.cluster.put_levels(SEED_LEVELS)
        for activity in SEED_ACTIVITIES:
            self.cluster.xp.PutActivity(xp.PutActivityRequest(activity=activity))
        for achievement in SEED_ACHIEVEMENTS:
            self.cluster.achievements.PutAchievement(ach.PutAchievementRequest(achievement=achievement))
        if webhooks:
            for webhook in SEED_WEBHOOKS:
                self.cluster.events.PutWebhook(ev.PutWebhookRequest(webhook=webhook))
        self.forget_snapshot()

    def settle_deliveries(self, timeout_s: float = 30) -> None:
        """Waits until no delivery is pending (the dispatcher sends a pending one at once, and with no
        retry window it fails for good), so that the dispatcher writes nothing more."""
        deadline = time.monotonic() + timeout_s
        while True:
            pending = self.cluster.dynamodb.scan(
                TableName=self.cluster.table("webhook_deliveries"),
                FilterExpression="attribute_exists(pending)",
                ConsistentRead=True,
                Select="COUNT",
            )
            if not pending["Count"] and "LastEvaluatedKey" not in pending:
                return
            assert time.monotonic() < deadline, "deliveries still pending"
            time.sleep(0.05)

    def call(self, rpc: Rpc, payload: bytes) -> Outcome:
        # Raw bytes both ways, so that malformed requests can be sent as well.
        channel = self.channels[rpc.service]
        try:
            if not rpc.streaming:
                unary: Any = channel.unary_unary(rpc.path)
                return Outcome(grpc.StatusCode.OK, "", unary(payload, timeout=60), None)
            # A stream: its first response, or how it ended; a valid watch outlives the deadline.
            stream: Any = channel.unary_stream(rpc.path)
            call = stream(payload, timeout=WATCH_TIMEOUT_S)
            try:
                return Outcome(grpc.StatusCode.OK, "", next(iter(call)), None)
            except StopIteration:
                return Outcome(grpc.StatusCode.OK, "the stream ended without a response", None, None)
            finally:
                call.cancel()
        except grpc.RpcError as error:
            return Outcome(error.code(), error.details() or "", None, error)

    def snapshot(self) -> dict[str, frozenset[str]]:
        """Every item of every table of the stage (they stay small)."""

        def scan(table: str) -> tuple[str, frozenset[str]]:
            items: set[str] = set()
            for page in self.cluster.dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
                items.update(json.dumps(_canonical(item), sort_keys=True) for item in page["Items"])
            return table, frozenset(items)

        return dict(self._scans.map(scan, self.tables))

    def snapshot_before_write(self) -> dict[str, frozenset[str]]:
        # Reads write nothing, so the snapshot after the last write still holds.
        if self._snapshot is None:
            self._snapshot = self.snapshot()
        return self._snapshot

    def assert_unchanged_since(self, before: dict[str, frozenset[str]], what: str) -> None:
        after = self.snapshot()
        self._snapshot = after
        changes = {
            table: {
                "written": sorted(after[table] - before[table])[:3],
                "gone": sorted(before[table] - after[table])[:3],
            }
            for table in self.tables
            if after[table] != before[table]
        }
        assert not changes, f"{what} changed the stage's tables: {json.dumps(changes, ensure_ascii=False)[:3000]}"

    def forget_snapshot(self) -> None:
        self._snapshot = None


def named_field(outcome: Outcome) -> str:
    """The field an INVALID_ARGUMENT names, checked to be named alike in its
    message and its google.rpc.BadRequest detail."""
    assert outcome.error is not None
    name = outcome.details.split(" ", 1)[0]
    status = rpc_status.from_call(outcome.error)
    assert status is not None, f"INVALID_ARGUMENT without rich details: {outcome.details!r}"
    bad_request = error_details_pb2.BadRequest()
    assert status.details and status.details[0].Unpack(bad_request), outcome.details
    assert bad_request.field_violations[0].field == name, (bad_request, outcome.details)
    return name


def field_path_exists(descriptor: Any, path: str) -> bool:
    """True when `path` ("achievement.requirements.required_achievements[3]")
    names a field of the message type `descriptor`."""
    for part in path.split("."):
        field_descriptor = descriptor.fields_by_name.get(part.split("[", 1)[0]) if descriptor is not None else None
        if field_descriptor is None:
            return False
        descriptor = field_descriptor.message_type
    return True


def assert_answered_within_contract(stage: Stage, rpc: Rpc, payload: bytes) -> Outcome:
    """Sends one request (as bytes) and checks every property of its answer."""
    before = stage.snapshot_before_write() if rpc.writes else None
    outcome = stage.call(rpc, payload)
    if before is not None and outcome.code not in REJECTIONS:
        stage.forget_snapshot()  # it may have written, as it may
    try:
        check_answer(stage, rpc, payload, outcome)
        if before is not None and outcome.code in REJECTIONS:
            stage.assert_unchanged_since(
                before, f"{rpc.name} answered {outcome.code.name} ({outcome.details[:300]}) but"
            )
    except BaseException:
        stage.forget_snapshot()  # hypothesis replays examples: the next one must not compare with a stale snapshot
        raise
    return outcome


def check_answer(stage: Stage, rpc: Rpc, payload: bytes, outcome: Outcome) -> None:
    if len(payload) > MAX_REQUEST_BYTES:
        allowed = rpc.allowed | {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert outcome.code in allowed, f"{rpc.name} answered {outcome.code.name}: {outcome.details}"
        return
    try:
        request = rpc.request_type.FromString(payload)
    except DecodeError:
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
        assert outcome.details.startswith("request is not a valid protobuf message"), outcome.details
        return
    # Fields this test does not know (raw bytes may carry some) are the server's to ignore.
    request.DiscardUnknownFields()
    verdict = rpc.verdict(request, stage)
    allowed = rpc.allowed | verdict.also_allowed
    assert outcome.code in allowed, f"{rpc.name} answered {outcome.code.name}: {outcome.details}"
    if outcome.code == grpc.StatusCode.OUT_OF_RANGE:  # only "a cursor older than the streams' retention"
        assert getattr(request, "cursor", ""), f"{rpc.name} answered OUT_OF_RANGE without a cursor: {outcome.details}"
    if outcome.code == grpc.StatusCode.INVALID_ARGUMENT:
        name = named_field(outcome)
        assert field_path_exists(rpc.request_type.DESCRIPTOR, name), f"names no field of the request: {outcome.details}"
        assert verdict.allows_naming(name), (
            f"{rpc.name} blamed {name!r}, which keeps the documented limits; broken: {sorted(verdict.broken)}; "
            f"message: {outcome.details}"
        )
    else:
        assert not verdict.broken, (
            f"{rpc.name} answered {outcome.code.name} ({outcome.details}) although {sorted(verdict.broken)} "
            f"break documented limits"
        )
        assert verdict.expected in (None, outcome.code), (
            f"{rpc.name} answered {outcome.code.name} ({outcome.details}), not {verdict.expected}"
        )
    if outcome.code == grpc.StatusCode.OK:
        assert outcome.response is not None, f"{rpc.name}: {outcome.details}"
        rpc.accepted(stage, request, rpc.response_type.FromString(outcome.response))


def assert_still_serving(stage: Stage) -> None:
    """Every server answers its health check and a call that reads its tables:
    a crashed server, a dead worker pool or a wedged DynamoDB client shows here."""
    for service, service_name in SERVICE_NAMES.items():
        health = health_pb2_grpc.HealthStub(stage.channels[service])
        answer = health.Check(health_pb2.HealthCheckRequest(service=f"rewards.v1.{service_name}"), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
    assert stage.cluster.xp.GetProgress(xp.GetProgressRequest(user_id="player-1"), timeout=10).user_id == "player-1"
    unlocks = stage.cluster.achievements.ListUserAchievements(
        ach.ListUserAchievementsRequest(user_id="player-1"), timeout=10
    )
    assert unlocks.user_id == "player-1"
    levels = [level.level for level in stage.cluster.levels.ListLevels(lv.ListLevelsRequest(), timeout=10).levels]
    assert levels == sorted(levels)
    webhooks = [w.webhook_id for w in stage.cluster.events.ListWebhooks(ev.ListWebhooksRequest(), timeout=10).webhooks]
    assert webhooks == sorted(webhooks)
    # A watch still goes live (its headers come once it is): the events server still reads the streams.
    watch = stage.cluster.events.WatchEvents(ev.WatchEventsRequest(user_id="player-1"), timeout=10)
    try:
        assert watch.initial_metadata() is not None
    finally:
        watch.cancel()


def four_byte_unique(length: int) -> str:
    """A new id of `length` (at least 32) four-byte characters."""
    return "".join(chr(0x1F600 + int(digit, 16)) for digit in uuid.uuid4().hex) + "🎲" * (length - 32)


def seed_events(stage: Stage) -> None:
    """Cursors from real watches, deliveries of FAILING_WEBHOOK that failed, and page tokens of the
    webhooks' listings. Leaves no webhook behind."""
    cluster = stage.cluster
    watches = [cluster.events.WatchEvents(ev.WatchEventsRequest(user_id=u), timeout=60) for u in ("", HOOK_USERS[0])]
    for watch in watches:
        watch.initial_metadata()  # live: the awards below come
    assert FAILING_WEBHOOK == SEED_WEBHOOKS[0].webhook_id and not SEED_WEBHOOKS[0].types
    cluster.events.PutWebhook(ev.PutWebhookRequest(webhook=SEED_WEBHOOKS[0]))  # the only one: no other fails
    deadline = time.monotonic() + 60
    failed: list[str] = []
    while len(failed) < 2 * len(HOOK_USERS):  # an award and a level-up each
        # Again while the webhooks' reader of the streams is not yet live (it starts with the server).
        assert time.monotonic() < deadline, f"no failed deliveries: {failed}"
        request_id = four_byte_unique(MAX_ID)
        for user in HOOK_USERS:
            cluster.xp.AwardXp(xp.AwardXpRequest(user_id=user, activity_id="win-match", request_id=request_id))
        until = time.monotonic() + 5
        while len(failed) < 2 * len(HOOK_USERS) and time.monotonic() < until:
            time.sleep(0.1)
            stage.settle_deliveries()
            listing = cluster.events.ListFailedDeliveries(
                ev.ListFailedDeliveriesRequest(webhook_id=FAILING_WEBHOOK, page_size=MAX_PAGE_SIZE)
            )
            failed = [d.delivery_id for d in listing.deliveries]
    assert any(d.startswith("sha256:") for d in failed), failed  # of HOOK_USERS[-1]
    stage.failed_deliveries[FAILING_WEBHOOK] = failed
    for watch in watches:
        first = next(iter(watch))
        watch.cancel()
        stage.issued_cursors.append(first.cursor)
        positions = cursor_positions(first.cursor)
        assert positions is not None
        stage.issued_positions.update(positions.items())
    stage.shard_keys = sorted({shard for shard, _ in stage.issued_positions})
    assert {shard.split("/", 1)[0] for shard in stage.shard_keys} == set(SOURCE_TABLES), stage.shard_keys
    # Real tokens, for valid follow-up pages.
    page = cluster.events.ListFailedDeliveries(ev.ListFailedDeliveriesRequest(webhook_id=FAILING_WEBHOOK, page_size=1))
    assert page.next_page_token
    stage.seed_tokens.append((("ListFailedDeliveries", FAILING_WEBHOOK), page.next_page_token))
    stage.reset_catalog(webhooks=True)
    webhooks = cluster.events.ListWebhooks(ev.ListWebhooksRequest(page_size=2))
    assert webhooks.next_page_token
    stage.seed_tokens.append((("ListWebhooks", ""), webhooks.next_page_token))
    stage.reset_catalog()


@pytest.fixture(scope="module")
def stage(dynamodb_endpoint: str) -> Iterator[Stage]:
    """One cluster for the module (a cluster a test would cost 17 table sets),
    seeded so that valid requests can succeed."""
    # https only (webhooks_allow_http is False), so that the rule on http urls is in play. A delivery is
    # kept as failed after its first failed attempt, and a redelivered one is sent again within a quarter
    # of a second (due deliveries are looked for every first_retry_s). The streams are read once a second:
    # no test here waits for a watch, and the readers' polling would slow every other test.
    cluster = Cluster(
        dynamodb_endpoint,
        events=True,
        events_poll_s=1.0,
        webhook_retry_window_s=0.0,
        webhook_first_retry_s=0.25,
        webhook_timeout_s=2.0,
    )
    assert not cluster.settings.webhooks_allow_http
    shared = Stage(cluster)
    try:
        shared.reset_catalog()
        cluster.xp.AwardXp(xp.AwardXpRequest(user_id="player-1", activity_id="quest-🐉", request_id="seed"))
        # Real tokens, for valid follow-up pages.
        for category in ("", "pvp"):
            activities = cluster.xp.ListActivities(xp.ListActivitiesRequest(category=category, page_size=1))
            assert activities.next_page_token
            shared.seed_tokens.append((("ListActivities", category), activities.next_page_token))
        achievements = cluster.achievements.ListAchievements(ach.ListAchievementsRequest(page_size=2))
        assert achievements.next_page_token
        shared.seed_tokens.append((("ListAchievements", ""), achievements.next_page_token))
        seed_events(shared)
        shared.issued_tokens.update(shared.seed_tokens)
        yield shared
    finally:
        shared.close()
        cluster.close()


# --- the tests --------------------------------------------------------------------


@pytest.mark.parametrize("rpc_name", list(RPCS))
def test_generated_requests_are_answered_within_the_contract(stage: Stage, rpc_name: str) -> None:
    rpc = RPCS[rpc_name]
    stage.reset_catalog(webhooks=rpc.service == "events")
    answered: dict[str, int] = {}

    @rpc.hostile
    @given(request=requests_for(rpc_name, stage))
    def run(request: Message) -> None:
        outcome = assert_answered_within_contract(stage, rpc, request.SerializeToString())
        answered[outcome.code.name] = answered.get(outcome.code.name, 0) + 1

    run()
    assert_still_serving(stage)
    # The mix reached both sides: some requests refused, and (where any request can be valid) some accepted
    # (a watch that no event reached ends at its deadline).
    assert answered.get("OK", 0) + (answered.get("DEADLINE_EXCEEDED", 0) if rpc.streaming else 0) > 0, answered
    if rpc_name != "ListLevels":
        assert answered.get("INVALID_ARGUMENT", 0) > 0, answered


# --- bytes that are not the request they claim to be -------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string_field_paths(descriptor: Any, depth: int = 0) -> list[tuple[int, ...]]:
    """Field numbers leading to each string field, nested messages included."""
    paths: list[tuple[int, ...]] = []
    for f in descriptor.fields:
        if f.type == f.TYPE_STRING:
            paths.append((f.number,))
        elif f.type == f.TYPE_MESSAGE and depth < 2 and not f.message_type.full_name.startswith("google."):
            paths.extend((f.number,) + p for p in _string_field_paths(f.message_type, depth + 1))
    return paths


def _length_delimited_at(path: tuple[int, ...], content: bytes) -> bytes:
    for number in reversed(path):
        content = _varint(number << 3 | 2) + _varint(len(content)) + content
    return content


# Not UTF-8: a lone continuation byte, an overlong NUL, an encoded surrogate, past U+10FFFF, a cut-off sequence.
NOT_UTF8 = [b"\xff", b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"ok\xfe"]


def malformed_payloads(rpc: Rpc, stage: Stage) -> st.SearchStrategy[bytes]:
    valid_bytes = requests_for(rpc.name, stage).map(lambda r: r.SerializeToString())
    string_paths = _string_field_paths(rpc.request_type.DESCRIPTOR)
    field_numbers = [f.number for f in rpc.request_type.DESCRIPTOR.fields] or [1]
    # A string field (perhaps nested) holding bytes that are not UTF-8, after a valid request;
    # ListLevels has none, so any field number stands in.
    not_utf8 = st.builds(
        lambda prefix, path, junk: prefix + _length_delimited_at(path, junk),
        valid_bytes,
        st.sampled_from(string_paths or [(1,), (2, 1)]),
        st.sampled_from(NOT_UTF8) | st.binary(min_size=1, max_size=8),
    )
    return st.one_of(
        st.binary(max_size=300),
        not_utf8,
        # A known field with another wire type, a length past the end, a varint that never ends.
        st.builds(
            lambda number, wire_type, rest: _varint(number << 3 | wire_type) + rest,
            st.sampled_from(field_numbers),
            st.integers(0, 7),
            st.binary(max_size=12),
        ),
        st.builds(
            lambda number, length: _varint(number << 3 | 2) + _varint(length) + b"x",
            st.sampled_from(field_numbers),
            st.integers(2, 2**32),
        ),
        st.just(b"\x08" + b"\xff" * 11),
        # A valid request cut short or with one byte changed.
        st.builds(lambda data, cut: data[:cut], valid_bytes, st.integers(0, 200)),
        st.builds(
            lambda data, at, byte: data[: at % max(len(data), 1)] + bytes([byte]) + data[at % max(len(data), 1) + 1 :],
            valid_bytes,
            st.integers(0, 10_000),
            st.integers(0, 255),
        ),
    )


# The writes with the most fields, a listing, ListLevels, whose request has no field at all, and the
# events service's stream (an edge of its own) and webhook write (a nested message).
MALFORMED_TARGETS = [
    "PutActivity",
    "AwardXp",
    "GrantXp",
    "ListActivities",
    "PutAchievement",
    "UnlockAchievement",
    "PutLevel",
    "ListLevels",
    "CheckLevelUp",
    "WatchEvents",
    "PutWebhook",
]


@pytest.mark.parametrize("rpc_name", MALFORMED_TARGETS)
def test_malformed_bytes_are_invalid_argument(stage: Stage, rpc_name: str) -> None:
    rpc = RPCS[rpc_name]
    stage.reset_catalog(webhooks=rpc.service == "events")
    undecodable = 0

    @rpc.hostile
    @given(payload=malformed_payloads(rpc, stage))
    def run(payload: bytes) -> None:
        nonlocal undecodable
        # Undecodable bytes must be INVALID_ARGUMENT (gRPC alone would say INTERNAL);
        # bytes that decode are a request like any other.
        outcome = assert_answered_within_contract(stage, rpc, payload)
        undecodable += outcome.details.startswith("request is not a valid protobuf message")

    run()
    assert_still_serving(stage)
    assert undecodable > 0


def _filled_to(request: Message, fill: Callable[[Any, str], None], size: int) -> bytes:
    """`request` with one string field filled (by `fill`) so that it is exactly `size` bytes."""
    length = size - request.ByteSize()
    for _ in range(5):  # the lengths' own varints grow with the string: a few rounds settle it
        filled = type(request)()
        filled.CopyFrom(request)
        fill(filled, "d" * length)
        payload = filled.SerializeToString()
        if len(payload) == size:
            return payload
        length += size - len(payload)
    raise AssertionError(f"no {size}-byte {type(request).__name__}")


def _fill_description(request: xp.PutActivityRequest, text: str) -> None:
    request.activity.description = text


def _fill_url(request: ev.PutWebhookRequest, text: str) -> None:
    request.webhook.url = NOWHERE + "/" + text


def _fill_cursor(request: ev.WatchEventsRequest, text: str) -> None:
    request.cursor = text


# A write of each kind of server (catalog, webhook) and the stream, each with one string field
# filled to the size; at 1 MiB the request is read, then refused for that field.
OVERSIZED: dict[str, tuple[Message, Callable[[Any, str], None]]] = {
    "PutActivity": (xp.PutActivityRequest(activity=xp.Activity(activity_id="huge", name="Huge")), _fill_description),
    "PutWebhook": (ev.PutWebhookRequest(webhook=ev.Webhook(webhook_id="huge", secret=SEED_SECRET)), _fill_url),
    "WatchEvents": (ev.WatchEventsRequest(user_id="player-1"), _fill_cursor),
}


@pytest.mark.parametrize("rpc_name", list(OVERSIZED))
@pytest.mark.parametrize(
    "payload_bytes,expected",
    [
        (MAX_REQUEST_BYTES + 1, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (MAX_REQUEST_BYTES, grpc.StatusCode.INVALID_ARGUMENT),  # read, then refused for the field filled
    ],
)
def test_requests_over_one_mib_are_refused_and_write_nothing(
    stage: Stage, rpc_name: str, payload_bytes: int, expected: grpc.StatusCode
) -> None:
    rpc = RPCS[rpc_name]
    stage.reset_catalog(webhooks=rpc.service == "events")
    request, fill = OVERSIZED[rpc_name]
    payload = _filled_to(request, fill, payload_bytes)
    outcome = assert_answered_within_contract(stage, rpc, payload)
    assert outcome.code == expected, outcome.details
    assert_still_serving(stage)


# --- what hypothesis found, each with its smallest example (all fixed) -------------


@pytest.mark.parametrize("rpc_name", ["ListActivities", "ListAchievements"])
def test_deeply_nested_page_tokens_are_invalid_argument(stage: Stage, rpc_name: str) -> None:
    rpc = RPCS[rpc_name]

    @HOSTILE
    @example(opener="[", depth=2050)  # the smallest failing example hypothesis found: fails at once, no search
    @given(opener=st.sampled_from(["[", '{"a":', '{"activity_id":[']), depth=st.integers(1, 50_000))
    def run(opener: str, depth: int) -> None:
        token = base64.urlsafe_b64encode((opener * depth).encode()).decode()
        assert_answered_within_contract(stage, rpc, rpc.request_type(page_token=token).SerializeToString())

    run()


def valid_ids(max_size: int = MAX_ID) -> st.SearchStrategy[str]:
    """Any id the contract allows: in NFC, no control or format characters, no surrounding white space."""
    # Mapped to NFC rather than filtered: random combining marks are seldom in NFC. NFC may lengthen.
    return (
        st.text(alphabet=st.characters(exclude_categories=["Cc", "Cf", "Cs"]), min_size=1, max_size=max_size)
        .map(lambda v: unicodedata.normalize("NFC", v))
        .filter(lambda v: len(v) <= max_size and not v[0].isspace() and not v[-1].isspace())
    )


def test_unlock_refused_for_requirements_reaches_a_default_client(stage: Stage) -> None:
    stage.reset_catalog()

    numbered_ids = st.builds(
        lambda count, length, unit: [
            _repeated_to(f"{i}-{unit}", length) if length > len(str(i)) + 1 else f"{i}" for i in range(count)
        ],
        st.integers(1, MAX_REQUIRED_ACHIEVEMENTS),
        st.integers(1, MAX_ID),
        st.sampled_from(["a", "é", "中", "🐉"]),
    )

    @HOSTILE
    # The smallest failing example hypothesis found (18 ids like "0-🐉🐉…", 30 characters
    # each): fails at once, no search.
    @example(required=[_repeated_to(f"{i}-🐉", 30) for i in range(18)])
    @given(
        required=st.one_of(
            st.lists(valid_ids(), min_size=1, max_size=MAX_REQUIRED_ACHIEVEMENTS, unique=True), numbered_ids
        ).filter(lambda ids: "gate" not in ids and len(set(ids)) == len(ids))
    )
    def run(required: list[str]) -> None:
        put = ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id="gate",
                name="Gate",
                xp_reward=1,
                requirements=ach.Requirements(required_achievements=required),
            )
        )
        assert (
            assert_answered_within_contract(stage, RPCS["PutAchievement"], put.SerializeToString()).code
            == grpc.StatusCode.OK
        )
        # A player with nothing unlocked meets none of them.
        unlock = ach.UnlockAchievementRequest(user_id="newcomer", achievement_id="gate")
        outcome = assert_answered_within_contract(stage, RPCS["UnlockAchievement"], unlock.SerializeToString())
        assert outcome.code == grpc.StatusCode.FAILED_PRECONDITION, outcome

    run()


def test_unlock_of_a_reward_granted_before_pays_nothing_more(stage: Stage) -> None:
    """GrantXp naming a catalog achievement pays its reward outside an unlock
    (README), whatever the amount; the unlock then records it and pays nothing more."""
    stage.reset_catalog()
    first_win = next(a for a in SEED_ACHIEVEMENTS if a.achievement_id == "first-win")

    @HOSTILE
    @example(amount=0)
    @given(amount=st.integers(0, MAX_XP))
    def run(amount: int) -> None:
        user_id = unique("granted")  # a new player each run, so that a rerun sees what the first run saw
        grant = xp.GrantXpRequest(
            user_id=user_id, amount=amount, reason="operator", achievement_id=first_win.achievement_id
        )
        assert (
            assert_answered_within_contract(stage, RPCS["GrantXp"], grant.SerializeToString()).code
            == grpc.StatusCode.OK
        )
        unlock = ach.UnlockAchievementRequest(user_id=user_id, achievement_id=first_win.achievement_id)
        outcome = assert_answered_within_contract(stage, RPCS["UnlockAchievement"], unlock.SerializeToString())
        assert outcome.code == grpc.StatusCode.OK, outcome
        answer = ach.UnlockAchievementResponse.FromString(outcome.response)
        assert (answer.already_unlocked, answer.xp_awarded, answer.total_xp) == (False, 0, amount)

    run()


def test_self_requirement_is_blamed_on_the_entry_that_names_itself(stage: Stage) -> None:
    stage.reset_catalog()

    @HOSTILE
    @example(required=["first-win", "first-win", "gate"])  # the smallest failing example hypothesis found
    @given(
        required=st.lists(st.sampled_from(["gate", "first-win", "veteran"]), min_size=1, max_size=8).filter(
            lambda ids: "gate" in ids
        )
    )
    def run(required: list[str]) -> None:
        put = ach.PutAchievementRequest(
            achievement=ach.Achievement(
                achievement_id="gate", name="Gate", requirements=ach.Requirements(required_achievements=required)
            )
        )
        outcome = assert_answered_within_contract(stage, RPCS["PutAchievement"], put.SerializeToString())
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
        index = int(named_field(outcome).rsplit("[", 1)[1].rstrip("]"))
        assert required[index] == "gate", outcome.details

    run()


# --- what hypothesis found in the events service, each with its smallest example (all fixed) ---


def test_a_cursor_position_no_stream_issued_is_refused(stage: Stage) -> None:
    """A cursor in the issued form that names a shard of the stage's streams at a position that shard never
    issued, or a shard no longer in its stream. It ended the watch INTERNAL (GetShardIterator's
    ValidationException); now a position of another shape (digits of other scripts, over 40 digits) and a
    number the shard never issued are INVALID_ARGUMENT (or read after, when the shard may yet reach it), a
    gone shard OUT_OF_RANGE (check_cursor). On DynamoDB Local a number past a 64-bit integer is UNAVAILABLE
    (its HTTP 500: DYNAMODB_LOCAL_MAX_SEQUENCE)."""
    stage.reset_catalog()

    @HOSTILE_WATCH
    @example(shard=0, position="0", gone=False)  # the smallest failing example hypothesis found (INTERNAL)
    @example(shard=1, position="0" * MIN_SEQUENCE_DIGITS, gone=False)  # DynamoDB's ValidationException
    @example(shard=2, position="9" * MIN_SEQUENCE_DIGITS, gone=False)  # DynamoDB Local's HTTP 500
    @example(shard=0, position="\u0663" * MIN_SEQUENCE_DIGITS, gone=False)  # ARABIC-INDIC DIGIT THREE
    @example(shard=1, position="1" * 41, gone=False)
    @example(shard=2, position="0", gone=True)
    @given(
        shard=st.integers(0, len(SOURCE_TABLES) - 1),
        position=st.one_of(
            st.integers(0, 10**45).map(str),
            st.integers(0, 10**40).map(lambda n: str(n).zfill(MIN_SEQUENCE_DIGITS)),
            st.text(alphabet=st.characters(categories=["Nd"]), min_size=1, max_size=24),
        ),
        gone=st.booleans(),
    )
    def run(shard: int, position: str, gone: bool) -> None:
        key = stage.shard_keys[shard]
        if gone:
            key = key[:-8] + "0" * 8
            assert key not in stage.shard_keys
        request = ev.WatchEventsRequest(user_id="player-1", cursor=encode_cursor({key: position}))
        assert_answered_within_contract(stage, RPCS["WatchEvents"], request.SerializeToString())

    run()


MALFORMED_URL = "webhook.url is not a URL (its port or host is malformed)"


def test_a_url_refused_for_its_port_or_host_reaches_a_default_client(stage: Stage) -> None:
    """check_webhook put urllib's text, which quotes the url's port or host, into the INVALID_ARGUMENT: a
    url within its 2048 characters got a status (message and BadRequest detail, percent-encoded) over the
    8 KB of metadata a default client takes, which saw RESOURCE_EXHAUSTED. Now the message is its own."""
    stage.reset_catalog()

    def put(url: str) -> Outcome:
        request = ev.PutWebhookRequest(webhook=ev.Webhook(webhook_id="hook-url", url=url, secret=SEED_SECRET))
        return assert_answered_within_contract(stage, RPCS["PutWebhook"], request.SerializeToString())

    @HOSTILE
    # Hypothesis shrank it to a port of 512 U+0800 (1,547 bytes, 11 bytes of metadata too many); one of 700
    # is over by far, so that no rewording of the message alone makes it pass: fails at once, no search.
    @example(url="https://h:" + "\u0800" * 700 + "/")
    @given(
        url=st.one_of(
            st.builds(lambda port: f"https://h:{port}/", hostile_text(MAX_URL // 4)),
            st.builds(lambda host: f"https://{host}/", hostile_text(MAX_URL // 4)),
        ).filter(lambda url: len(url) <= MAX_URL)
    )
    def run(url: str) -> None:
        put(url)

    run()
    # A port, an IPv6 host, a host NFKC makes another (U+2100 ACCOUNT OF: "a/c"), as urllib refuses them.
    for url in ("https://h:" + "\u0800" * 700 + "/", "https://h:x/", "https://[::1/", "https://\u2100.invalid/"):
        outcome = put(url)
        assert (outcome.code, outcome.details) == (grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_URL), url


def test_delivery_ids_over_1024_bytes_are_invalid_argument(stage: Stage) -> None:
    """RedeliverEvents put a delivery id of at most 257 characters, however many bytes, into an UpdateItem
    key (a sort key: at most 1,024 bytes): INTERNAL. Now one over 1,024 bytes of UTF-8 is INVALID_ARGUMENT,
    and so is ListFailedDeliveries' page_token, which goes into a Query's ExclusiveStartKey."""
    stage.reset_catalog(webhooks=True)

    @HOSTILE
    # The smallest failing example hypothesis found ("/" and 256 dragons, 1,025 bytes): fails at once.
    @example(unit="🐉", length=2 * MAX_ID + 1, slash_at=0)
    @example(unit="🐉", length=MAX_DELIVERY_ID_BYTES // 4, slash_at=MAX_ID)  # 1,021 bytes: taken
    @given(
        unit=st.sampled_from(["u", "é", "中", "🐉"]),
        length=st.one_of(near(MAX_DELIVERY_ID), st.integers(2, MAX_DELIVERY_ID)),
        slash_at=st.integers(0, MAX_DELIVERY_ID),
    )
    def run(unit: str, length: int, slash_at: int) -> None:
        text = _repeated_to(unit, length)
        at = slash_at % length
        delivery_id = text[:at] + "/" + text[at + 1 :]
        redeliver = ev.RedeliverEventsRequest(webhook_id=FAILING_WEBHOOK, delivery_ids=[delivery_id])
        listing = ev.ListFailedDeliveriesRequest(webhook_id=FAILING_WEBHOOK, page_token=delivery_id)
        for rpc_name, request in (("RedeliverEvents", redeliver), ("ListFailedDeliveries", listing)):
            assert_answered_within_contract(stage, RPCS[rpc_name], request.SerializeToString())

    run()


def _failed_deliveries(stage: Stage, webhook_id: str) -> list[ev.FailedDelivery]:
    request = ev.ListFailedDeliveriesRequest(webhook_id=webhook_id, page_size=MAX_PAGE_SIZE)
    return list(stage.cluster.events.ListFailedDeliveries(request, timeout=10).deliveries)


def test_failed_deliveries_are_listed_in_delivery_id_order(stage: Stage) -> None:
    """events.proto: "in delivery_id order" (it said "oldest first", which the listing never was): the
    first delivery, redelivered and failed again after every other, keeps its place; a page at a time
    lists the same, through the stage's "sha256:" delivery_id."""
    stage.reset_catalog(webhooks=True)
    first = _failed_deliveries(stage, FAILING_WEBHOOK)[0]
    again = ev.RedeliverEventsRequest(webhook_id=FAILING_WEBHOOK, delivery_ids=[first.delivery_id])
    assert stage.cluster.events.RedeliverEvents(again, timeout=10).redelivered == 1
    stage.settle_deliveries()  # failed again, after every other
    listed = _failed_deliveries(stage, FAILING_WEBHOOK)
    ids = [d.delivery_id for d in listed]
    assert ids == sorted(stage.failed_deliveries[FAILING_WEBHOOK]), ids
    failed_at = [d.failed_at.ToMilliseconds() for d in listed]
    assert ids[0] == first.delivery_id and failed_at[0] == max(failed_at), list(zip(ids, failed_at, strict=True))
    paged: list[str] = []
    token = ""
    while True:
        request = ev.ListFailedDeliveriesRequest(webhook_id=FAILING_WEBHOOK, page_size=1, page_token=token)
        page = stage.cluster.events.ListFailedDeliveries(request, timeout=10)
        paged.extend(d.delivery_id for d in page.deliveries)
        token = page.next_page_token
        if not token:
            break
    assert paged == ids


def test_a_listed_delivery_id_is_taken_back(stage: Stage) -> None:
    """FailedDelivery.delivery_id is "what RedeliverEvents takes", and a next_page_token what the listing
    takes. Both refused ids over 2 * 128 + 1 characters, though the service's own event ids are longer
    (req#<request_id>: 132): a 128-character user's award with a 128-character request_id is listed as a
    261-character delivery_id."""
    stage.reset_catalog()
    events, award = stage.cluster.events, stage.cluster.xp.AwardXp
    webhook = ev.Webhook(webhook_id=unique("hook-long-ids"), url=f"{NOWHERE}/long-ids", secret=SEED_SECRET)
    events.PutWebhook(ev.PutWebhookRequest(webhook=webhook), timeout=10)
    try:
        # The longest ids, in ASCII (a new player: a repeated award makes no event); another player after it.
        user_id, request_id = _repeated_to(unique("u-long-ids") + "-", MAX_ID), "r" * MAX_ID
        award(xp.AwardXpRequest(user_id=user_id, activity_id="daily-login", request_id=request_id), timeout=10)
        award(xp.AwardXpRequest(user_id=unique("v-long-ids"), activity_id="daily-login", request_id="r"), timeout=10)
        deadline = time.monotonic() + 30
        while len(_failed_deliveries(stage, webhook.webhook_id)) < 2:
            assert time.monotonic() < deadline, "the deliveries did not fail"
            time.sleep(0.1)
        first = events.ListFailedDeliveries(
            ev.ListFailedDeliveriesRequest(webhook_id=webhook.webhook_id, page_size=1), timeout=10
        )
        listed = f"{user_id}/req#{request_id}"
        assert [d.delivery_id for d in first.deliveries] == [listed] and first.next_page_token, first
        refused = []
        try:
            events.ListFailedDeliveries(
                ev.ListFailedDeliveriesRequest(webhook_id=webhook.webhook_id, page_token=first.next_page_token),
                timeout=10,
            )
        except grpc.RpcError as error:
            refused.append(("ListFailedDeliveries", error.code().name, error.details()))
        try:
            again = ev.RedeliverEventsRequest(webhook_id=webhook.webhook_id, delivery_ids=[listed])
            assert events.RedeliverEvents(again, timeout=10).redelivered == 1
        except grpc.RpcError as error:
            refused.append(("RedeliverEvents", error.code().name, error.details()))
        assert not refused, f"{len(listed)}-character delivery id refused: {refused}"
    finally:
        stage.settle_deliveries()
        stage.reset_catalog()


def test_an_event_of_the_longest_ids_reaches_the_webhooks_and_stops_none(stage: Stage) -> None:
    """A user_id and a request_id of 128 four-byte characters (event_id "req#<request_id>") make
    "<user_id>/<event_id>" 1,029 bytes, over DynamoDB's 1,024 for a sort key: its delivery could not be
    stored, and the webhooks' reader of the streams stopped on it for good, so that no webhook got that
    event or any later one. Now its delivery_id is "sha256:" and the hex digest of that text's UTF-8: it is
    delivered (here it fails: nothing listens) like any other, later events come, and the listed id is
    taken back, by RedeliverEvents and as a page_token."""
    stage.reset_catalog()
    events, award = stage.cluster.events, stage.cluster.xp.AwardXp
    webhook = ev.Webhook(webhook_id=unique("hook-longest"), url=f"{NOWHERE}/longest", secret=SEED_SECRET)
    events.PutWebhook(ev.PutWebhookRequest(webhook=webhook), timeout=10)

    def wait_for_failed(wanted: set[str], timeout_s: float) -> set[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            listed = {d.delivery_id for d in _failed_deliveries(stage, webhook.webhook_id)}
            if wanted <= listed or time.monotonic() > deadline:
                return listed
            time.sleep(0.1)

    try:
        # First the webhook works: an award's delivery fails (nothing listens) and is listed.
        before = unique("before-longest")
        award(xp.AwardXpRequest(user_id=before, activity_id="daily-login", request_id="r"), timeout=10)
        assert f"{before}/req#r" in wait_for_failed({f"{before}/req#r"}, 30)
        # The longest ids in 4-byte characters (a new player: a repeated award makes no event), then another
        # player's award.
        longest, request_id = four_byte_unique(MAX_ID), "🎮" * MAX_ID
        award(xp.AwardXpRequest(user_id=longest, activity_id="daily-login", request_id=request_id), timeout=10)
        after = unique("after-longest")
        award(xp.AwardXpRequest(user_id=after, activity_id="daily-login", request_id="r"), timeout=10)
        plain = f"{longest}/req#{request_id}"
        assert len(plain.encode()) == MAX_DELIVERY_ID_BYTES + 5
        hashed = "sha256:" + hashlib.sha256(plain.encode()).hexdigest()
        wanted = {hashed, f"{after}/req#r"}
        listed = wait_for_failed(wanted, 10)  # the first took a fraction of that
        assert wanted <= listed, f"not delivered: {sorted(d[:40] for d in wanted - listed)}"
        delivery = next(d for d in _failed_deliveries(stage, webhook.webhook_id) if d.delivery_id == hashed)
        assert (delivery.event.user_id, delivery.event.event_id) == (longest, f"req#{request_id}"), delivery
        # Taken back: as a page_token (the deliveries after it), and by RedeliverEvents.
        page = events.ListFailedDeliveries(
            ev.ListFailedDeliveriesRequest(webhook_id=webhook.webhook_id, page_token=hashed), timeout=10
        )
        assert all(d.delivery_id > hashed for d in page.deliveries), page
        again = ev.RedeliverEventsRequest(webhook_id=webhook.webhook_id, delivery_ids=[hashed])
        assert events.RedeliverEvents(again, timeout=10).redelivered == 1
    finally:
        stage.settle_deliveries()
        stage.reset_catalog()
