"""The OpenAPI 3.1 document, generated from the route table and the protobuf
descriptors: message schemas follow the proto3 JSON mapping (64-bit integers
as decimal strings, enums as their names, repeated fields as arrays, nested
messages as $refs into components.schemas, well-known types as their JSON
forms), with the proto field names the gateway reads and writes.

A message has two forms. The response form is what the gateway writes. The
request form (of the messages a body carries) states what the services take:
each field's rule (FIELD_RULES, built from the constants the services check
against: common.field_rules and the services' own), which fields must be sent,
and what the JSON mapping reads besides the canonical form (an integer as a
JSON number or a decimal string, null for a field's default). A field the route
fills from the path or the Idempotency-Key header is left out of the body's
schema, so that a client sets each field one way."""

from __future__ import annotations

import functools
import sys
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from achievements_service.domain import (
    MAX_ACTIVITY_COUNTS,
    MAX_COUNT,
    MAX_MIN_LEVEL,
    MAX_MIN_TOTAL_XP,
    MAX_REQUIRED_ACHIEVEMENTS,
    MAX_STREAK_LENGTH,
    MAX_STREAK_LENGTHS,
)
from common.field_rules import (
    DEFAULT_PAGE_SIZE,
    MAX_DESCRIPTION_LENGTH,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PAGE_SIZE,
    MAX_XP,
)
from common.streaks import MAX_STREAKS
from gateway.limits import (
    JSON_MEDIA_TYPE,
    MAX_AUTHORIZATION_BYTES,
    MAX_BODY_BYTES,
    MAX_HEADER_FIELD_BYTES,
    MAX_HEADER_SECTION_BYTES,
    MAX_REQUEST_MESSAGE_BYTES,
)
from gateway.routes import IDEMPOTENCY_HEADER, ROUTES, WHOLE_REQUEST, Route, resolve_field
from gateway.status import (
    CONTENT_TOO_LARGE,
    HEADER_FIELDS_TOO_LARGE,
    HTTP_STATUS,
    UNSUPPORTED_MEDIA_TYPE,
    error_statuses,
)
from levels_service.domain import MAX_LEVEL, MAX_REWARD_IDS, MAX_REWARD_QUANTITY, MAX_REWARDS_PER_LEVEL
from levels_service.servicer import MAX_CHECK_REQUEST_ID_LENGTH
from xp_service.servicer import MAX_ADJUSTMENT, MAX_CAP, MAX_ENTRY_ID_LENGTH, MAX_REASON_LENGTH

JsonSchema = dict[str, Any]

# The W3C trace context the gateway takes from a caller and passes on to the services
# (common.tracing); the trace id it answers with, as every log line of the request carries it.
TRACEPARENT_HEADER = "traceparent"
TRACE_ID_HEADER = "Trace-Id"
TRACE_ID_PATTERN = r"^[0-9a-f]{32}$"
# What the gateway takes as an Idempotency-Key: printable ASCII (RFC 9110 field
# values; the gateway refuses other bytes), no white space at either end.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~](?:[ -~]*[!-~])?$"
# The Authorization header's value: what is left of the gateway's limit once its name is counted.
MAX_AUTHORIZATION_VALUE_BYTES = MAX_AUTHORIZATION_BYTES - len("Authorization")
HEALTH_PATH = "/healthz"
ERROR_SCHEMA = "Error"
OPENAPI_PATH = "/openapi.json"

_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1}
_INT64 = {"type": "string", "format": "int64", "pattern": r"^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": r"^[0-9]+$"}
_FLOAT = {"oneOf": [{"type": "number"}, {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}]}

_SCALARS: dict[int, JsonSchema] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_FLOAT: _FLOAT,
    FieldDescriptor.TYPE_DOUBLE: _FLOAT,
}
# Each integer type's range and format; the 64-bit ones are JSON strings in answers.
_INTEGER_RANGES: dict[int, tuple[int, int, str]] = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1, "int32"),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1, "int32"),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1, "int32"),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1, "uint32"),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1, "uint32"),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1, "int64"),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1, "int64"),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1, "int64"),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1, "uint64"),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1, "uint64"),
}

# Well-known types with a JSON form of their own (the proto3 JSON mapping).
_WELL_KNOWN: dict[str, JsonSchema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}, "required": ["@type"]},
}
_WRAPPERS = {
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
}


# --- the input rules, as JSON Schema ------------------------------------------------------
#
# Patterns use what ECMA-262 (with the u flag, as JSON Schema reads them), Python's
# re and Rust's regex crates read alike: anchors, character classes of \uXXXX escapes
# (literal characters above U+FFFF, which need no escape), groups, alternation and
# quantifiers. Python's re.search differs in one respect: its `$` also matches before
# a final newline, so a Python validator should use re.fullmatch (or `\Z`).


