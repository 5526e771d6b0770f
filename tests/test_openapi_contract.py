"""The OpenAPI document states what the services take, so that clients
generated from it and the services agree: every request field has its rule
(gateway.openapi.field_rules), the published patterns mean what the services
check (in Python's re and in a Rust JSON Schema validator alike), and
`schemathesis run` with all its checks, against a gateway in front of a real
cluster, finds nothing: no valid request refused, no invalid one taken, no 5xx,
answers as documented.

What JSON Schema cannot state is in the document's descriptions, and in the
hooks below, which schemathesis loads from this module (SCHEMATHESIS_HOOKS):
a positive case is made to follow those rules too (Unicode NFC, page tokens
only as issued, the rules between a body field and a header or the path, and
between two fields of one message: an activity count's activity_id and category,
a streak's activity_id and category, a revoke's request_id and entry_id).
To run the same against a gateway of your own (from the repository's root):

    SCHEMATHESIS_HOOKS=tests.test_openapi_contract .venv/bin/schemathesis run \\
        http://localhost:8080/openapi.json --checks all -H "Authorization: Bearer $REWARDS_ADMIN_TOKEN"

(with an admin token: the catalog writes, GrantXp, AdjustXp and RevokeAward take one)."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from common import field_rules as service_rules
from common.caller_auth import Role
from common.errors import InvalidField
from devcluster.dynamodb_local import REPO_ROOT
from gateway.binding import INTEGER_TYPES
from gateway.openapi import IDEMPOTENCY_KEY_PATTERN, build_document, decimal_pattern, field_rules
from gateway.routes import IDEMPOTENCY_HEADER, ROUTES
from tests.cluster import STANDARD_LEVELS, Cluster, mint_test_token
from tests.gateway_server import GatewayServer, http_call
from xp_service.servicer import MAX_ENTRY_ID_LENGTH, MAX_REASON_LENGTH

HOOKS_MODULE = __name__
# Examples per operation and phase, and steps per stateful scenario: what keeps the run
# near a minute on a two-core machine. A fixed seed makes a failure reproducible.
MAX_EXAMPLES = 12
MAX_STATEFUL_STEPS = 8
SEED = 20260101
RUN_TIMEOUT_S = 240

SCHEMATHESIS_CONFIG = """\
[phases.stateful]
max-steps = {max_steps}
"""


# --- the rules behind the document ------------------------------------------------------


def _request_messages() -> dict[str, Descriptor]:
    """Every message a route's request holds, by full name."""
    found: dict[str, Descriptor] = {}
    pending = [route.request_type for route in ROUTES]
    while pending:
        message = pending.pop()
        if message.full_name in found or message.full_name.startswith("google.protobuf."):
            continue
        found[message.full_name] = message
        pending.extend(f.message_type for f in message.fields if f.message_type is not None)
    return found


def test_every_request_field_has_its_rule() -> None:
    """A string or integer field a request carries has a rule in the document:
    a field added to a request (or a route added) without one fails here."""
    rules = field_rules()
    missing = [
        f.full_name
        for message in _request_messages().values()
        for f in message.fields
        if (f.type == FieldDescriptor.TYPE_STRING or f.type in INTEGER_TYPES) and f.full_name not in rules
    ]
    assert not missing, f"no rule in gateway.openapi.field_rules for {missing}"
    pool = descriptor_pool.Default()
    for name in rules:
        pool.FindFieldByName(name)  # a rule names a field that exists


def _service_takes(check: Callable[[str], object], value: str) -> bool:
    try:
        check(value)
    except InvalidField:
        return False
    return True