def _class_item(first: int, last: int) -> str:
    def one(code_point: int) -> str:
        # Above U+FFFF: the character itself (ECMA-262 spells it \u{...}, Python \U........).
        return chr(code_point) if code_point > 0xFFFF else f"\\u{code_point:04x}"

    return one(first) if first == last else f"{one(first)}-{one(last)}"


def _ranges(code_points: Iterable[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for code_point in sorted(code_points):
        if ranges and ranges[-1][1] == code_point - 1:
            ranges[-1] = (ranges[-1][0], code_point)
        else:
            ranges.append((code_point, code_point))
    return ranges


def _char_class(excluded: Iterable[int]) -> str:
    """The character class of every character but `excluded`."""
    return "[^" + "".join(_class_item(first, last) for first, last in _ranges(excluded)) + "]"


@dataclass(frozen=True)
class _CharacterSets:
    """Code points the services' rules (common.field_rules) refuse, from the same
    unicodedata they use. Surrogates (Cs) are left out of the classes: no UTF-8
    or valid JSON text holds one alone, and Rust's regex refuses them in a class."""

    control: frozenset[int]  # Cc
    format: frozenset[int]  # Cf
    white_space: frozenset[int]  # str.isspace(), what str.strip() removes
    never_nfc: frozenset[int]  # changed by NFC wherever they stand: never in NFC text


@functools.cache
def _character_sets() -> _CharacterSets:
    control, format_, white_space, never_nfc = set(), set(), set(), set()
    for code_point in range(sys.maxunicode + 1):
        character = chr(code_point)
        category = unicodedata.category(character)
        if category in ("Cn", "Co", "Cs"):
            continue  # unassigned, private use (both NFC as they are) and surrogates
        if category == "Cc":
            control.add(code_point)
        elif category == "Cf":
            format_.add(code_point)
        if character.isspace():
            white_space.add(code_point)
        # Only a character with a canonical decomposition can be changed by NFC on its own.
        decomposition = unicodedata.decomposition(character)
        if decomposition and not decomposition.startswith("<") and not unicodedata.is_normalized("NFC", character):
            never_nfc.add(code_point)
    return _CharacterSets(frozenset(control), frozenset(format_), frozenset(white_space), frozenset(never_nfc))


def id_pattern(*, optional: bool = False) -> str:
    """An id (common.field_rules.optional_id): no control, format or surrounding
    white space characters, and none of the characters NFC always changes. Its
    length is the schema's maxLength. Empty too when `optional`."""
    sets = _character_sets()
    inner = sets.control | sets.format | sets.never_nfc
    middle = _char_class(inner)
    end = _char_class(inner | sets.white_space)
    one = f"{end}(?:{middle}*{end})?"
    return f"^(?:{one})?$" if optional else f"^{one}$"


def text_pattern(*, required: bool = False) -> str:
    """Free text (common.field_rules.text): no control characters but tab and
    line feed; when `required`, something other than white space."""
    sets = _character_sets()
    refused = sets.control - {ord("\t"), ord("\n")}
    any_character = _char_class(refused)
    if not required:
        return f"^{any_character}*$"
    # White space first, then a character that is not: one way to match, whatever the text.
    allowed_white_space = "[" + "".join(_class_item(a, b) for a, b in _ranges(sets.white_space - refused)) + "]"
    not_white_space = _char_class(refused | sets.white_space)
    return f"^{allowed_white_space}*{not_white_space}{any_character}*$"


def _digits_between(low: str, high: str) -> str:
    """A regex for the digit strings from `low` to `high`, both of one length."""
    if low == high:
        return low
    if len(low) == 1:
        return f"[{low}-{high}]"
    if low[0] == high[0]:
        return low[0] + _digits_between(low[1:], high[1:])
    rest = len(low) - 1
    if low[1:] == "0" * rest and high[1:] == "9" * rest:
        return f"[{low[0]}-{high[0]}][0-9]{{{rest}}}"
    parts = [low[0] + _digits_between(low[1:], "9" * rest)]
    if int(high[0]) - int(low[0]) > 1:
        parts.append(f"[{int(low[0]) + 1}-{int(high[0]) - 1}][0-9]{{{rest}}}")
    parts.append(high[0] + _digits_between("0" * rest, high[1:]))
    return "(?:" + "|".join(parts) + ")"


def _naturals(low: int, high: int) -> str:
    """A regex for the numbers from `low` to `high` (0 <= low <= high) without leading zeros."""
    parts = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        first = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        last = min(high, 10**digits - 1)
        parts.append(_digits_between(str(first), str(last)))
    return "|".join(parts)


def decimal_pattern(minimum: int, maximum: int, *, zero: bool = True) -> str:
    """The decimal strings of the integers from `minimum` to `maximum`, as the
    protobuf JSON mapping reads them (a sign and leading zeros allowed); but
    for 0 (in any spelling) when not `zero`."""
    alternatives = []
    lowest_natural = 0 if zero else 1
    if maximum >= lowest_natural:
        alternatives.append(rf"\+?0*(?:{_naturals(max(minimum, lowest_natural), maximum)})")
    if minimum < 0:
        alternatives.append(f"-0*(?:{_naturals(max(1, -maximum), -minimum)})")
    if zero and minimum <= 0 <= maximum:
        alternatives.append("-0+")
    return "^(?:" + "|".join(alternatives) + ")$"


@dataclass(frozen=True)
class StringRule:
    """A string rule shared by many fields: a schema of components.schemas."""

    name: str
    schema: JsonSchema


@dataclass(frozen=True)
class FieldRule:
    """What the services take in one request field. `string` for a string
    field; `minimum` and `maximum` for an integer (its type's range otherwise);
    `enum` for an enum field, the names it takes (all of them otherwise);
    `max_items` for a repeated field (the others then apply to each item);
    `required` when its default value (empty, 0, absent) is refused; `not_zero`
    for an integer whose range spans 0 but that is refused as 0 (a signed delta);
    `note` says what JSON Schema cannot (a rule over two fields, or two places)."""

    string: StringRule | None = None
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[str, ...] | None = None
    max_items: int | None = None
    required: bool = False
    not_zero: bool = False
    note: str = ""


def _id_rule(max_length: int = MAX_ID_LENGTH, *, optional: bool = False) -> StringRule:
    name = ("Optional" if optional else "") + "Id" + ("" if max_length == MAX_ID_LENGTH else str(max_length))
    length = f"0 (none) or 1 to {max_length}" if optional else f"1 to {max_length}"
    return StringRule(
        name,
        {
            "type": "string",
            "minLength": 0 if optional else 1,
            "maxLength": max_length,
            "pattern": id_pattern(optional=optional),
            "description": f"An id: {length} characters (code points), with no control (Cc) or format (Cf) "
            "characters, no white space at either end, in Unicode NFC. The pattern states all of it but NFC, "
            "which no regular expression can: it leaves out the characters NFC always changes, but a sequence "
            "NFC would compose or reorder (such as e followed by U+0301) is refused too (400). Character "
            f"classes of Unicode {unicodedata.unidata_version}.",
        },
    )


def _text_rule(max_length: int, *, required: bool = False) -> StringRule:
    return StringRule(
        f"{'Required' if required else ''}Text{max_length}",
        {
            "type": "string",
            "maxLength": max_length,
            "pattern": text_pattern(required=required),
            "description": f"At most {max_length} characters (code points); no control characters but tab and "
            "line feed" + ("; not empty or only white space." if required else "."),
        },
    )


_PAGE_TOKEN = StringRule(
    "PageToken",
    {
        "type": "string",
        "description": "Opaque: the next_page_token of the previous page of the same listing, with the same "
        "parameters; empty or absent for the first page. Any other value is refused (400): which tokens "
        "the service issued, no schema can state.",
    },
)


def _rules_of(message: str, rules: Mapping[str, FieldRule]) -> dict[str, FieldRule]:
    return {f"rewards.v1.{message}.{name}": rule for name, rule in rules.items()}


@functools.cache
def field_rules() -> dict[str, FieldRule]:
    """Each request field's rule, by its full name, as the services check it
    (xp_service/servicer.py, achievements_service/servicer.py and domain.py,
    levels_service/servicer.py and domain.py, common/field_rules.py)."""
    id_ = FieldRule(_id_rule(), required=True)
    optional_id = FieldRule(_id_rule(optional=True))
    xp = FieldRule(minimum=0, maximum=MAX_XP)
    page_size = FieldRule(
        minimum=0,
        maximum=MAX_PAGE_SIZE,
        note=f"Entries a page, 1 to {MAX_PAGE_SIZE}; 0 or absent: {DEFAULT_PAGE_SIZE}.",
    )
    page = {"page_size": page_size, "page_token": FieldRule(_PAGE_TOKEN)}
    rules: dict[str, FieldRule] = {}
    for message, fields in {
        "AwardXpRequest": {"user_id": id_, "activity_id": id_, "request_id": optional_id},
        "GrantXpRequest": {
            "user_id": id_,
            "amount": xp,
            "reason": FieldRule(_text_rule(MAX_REASON_LENGTH, required=True), required=True),
            "request_id": optional_id,
            "achievement_id": FieldRule(
                _id_rule(optional=True),
                note="With an achievement_id, the grant is keyed by it: send no Idempotency-Key (400 otherwise).",
            ),
        },
        "GetProgressRequest": {"user_id": id_},
        "Activity": {
            "activity_id": id_,
            "name": FieldRule(_text_rule(MAX_NAME_LENGTH, required=True), required=True),
            "description": FieldRule(_text_rule(MAX_DESCRIPTION_LENGTH)),
            "category": optional_id,
            "xp": xp,
        },
        "Cap": {
            "max_awards": FieldRule(
                minimum=0,
                maximum=MAX_CAP,
                note="Awards of the activity a user may have each period; 0: no cap. A positive max_awards needs a "
                "period (400 otherwise).",
            ),
            "period": FieldRule(
                note="PERIOD_DAY or PERIOD_WEEK (from Monday), in the game's time zone; required with a positive "
                "max_awards (400 otherwise)."
            ),
        },
        "GetActivityRequest": {"activity_id": id_},
        "DeleteActivityRequest": {"activity_id": id_},
        "ListActivitiesRequest": {"category": optional_id, **page},
        "Streak": {
            "streak_id": FieldRule(
                _id_rule(),
                required=True,
                note=f"The catalog holds at most {MAX_STREAKS} streaks: a new one past it is 409 "
                "(FAILED_PRECONDITION).",
            ),
            "name": FieldRule(_text_rule(MAX_NAME_LENGTH, required=True), required=True),
            "activity_id": FieldRule(
                _id_rule(optional=True),
                note="The activity whose awards the streak counts. Exactly one of activity_id and category is set "
                "(400 otherwise).",
            ),
            "category": FieldRule(
                _id_rule(optional=True),
                note="The category whose activities' awards the streak counts. Exactly one of activity_id and "
                "category is set (400 otherwise).",
            ),
            "period": FieldRule(
                enum=("PERIOD_DAY", "PERIOD_WEEK"),
                required=True,
                note="Days, or weeks (from Monday), in the game's time zone. Fixed once the streak is created, even "
                "after a delete: another period for its streak_id is 409 (FAILED_PRECONDITION).",
            ),
        },
        "GetStreakRequest": {"streak_id": id_},
        "DeleteStreakRequest": {"streak_id": id_},
        "ListStreaksRequest": page,
        "Achievement": {
            "achievement_id": id_,
            "name": FieldRule(_text_rule(MAX_NAME_LENGTH, required=True), required=True),
            "description": FieldRule(_text_rule(MAX_DESCRIPTION_LENGTH)),
            "xp_reward": xp,
        },
        "Requirements": {
            "required_achievements": FieldRule(
                _id_rule(),
                max_items=MAX_REQUIRED_ACHIEVEMENTS,
                note=f"At most {MAX_REQUIRED_ACHIEVEMENTS} achievements (a repeated id counts once), not the "
                "achievement itself (400 otherwise).",
            ),
            "min_total_xp": FieldRule(minimum=0, maximum=MAX_MIN_TOTAL_XP),
            "min_level": FieldRule(minimum=0, maximum=MAX_MIN_LEVEL),
            "activity_counts": FieldRule(
                max_items=MAX_ACTIVITY_COUNTS,
                note=f"At most {MAX_ACTIVITY_COUNTS} counts, each met for the achievement to unlock; of two counts "
                "of one activity (or category), the higher is kept.",
            ),
            "streak_lengths": FieldRule(
                max_items=MAX_STREAK_LENGTHS,
                note=f"At most {MAX_STREAK_LENGTHS} runs, each met for the achievement to unlock (by the user's best "
                "run of the streak, so met for good); of two of one streak, the longer is kept.",
            ),
        },
        "StreakLength": {
            "streak_id": FieldRule(_id_rule(), required=True, note="A streak of the streak catalog (GET /streaks)."),
            "length": FieldRule(minimum=1, maximum=MAX_STREAK_LENGTH, required=True),
        },
        "ActivityCount": {
            "activity_id": FieldRule(
                _id_rule(optional=True),
                note="Exactly one of activity_id and category is set (400 otherwise).",
            ),
            "category": FieldRule(
                _id_rule(optional=True),
                note="Exactly one of activity_id and category is set (400 otherwise).",
            ),
            "count": FieldRule(minimum=1, maximum=MAX_COUNT, required=True),
        },
        "GetAchievementRequest": {"achievement_id": id_},
        "DeleteAchievementRequest": {"achievement_id": id_},
        "ListAchievementsRequest": page,
        "UnlockAchievementRequest": {"user_id": id_, "achievement_id": id_, "request_id": optional_id},
        "ListUserAchievementsRequest": {"user_id": id_, **page},
        "GetAchievementProgressRequest": {"user_id": id_, **page},
        "GetAchievementStatsRequest": {"achievement_id": id_},
        "Reward": {"reward_id": id_, "quantity": FieldRule(minimum=1, maximum=MAX_REWARD_QUANTITY, required=True)},
        "Level": {
            "level": FieldRule(minimum=1, maximum=MAX_LEVEL, required=True),
            "xp_required": xp,
            "rewards": FieldRule(
                max_items=MAX_REWARDS_PER_LEVEL,
                note=f"The whole level table may use at most {MAX_REWARD_IDS} distinct reward ids (409 otherwise).",
            ),
        },
        "DeleteLevelRequest": {"level": FieldRule(minimum=1, required=True)},
        "ListLevelsRequest": page,
        "CheckLevelUpRequest": {
            "user_id": id_,
            "request_id": FieldRule(_id_rule(MAX_CHECK_REQUEST_ID_LENGTH, optional=True)),
            "replay_only": FieldRule(note="true needs an Idempotency-Key: the check it replays (400 otherwise)."),
        },
        "ListLevelsReachedRequest": {"user_id": id_, **page},
        "ListXpHistoryRequest": {"user_id": id_, **page},
        "AdjustXpRequest": {
            "user_id": id_,
            "delta": FieldRule(
                minimum=-MAX_ADJUSTMENT,
                maximum=MAX_ADJUSTMENT,
                required=True,
                not_zero=True,
                note="XP to add, or to take away when negative; not 0. Taking away more than the user's total "
                "is 409 (FAILED_PRECONDITION): totals never go below zero.",
            ),
            "reason": FieldRule(_text_rule(MAX_REASON_LENGTH, required=True), required=True),
            "request_id": optional_id,
        },
        "RevokeAwardRequest": {
            "user_id": id_,
            "request_id": FieldRule(
                _id_rule(optional=True),
                note="The request_id the entry to revoke was recorded with (not this call's: a revoke takes no "
                "Idempotency-Key). Exactly one of request_id and entry_id is set (400 otherwise).",
            ),
            "reason": FieldRule(_text_rule(MAX_REASON_LENGTH, required=True), required=True),
            "entry_id": FieldRule(
                _id_rule(MAX_ENTRY_ID_LENGTH, optional=True),
                note="The entry_id of the entry to revoke, as the XP history shows it. Exactly one of request_id "
                "and entry_id is set (400 otherwise).",
            ),
        },
    }.items():
        rules.update(_rules_of(message, fields))
    return rules


def _enum_names(field: FieldDescriptor, rule: FieldRule) -> list[str]:
    """The names an enum field takes in a request: the rule's, or all of them."""
    assert field.enum_type is not None
    names = [value.name for value in field.enum_type.values]
    if rule.enum is None:
        return names
    unknown = set(rule.enum) - set(names)
    if unknown:
        raise ValueError(f"{field.full_name}: the rule names values the enum lacks: {sorted(unknown)}")
    return [name for name in names if name in rule.enum]


def _nullable(schema: JsonSchema) -> JsonSchema:
    """The schema, or null: the JSON mapping reads null as the field's default."""
    if "$ref" in schema:
        rest = {key: value for key, value in schema.items() if key != "$ref"}
        return {"anyOf": [{"$ref": schema["$ref"]}, {"type": "null"}], **rest}
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    nullable = {**schema, "type": [*types, "null"]}
    if "enum" in schema:
        nullable["enum"] = [*schema["enum"], None]
    return nullable


class SchemaBuilder:
    """JSON Schemas of messages, each defined once in `components` and
    referred to by $ref: a message's response form under its name, its request
    form under its name too when no answer holds it, else with "Input"."""

    def __init__(self, rules: Mapping[str, FieldRule] | None = None, response_messages: Iterable[str] = ()) -> None:
        self.components: dict[str, JsonSchema] = {}
        self._rules = field_rules() if rules is None else rules
        self._response_messages = frozenset(response_messages)
        # (message full name, request form, fields left out) -> component name
        self._names: dict[tuple[str, bool, frozenset[str]], str] = {}

    def message(self, message: Descriptor, *, request: bool = False, leave_out: Iterable[str] = ()) -> JsonSchema:
        """A $ref to the message's schema (its JSON form, for a well-known type)."""
        if message.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message.full_name])
        if message.full_name in _WRAPPERS:
            value = message.fields_by_name["value"]
            return self._request_field(value, FieldRule()) if request else self.field(value)
        key = (message.full_name, request, frozenset(leave_out))
        name = self._names.get(key)
        if name is None:
            if not request:
                name = message.name if message.name not in self.components else message.full_name.replace(".", "_")
            else:
                name = self._free_name(message.name + ("Input" if message.full_name in self._response_messages else ""))
            self._names[key] = name
            self.components[name] = {}  # reserved first: recursive messages refer to it
            self.components[name] = self._define(message, request, key[2])
        return {"$ref": f"#/components/schemas/{name}"}

    def _free_name(self, name: str) -> str:
        taken = set(self.components) | {ERROR_SCHEMA}
        if name not in taken:
            return name
        return next(f"{name}{n}" for n in range(2, len(taken) + 3) if f"{name}{n}" not in taken)

    def _define(self, message: Descriptor, request: bool, leave_out: frozenset[str]) -> JsonSchema:
        if any(len(oneof.fields) > 1 for oneof in message.oneofs):
            # The members of a oneof exclude each other: not expressed here (no RPC has one yet).
            raise NotImplementedError(f"{message.full_name}: oneof fields are not mapped to JSON Schema")
        schema: JsonSchema = {"type": "object", "title": message.full_name}
        if not request:
            schema["properties"] = {f.name: self.field(f) for f in message.fields}
        else:
            properties: dict[str, JsonSchema] = {}
            required: list[str] = []
            for f in message.fields:
                if f.name in leave_out:
                    continue
                rule = self._rules.get(f.full_name, FieldRule())
                value = self._request_field(f, rule)
                if rule.required:
                    required.append(f.name)
                else:
                    value = _nullable(value)
                properties[f.name] = value
            schema["properties"] = properties
            if required:
                schema["required"] = required
        schema["additionalProperties"] = False
        return schema

    def field(self, field: FieldDescriptor) -> JsonSchema:
        """A field's response form."""
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            return {"type": "object", "additionalProperties": self.field(message.fields_by_name["value"])}
        single = self._single(field)
        return {"type": "array", "items": single} if field.is_repeated else single

    def _single(self, field: FieldDescriptor) -> JsonSchema:
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return {"type": "string", "enum": [value.name for value in field.enum_type.values]}
        return dict(_SCALARS[field.type])

    def string_rule(self, rule: StringRule) -> JsonSchema:
        existing = self.components.setdefault(rule.name, rule.schema)
        if existing is not rule.schema and existing != rule.schema:
            raise ValueError(f"two schemas are named {rule.name!r}")
        return {"$ref": f"#/components/schemas/{rule.name}"}

    def _request_field(self, field: FieldDescriptor, rule: FieldRule) -> JsonSchema:
        """A field's request form in a body: its rule; an integer as a JSON number or a decimal string."""
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            value = self._request_field(message.fields_by_name["value"], FieldRule())
            schema: JsonSchema = {"type": "object", "additionalProperties": value}
        elif field.type in _INTEGER_RANGES:
            low, high, integer_format = _INTEGER_RANGES[field.type]
            low = low if rule.minimum is None else rule.minimum
            high = high if rule.maximum is None else rule.maximum
            single = {
                # The canonical form first: a JSON string for 64-bit integers, a number for the others.
                "type": ["string", "integer"] if integer_format.endswith("64") else ["integer", "string"],
                "format": integer_format,
                "minimum": low,
                "maximum": high,
                "pattern": decimal_pattern(low, high, zero=not rule.not_zero),
            }
            if rule.not_zero:
                single["not"] = {"const": 0}  # the number; the pattern refuses the strings of 0
            schema = single if not field.is_repeated else {"type": "array", "items": single}
        else:
            if message is not None:
                single = self.message(message, request=True)
            elif rule.string is not None:
                single = self.string_rule(rule.string)
            elif field.enum_type is not None:
                single = {"type": "string", "enum": _enum_names(field, rule)}
            else:
                single = dict(_SCALARS[field.type])
            schema = single if not field.is_repeated else {"type": "array", "items": single}
        if field.is_repeated and rule.max_items is not None:
            schema["maxItems"] = rule.max_items
        if rule.note:
            schema["description"] = rule.note
        return schema

    def parameter(self, field: FieldDescriptor) -> JsonSchema:
        """A path or query parameter's schema: the field's rule, an integer as an integer."""
        rule = self._rules.get(field.full_name, FieldRule())
        if field.type in _INTEGER_RANGES:
            low, high, integer_format = _INTEGER_RANGES[field.type]
            schema: JsonSchema = {
                "type": "integer",
                "format": integer_format,
                "minimum": low if rule.minimum is None else rule.minimum,
                "maximum": high if rule.maximum is None else rule.maximum,
            }
            if rule.not_zero:
                schema["not"] = {"const": 0}
        elif rule.string is not None:
            schema = self.string_rule(rule.string)
        else:
            schema = dict(_SCALARS[field.type])
        if rule.note:
            schema["description"] = rule.note
        return schema


def messages_of(types: Iterable[Descriptor]) -> set[str]:
    """The full names of these messages and of every message their fields hold."""
    seen: set[str] = set()
    pending = list(types)
    while pending:
        message = pending.pop()
        if message.full_name in seen:
            continue
        seen.add(message.full_name)
        pending.extend(f.message_type for f in message.fields if f.message_type is not None)
    return seen


def body_bound_fields(route: Route) -> frozenset[str]:
    """The fields of the route's body that the path or the Idempotency-Key
    header fill: left out of the body's schema (the gateway still reads them
    there, when equal)."""
    if route.body is None:
        return frozenset()
    prefix = "" if route.body == WHOLE_REQUEST else f"{route.body}."
    bound = [route.field_path(p) for p in route.path_params]
    if route.idempotency_field:
        bound.append(route.idempotency_field)
    return frozenset(
        dotted.removeprefix(prefix)
        for dotted in bound
        if dotted.startswith(prefix) and "." not in dotted[len(prefix) :]
    )


def _version() -> str:
    try:
        return metadata.version("rewards")
    except metadata.PackageNotFoundError:
        return "0.0.0"


# The answers the gateway gives by itself, for what it takes (gateway.limits).
_GATEWAY_ERRORS = {
    CONTENT_TOO_LARGE: f"the body is over {MAX_BODY_BYTES} bytes, or the request message it makes is over "
    f"{MAX_REQUEST_MESSAGE_BYTES} bytes (the services' limit). Not worth retrying as it is",
    UNSUPPORTED_MEDIA_TYPE: f"the body is not {JSON_MEDIA_TYPE} (a charset, if given, must be utf-8)",
    HEADER_FIELDS_TOO_LARGE: f"a header field (name and value) is over {MAX_HEADER_FIELD_BYTES} bytes, "
    f"Authorization over {MAX_AUTHORIZATION_BYTES} (it is passed on as gRPC metadata), or all of them over "
    f"{MAX_HEADER_SECTION_BYTES}. Not worth retrying as it is",
}
# What a status of the table means beyond its gRPC codes (gateway.status.http_status).
_NOTES = {
    429: " (a rate or concurrency limit, worth retrying later; a size limit is 413 or 431)",
    500: " (or RESOURCE_EXHAUSTED: a service's answer over the gateway's limit)",
}


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {TRACE_ID_HEADER: {"$ref": "#/components/headers/TraceId"}},
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}},
    }