def _samples(count: int, seed: int) -> list[str]:
    """Strings from every part of Unicode (no lone surrogates: no JSON or UTF-8 text holds one),
    weighted to ASCII, white space and the characters the rules are about."""
    rnd = random.Random(seed)
    special = [0x20, 0xA0, 0x3000, 0x2028, 0x9, 0xA, 0xD, 0x0, 0x7F, 0x85, 0xAD, 0x200B, 0x200D, 0x202E, 0xFEFF]
    special += [0x301, 0x308, 0x212B, 0x958, 0xF900, 0x1D173, 0xE0041, 0x1F600, 0x65]

    def character() -> str:
        pick = rnd.random()
        if pick < 0.4:
            code_point = rnd.randint(0x20, 0x7E)
        elif pick < 0.7:
            code_point = rnd.choice(special)
        elif pick < 0.9:
            code_point = rnd.randint(0, 0x3000)
        else:
            code_point = rnd.randint(0, sys.maxunicode)
        return "?" if 0xD800 <= code_point <= 0xDFFF else chr(code_point)

    fixed = ["", " ", "a", " a", "a ", "a b", "e\u0301", "\u00e9", "\u212b", "\u0301", "x\u0301", "a\u200bb", "\t\n"]
    return fixed + ["".join(character() for _ in range(rnd.randint(1, 5))) for _ in range(count)]


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(document["components"]["schemas"][name])


def test_published_patterns_mean_what_the_services_check() -> None:
    """The document's patterns against common.field_rules, on the same strings:
    equal but for NFC, which no pattern states (a sequence NFC composes or
    reorders); and the same answers from Python's re and from jsonschema_rs
    (a Rust validator, ECMA-262 patterns)."""
    document = build_document()
    samples = _samples(4000, seed=7)
    max_length = service_rules.MAX_ID_LENGTH
    checks: dict[str, Callable[[str], object]] = {
        "Id": lambda v: service_rules.require_id("f", v),
        "OptionalId": lambda v: service_rules.optional_id("f", v),
        f"RequiredText{service_rules.MAX_NAME_LENGTH}": lambda v: service_rules.text(
            "f", v, max_length=service_rules.MAX_NAME_LENGTH, required=True
        ),
        f"Text{service_rules.MAX_DESCRIPTION_LENGTH}": lambda v: service_rules.text(
            "f", v, max_length=service_rules.MAX_DESCRIPTION_LENGTH
        ),
        f"RequiredText{MAX_REASON_LENGTH}": lambda v: service_rules.text(
            "f", v, max_length=MAX_REASON_LENGTH, required=True
        ),
        f"OptionalId{MAX_ENTRY_ID_LENGTH}": lambda v: service_rules.optional_id("f", v, max_length=MAX_ENTRY_ID_LENGTH),
    }
    for name, check in checks.items():
        schema = _schema(document, name)
        pattern = re.compile(schema["pattern"])
        validator = jsonschema_rs.validator_for(schema)
        too_long = ["x" * (schema["maxLength"] + 1), "x" * schema["maxLength"]]
        for value in [*samples, *too_long]:
            published = bool(pattern.fullmatch(value)) and len(value) <= schema["maxLength"]
            published = published and len(value) >= schema.get("minLength", 0)
            service = _service_takes(check, value)
            if published != service:
                # Only NFC, which the description states and no pattern can.
                assert published and not unicodedata.is_normalized("NFC", value), (name, ascii(value))
            assert validator.is_valid(value) == published, (name, ascii(value))
    assert _schema(document, "Id")["maxLength"] == max_length

    # Integers: the decimal strings the JSON mapping reads, within the services' range.
    rnd = random.Random(11)
    for low, high in [(0, service_rules.MAX_XP), (0, service_rules.MAX_PAGE_SIZE), (1, 10**6), (-(2**63), 2**63 - 1)]:
        pattern = re.compile(decimal_pattern(low, high))
        validator = jsonschema_rs.validator_for({"type": "string", "pattern": pattern.pattern})
        values = [low, high, low - 1, high + 1, 0, -1, 1, 10, 99, 100, 101]
        values += [rnd.randint(low - 10**12, high + 10**12) for _ in range(500)]
        for value in values:
            for text in {str(value), f"00{value}" if value >= 0 else f"-00{-value}", f"+{abs(value)}"}:
                expected = low <= int(text) <= high
                assert bool(pattern.fullmatch(text)) == expected == validator.is_valid(text), (low, high, text)

    # A signed delta: every decimal string of the range but those of 0; and the number 0 refused by `not`.
    delta = decimal_pattern(-(10**9), 10**9, zero=False)
    validator = jsonschema_rs.validator_for({"type": "string", "pattern": delta})
    for text in ["0", "-0", "+0", "000", "-000", "1", "-1", "+01", "-001", "1000000000", "-1000000000", "1000000001"]:
        expected = int(text) != 0 and abs(int(text)) <= 10**9
        assert bool(re.fullmatch(delta, text)) == expected == validator.is_valid(text), text
    adjust = _schema(document, "AdjustXpRequest")["properties"]["delta"]
    delta_validator = jsonschema_rs.validator_for(adjust)
    assert not delta_validator.is_valid(0) and not delta_validator.is_valid("-0") and not delta_validator.is_valid(0.0)
    assert delta_validator.is_valid(-5) and delta_validator.is_valid("25") and not delta_validator.is_valid(10**9 + 1)

    key = re.compile(IDEMPOTENCY_KEY_PATTERN)
    assert key.fullmatch("quest-42") and key.fullmatch("a b") and not key.fullmatch(" a") and not key.fullmatch("é")


def test_request_forms_state_required_fields_and_what_the_path_or_a_header_sets() -> None:
    document = build_document()
    schemas = document["components"]["schemas"]
    award = document["paths"]["/xp/award"]["post"]
    body = award["requestBody"]["content"]["application/json"]["schema"]
    award_form = schemas[body["$ref"].rsplit("/", 1)[1]]
    assert award_form["required"] == ["user_id", "activity_id"]
    assert "request_id" not in award_form["properties"]  # the Idempotency-Key sets it
    key = next(p for p in award["parameters"] if p.get("name") == IDEMPOTENCY_HEADER)
    assert key["schema"]["maxLength"] == service_rules.MAX_ID_LENGTH
    put = document["paths"]["/activities/{activity_id}"]["put"]
    activity_form = schemas[put["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert "activity_id" not in activity_form["properties"] and activity_form["required"] == ["name"]
    assert activity_form["properties"]["xp"]["maximum"] == service_rules.MAX_XP
    page_size = next(p for p in document["paths"]["/activities"]["get"]["parameters"] if p.get("name") == "page_size")
    assert (page_size["schema"]["minimum"], page_size["schema"]["maximum"]) == (0, service_rules.MAX_PAGE_SIZE)
    # The response form is unchanged: what the gateway writes, 64-bit integers as strings.
    assert schemas["Activity"]["properties"]["xp"]["type"] == "string"


# --- schemathesis against a running gateway ---------------------------------------------


@pytest.fixture(scope="module")
def contract_gateway(dynamodb_endpoint: str) -> Iterator[GatewayServer]:
    """A cluster and gateway of their own: the generated calls write the catalog and the level table."""
    cluster = Cluster(dynamodb_endpoint)
    cluster.put_levels(STANDARD_LEVELS)
    server = GatewayServer.for_cluster(cluster).start()
    yield server
    server.stop()
    cluster.close()


def test_schemathesis_finds_nothing(contract_gateway: GatewayServer, tmp_path: Path) -> None:
    served = http_call(contract_gateway, "GET", "/openapi.json")
    assert served.status == 200 and served.json == json.loads(json.dumps(build_document()))
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG.format(max_steps=MAX_STATEFUL_STEPS))
    admin = mint_test_token(Role.ADMIN, "schemathesis")
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{contract_gateway.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--workers",
        "2",
        "--header",
        f"Authorization: Bearer {admin}",
        "--request-timeout",
        "30",
        "--no-color",
        "--output-truncate",
        "true",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS_MODULE, "PYTHONPATH": str(REPO_ROOT)}
    started = time.monotonic()
    run = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    took = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis found something (exit {run.returncode}, {took:.0f} s):\n{output}"
    counts = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", output)
    assert counts, output
    selected, total, tested = map(int, counts.groups())
    assert selected == total == tested >= len(ROUTES), output  # every operation, every route among them
    print(f"schemathesis: {took:.0f} s\n{output[-1500:]}")


# --- the hooks schemathesis loads (SCHEMATHESIS_HOOKS=tests.test_openapi_contract) ---------


def _nfc(value: Any) -> Any:
    """Strings in Unicode NFC, as the services take ids: the rule no pattern states."""
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, list):
        return [_nfc(item) for item in value]
    if isinstance(value, dict):
        return {_nfc(key): _nfc(item) for key, item in value.items()}
    return value