def _error_responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, codes in error_statuses().items():
        responses[f"Error{status}"] = _error_response(f"gRPC {' or '.join(codes)}{_NOTES.get(status, '')}")
    for (status, code), description in _GATEWAY_ERRORS.items():
        responses[f"Error{status}"] = _error_response(f"{code.name}: {description}")
    return responses


def _error_schema() -> JsonSchema:
    return {
        "type": "object",
        "title": "Error",
        "description": "A failed call: the gRPC status code's name, its message, and the google.rpc status details "
        '(such as google.rpc.BadRequest), each with its "@type".',
        "properties": {
            "code": {"type": "string", "enum": [code.name for code in HTTP_STATUS if code.name != "OK"]},
            "message": {"type": "string"},
            "details": {
                "type": "array",
                "items": {"type": "object", "properties": {"@type": {"type": "string"}}, "required": ["@type"]},
            },
        },
        "required": ["code", "message", "details"],
        "additionalProperties": False,
    }


def _idempotency_key(route: Route) -> dict[str, Any]:
    assert route.idempotency_field is not None
    field = resolve_field(route.request_type, route.idempotency_field)
    rule = field_rules().get(field.full_name, FieldRule())
    max_length = rule.string.schema.get("maxLength", MAX_ID_LENGTH) if rule.string else MAX_ID_LENGTH
    return {
        "name": IDEMPOTENCY_HEADER,
        "in": "header",
        "required": False,
        "description": f"Becomes the request's {route.idempotency_field}: a repeat with the same key counts once. "
        f"Printable ASCII, 1 to {max_length} characters, no white space at either end (400 otherwise).",
        "schema": {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": IDEMPOTENCY_KEY_PATTERN},
    }


def _operation(route: Route, schemas: SchemaBuilder) -> dict[str, Any]:
    request = route.request_type
    parameters: list[dict[str, Any]] = []
    for param in route.path_params:
        field = resolve_field(request, route.field_path(param))
        parameter: dict[str, Any] = {
            "name": param,
            "in": "path",
            "required": True,
            "schema": schemas.parameter(field),
        }
        if field.type == FieldDescriptor.TYPE_STRING:
            parameter["description"] = (
                "One path segment, percent-encoded: a slash in the id is sent as %2F (a literal / would "
                "make the path another route's, or none)."
            )
        parameters.append(parameter)
    for name in route.query:
        parameters.append(
            {"name": name, "in": "query", "required": False, "schema": schemas.parameter(resolve_field(request, name))}
        )
    if route.idempotency_field:
        parameters.append(_idempotency_key(route))
    parameters.append({"$ref": "#/components/parameters/TraceParent"})
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "description": " ".join(filter(None, [f"gRPC {route.grpc_method.lstrip('/')}.", route.notes])),
        "tags": [route.rpc.containing_service.name],
        "parameters": parameters,
    }
    body_type = route.body_type
    if body_type is not None:
        where = "the request" if route.body == WHOLE_REQUEST else f"the request's `{route.body}`"
        left_out = sorted(body_bound_fields(route))
        note = (
            f" The path or a header sets {', '.join(left_out)}: the body may leave it out, or repeat the same value."
            if left_out
            else ""
        )
        operation["requestBody"] = {
            "required": True,
            "description": f"{body_type.full_name}: {where}, as {JSON_MEDIA_TYPE} (UTF-8; any other "
            f"Content-Type is 415).{note}",
            "content": {JSON_MEDIA_TYPE: {"schema": schemas.message(body_type, request=True, leave_out=left_out)}},
        }
    responses: dict[str, Any] = {
        "200": {
            "description": route.response_type.full_name,
            "headers": {TRACE_ID_HEADER: {"$ref": "#/components/headers/TraceId"}},
            "content": {"application/json": {"schema": schemas.message(route.response_type)}},
        }
    }
    body_statuses = [CONTENT_TOO_LARGE[0], UNSUPPORTED_MEDIA_TYPE[0]] if body_type is not None else []
    statuses = sorted({*error_statuses(), *body_statuses, HEADER_FIELDS_TOO_LARGE[0]})
    for status in statuses:
        responses[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    operation["responses"] = responses
    return operation


def build_document(routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    schemas = SchemaBuilder(response_messages=messages_of(route.response_type for route in routes))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.http_method.lower()] = _operation(route, schemas)
    header_status = HEADER_FIELDS_TOO_LARGE[0]
    headers_too_large = {str(header_status): {"$ref": f"#/components/responses/Error{header_status}"}}
    paths[HEALTH_PATH] = {
        "get": {
            "operationId": "Healthz",
            "summary": "The gateway is up",
            "tags": ["gateway"],
            "security": [],
            "responses": {
                "200": {
                    "description": "Serving",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"status": {"const": "SERVING"}},
                                "required": ["status"],
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                **headers_too_large,
            },
        }
    }
    paths[OPENAPI_PATH] = {
        "get": {
            "operationId": "OpenApi",
            "summary": "This document",
            "tags": ["gateway"],
            "security": [],
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1",
                    "content": {"application/json": {"schema": {"type": "object", "required": ["openapi", "paths"]}}},
                },
                **headers_too_large,
            },
        }
    }
    if ERROR_SCHEMA in schemas.components:
        raise ValueError(f"a message is named {ERROR_SCHEMA!r}, like the error schema")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rewards gateway",
            "version": _version(),
            "description": "HTTP/JSON in front of the rewards gRPC services (XpService, AchievementsService, "
            "LevelsService), with the protobuf JSON mapping: proto field names, 64-bit integers "
            "as strings, fields at their default values included in responses. Errors carry the "
            "gRPC status code's name; HTTP statuses follow Google's mapping, with "
            "FAILED_PRECONDITION as 409 and a size limit's RESOURCE_EXHAUSTED as 413 or 431, not 429. "
            f"Request bodies are {JSON_MEDIA_TYPE} (415 otherwise), at most {MAX_BODY_BYTES} bytes and "
            f"{MAX_REQUEST_MESSAGE_BYTES} bytes as a protobuf message (413 otherwise); header fields at most "
            f"{MAX_HEADER_FIELD_BYTES} bytes each, {MAX_AUTHORIZATION_BYTES} for Authorization and "
            f"{MAX_HEADER_SECTION_BYTES} in all (431 otherwise). "
            "A request body's schema (a message's request form) states what the services take: every rule a "
            "JSON Schema can state, the others in the description of the field they bind (400 when broken). "
            "As the JSON mapping reads them, an integer field takes a JSON number or a decimal string, and "
            "null stands for a field's default. Patterns are ECMA-262 regular expressions read with the u "
            "flag; a Python validator should match them with re.fullmatch, as `$` in re.search also matches "
            "before a final newline.",
        },
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The token the services verify (role game or admin); passed on as gRPC "
                    "`authorization` metadata. The header (`Bearer <token>`) must be printable ASCII (400 "
                    f"otherwise) and at most {MAX_AUTHORIZATION_VALUE_BYTES} bytes (431 otherwise); a missing, "
                    "malformed, expired or badly signed token is 401, a role that may not call the operation 403.",
                }
            },
            "parameters": {
                "TraceParent": {
                    "name": TRACEPARENT_HEADER,
                    "in": "header",
                    "required": False,
                    "description": "W3C Trace Context (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`): "
                    "the request joins the caller's trace, passed on to the "
                    "services (with `tracestate`), whose logs carry its trace id. An invalid value is ignored, "
                    f"as when absent: the gateway starts a new trace (answered in the {TRACE_ID_HEADER} response "
                    f"header). Like any header field, at most {MAX_HEADER_FIELD_BYTES} bytes with its name "
                    "(431 otherwise).",
                    # Any string: an invalid one is ignored, not refused.
                    "schema": {"type": "string"},
                },
            },
            "headers": {
                "TraceId": {
                    "description": "The W3C trace id of the request (32 hex digits), as the gateway and the "
                    "services logged it and as their spans carry it.",
                    "schema": {"type": "string", "pattern": TRACE_ID_PATTERN},
                }
            },
            "responses": _error_responses(),
            "schemas": {**schemas.components, ERROR_SCHEMA: _error_schema()},
        },
    }