def _register_hooks() -> None:  # pragma: no cover - runs in the schemathesis process
    import schemathesis
    from schemathesis.core import NOT_SET

    # By listing (the operation, its path parameters and its category filter): a token is good for the
    # listing that issued it, with the same parameters, and no other.
    issued_page_tokens: dict[str, set[str]] = {}

    def listing(case: Any, query: dict[str, Any]) -> str:
        return f"{case.method} {case.path} {sorted((case.path_parameters or {}).items())} {query.get('category')}"

    @schemathesis.hook
    def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
        """A positive case made to follow what the document states in words: just before
        it is sent, after any stateful link filled in a value."""
        meta = case.meta
        if meta is None or not meta.generation.mode.is_positive:
            return
        operation = f"{case.method.upper()} {case.path}"
        if case.path_parameters:
            case.path_parameters = _nfc(case.path_parameters)
        if case.query:
            query = _nfc(case.query)
            # Opaque: a page token is one the gateway answered with, or none.
            if query.get("page_token") not in issued_page_tokens.get(listing(case, query), set()):
                query.pop("page_token", None)
            case.query = query
        body = case.body
        if body is not NOT_SET and isinstance(body, dict):
            body = _nfc(body)
            headers = case.headers
            has_key = IDEMPOTENCY_HEADER in headers
            if operation == "POST /xp/grant" and body.get("achievement_id") and has_key:
                del headers[IDEMPOTENCY_HEADER]  # the achievement keys the grant
                case.headers = headers
            if operation == "POST /xp/revoke":
                # Exactly one of request_id and entry_id: the entry to revoke.
                if body.get("request_id"):
                    body.pop("entry_id", None)
                elif not body.get("entry_id"):
                    body["request_id"] = "revoked-request"
            if operation == "POST /levels/check-level-up" and body.get("replay_only") is True and not has_key:
                headers[IDEMPOTENCY_HEADER] = "replayed-check"  # the check it replays
                case.headers = headers
            if operation == "PUT /activities/{activity_id}":
                cap = body.get("cap")
                if isinstance(cap, dict) and str(cap.get("max_awards") or 0) not in ("0", "+0", "-0"):
                    # A positive max_awards needs a period.
                    if cap.get("period") in (None, "PERIOD_UNSPECIFIED"):
                        cap["period"] = "PERIOD_DAY"
            if operation == "PUT /streaks/{streak_id}":
                # Exactly one of activity_id and category: what the streak counts.
                if body.get("activity_id"):
                    body.pop("category", None)
                elif not body.get("category"):
                    body["activity_id"] = "counted-activity"
            if operation == "PUT /achievements/{achievement_id}":
                requirements = body.get("requirements")
                own = case.path_parameters.get("achievement_id")
                if isinstance(requirements, dict) and isinstance(requirements.get("required_achievements"), list):
                    required = [a for a in requirements["required_achievements"] if a != own]
                    requirements["required_achievements"] = required  # not itself
                if isinstance(requirements, dict) and isinstance(requirements.get("activity_counts"), list):
                    for count in requirements["activity_counts"]:
                        # Exactly one of activity_id and category.
                        if isinstance(count, dict) and count.get("activity_id"):
                            count.pop("category", None)
                        elif isinstance(count, dict) and not count.get("category"):
                            count["activity_id"] = "counted-activity"
            case.body = body

    @schemathesis.hook
    def after_call(context: Any, case: Any, response: Any) -> None:
        try:
            answer = response.json()
        except Exception:
            return
        if isinstance(answer, dict) and isinstance(answer.get("next_page_token"), str) and answer["next_page_token"]:
            issued_page_tokens.setdefault(listing(case, case.query or {}), set()).add(answer["next_page_token"])


if os.environ.get("SCHEMATHESIS_HOOKS") == HOOKS_MODULE:
    _register_hooks()
