"""The data half of every stage's stack (deploy/stacks/*.yaml): generated from the
table definitions ensure_tables uses, fresh, clean under cfn-lint, and its
IAM policies grant each service exactly the DynamoDB (and DynamoDB Streams)
calls it makes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from achievements_service import server as achievements_server
from common import cloudformation
from common.caller_auth import MIN_SECRET_LENGTH
from common.cloudformation import (
    AUTH_SECRET_LOGICAL_ID,
    AUTH_SECRET_READ_POLICY_LOGICAL_ID,
    SERVICE_ACCESS,
    STAGES,
    policy_logical_id,
    table_logical_id,
)
from common.cloudformation import stages as stages_module
from common.config import Settings
from common.dynamodb import ALL_TABLES, DynamoDBClient, create_dynamodb_client, ensure_tables
from common.dynamodb.streams import DynamoDBStreamsClient
from common.dynamodb.tables import EVENT_READERS
from events_service import server as events_server
from events_service.domain import SOURCE_TABLES
from levels_service import server as levels_server
from rewards.v1 import (
    achievements_pb2,
    achievements_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    levels_pb2,
    levels_pb2_grpc,
    xp_pb2,
    xp_pb2_grpc,
)
from tests.cluster import TEST_AUTH_SECRET, ServerLoop, authorized_channel
from xp_service import server as xp_server

# A grant or a call: (IAM action without "dynamodb:", what it acts on) where
# what is a table's name as defined, "<table>/index/<index>", "<table>/stream/*" (any
# stream of the table), or "*".
Grant = tuple[str, str]

TABLES_BY_LOGICAL_ID = {table_logical_id(table): table for table in ALL_TABLES}


# The data half (tables, policies, key) is the same in every stage's stack but
# for the table prefix's default: prod's is checked here, every stage's in
# tests/test_stack_services.py.
PROD = STAGES["prod"]
TEMPLATE_PATH = PROD.path


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(TEMPLATE_PATH.read_text())
    return loaded


# --- generated, fresh, linted --------------------------------------------------------


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_committed_stack_is_what_the_generator_writes(stage: str) -> None:
    assert STAGES[stage].path.read_text() == cloudformation.stack_yaml(STAGES[stage]), (
        f"deploy/stacks/{stage}.yaml is stale: run `make cfn` (python -m common.cloudformation --write)"
    )


def test_check_fails_on_a_stale_or_missing_stack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cloudformation.main(["--check"]) == 0
    monkeypatch.setattr(stages_module, "STACKS_DIR", tmp_path)
    assert cloudformation.main(["--write"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prod.yaml", "staging.yaml"]
    assert (tmp_path / "prod.yaml").read_text() == TEMPLATE_PATH.read_text()
    assert cloudformation.main(["--check"]) == 0
    stale = tmp_path / "prod.yaml"
    stale.write_text(
        stale.read_text().replace("PointInTimeRecoveryEnabled: true", "PointInTimeRecoveryEnabled: false", 1)
    )
    assert cloudformation.main(["--check"]) == 1
    captured = capsys.readouterr()
    assert "-        PointInTimeRecoveryEnabled: false" in captured.out
    assert "+        PointInTimeRecoveryEnabled: true" in captured.out
    assert "make cfn" in captured.err
    assert cloudformation.main(["--write"]) == 0
    (tmp_path / "staging.yaml").unlink()
    assert cloudformation.main(["--check"]) == 1  # a stage without its stack


def _cfn_lint() -> str:
    beside_python = Path(sys.executable).parent / "cfn-lint"
    found = str(beside_python) if beside_python.exists() else shutil.which("cfn-lint")
    assert found, "cfn-lint is not installed (it is a dev dependency in pyproject.toml)"
    return found


def test_cfn_lint_finds_nothing_in_any_stage() -> None:
    # Informational checks too; and more than one region, as the stack is not tied to one.
    result = subprocess.run(
        [
            _cfn_lint(),
            "--include-checks",
            "I",
            "--regions",
            "us-east-1",
            "eu-west-1",
            "ap-southeast-1",
            "--",
            *(str(stage.path) for stage in STAGES.values()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_cfn_lint_catches_an_action_iam_does_not_have(tmp_path: Path) -> None:
    # TransactWriteItems is an API call, not an IAM action: a policy must name
    # the item actions it does. This shows the lint would catch such a slip.
    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATE_PATH.read_text().replace("dynamodb:ListTables", "dynamodb:TransactWriteItems"))
    result = subprocess.run([_cfn_lint(), "--", str(broken)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "W3037 'transactwriteitems' is not one of" in result.stdout


# --- tables ----------------------------------------------------------------------------


def test_every_table_is_the_one_ensure_tables_creates(template: dict[str, Any]) -> None:
    tables = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::DynamoDB::Table"}
    assert list(tables) == [table_logical_id(t) for t in ALL_TABLES]
    for table in ALL_TABLES:
        resource = tables[table_logical_id(table)]
        properties = resource["Properties"]
        created = table.create_table_params(PROD.table_prefix)
        assert properties["TableName"] == {"Fn::Sub": "${TablePrefix}" + table.name}
        assert properties["KeySchema"] == created["KeySchema"]
        assert properties["AttributeDefinitions"] == created["AttributeDefinitions"]
        assert properties.get("GlobalSecondaryIndexes") == created.get("GlobalSecondaryIndexes")
        # The source tables of events stream their new images; CloudFormation names only the view.
        stream = created.get("StreamSpecification")
        assert properties.get("StreamSpecification") == (
            {"StreamViewType": stream["StreamViewType"]} if stream else None
        )
        assert properties["BillingMode"] == created["BillingMode"] == "PAY_PER_REQUEST"
        assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        # Only delivered webhook deliveries expire (docs/deploy.md, "One TTL"); any other TTL would have to
        # be documented there.
        ttl = {"AttributeName": "expires_at", "Enabled": True} if table.name == "webhook_deliveries" else None
        assert properties.get("TimeToLiveSpecification") == ttl
        assert resource["DeletionPolicy"] == resource["UpdateReplacePolicy"] == "Retain"
    activities = tables["ActivitiesTable"]["Properties"]
    assert [i["IndexName"] for i in activities["GlobalSecondaryIndexes"]] == ["by_category"]


def test_table_names_are_the_prefix_and_the_name_as_the_services_use_them(template: dict[str, Any]) -> None:
    prefix = template["Parameters"]["TablePrefix"]
    assert prefix["Default"] == PROD.table_prefix == "rewards-prod-"
    # The longest name still fits DynamoDB's 255 characters behind the longest prefix.
    assert prefix["MaxLength"] == 255 - len("webhook_deliveries") == 255 - max(len(t.name) for t in ALL_TABLES)
    for table in ALL_TABLES:
        substituted = template["Resources"][table_logical_id(table)]["Properties"]["TableName"]["Fn::Sub"]
        assert (
            substituted.replace("${TablePrefix}", prefix["Default"])
            == table.create_table_params(prefix["Default"])["TableName"]
        )


def test_outputs_name_every_table_and_policy(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert outputs["TablePrefix"]["Value"] == {"Ref": "TablePrefix"}
    for table in ALL_TABLES:
        assert outputs[table_logical_id(table) + "Name"]["Value"] == {"Ref": table_logical_id(table)}
        # A table with a stream gives its ARN, for consumers other than the events service.
        stream_arn = outputs.get(table_logical_id(table) + "StreamArn", {}).get("Value")
        assert stream_arn == ({"Fn::GetAtt": [table_logical_id(table), "StreamArn"]} if table.stream_view else None)
    for service in ("xp", "achievements", "levels", "events"):
        assert outputs[policy_logical_id(service) + "Arn"]["Value"] == {"Ref": policy_logical_id(service)}


def test_the_data_resources_are_the_tables_the_service_policies_and_the_token_key(template: dict[str, Any]) -> None:
    data_types = ("AWS::DynamoDB::Table", "AWS::IAM::ManagedPolicy", "AWS::SecretsManager::Secret")
    assert [k for k, v in template["Resources"].items() if v["Type"] in data_types] == [
        *(table_logical_id(t) for t in ALL_TABLES),
        *(policy_logical_id(service) for service in SERVICE_ACCESS),
        AUTH_SECRET_LOGICAL_ID,
        AUTH_SECRET_READ_POLICY_LOGICAL_ID,
    ]


# --- the token key ---------------------------------------------------------------------


def test_the_token_key_is_a_generated_retained_secret(template: dict[str, Any]) -> None:
    secret = template["Resources"][AUTH_SECRET_LOGICAL_ID]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    # Losing it would refuse every token in use (game servers' included).
    assert secret["DeletionPolicy"] == secret["UpdateReplacePolicy"] == "Retain"
    properties = secret["Properties"]
    # Generated by Secrets Manager, never a value in the template; letters and
    # digits, long enough for the services (caller_auth.MIN_SECRET_LENGTH).
    assert "SecretString" not in properties
    assert properties["GenerateSecretString"] == {"PasswordLength": 64, "ExcludePunctuation": True}
    assert properties["GenerateSecretString"]["PasswordLength"] >= MIN_SECRET_LENGTH
    assert properties["Name"] == {"Fn::Sub": "${TablePrefix}auth-jwt-secret"}
    assert template["Outputs"][AUTH_SECRET_LOGICAL_ID + "Arn"]["Value"] == {"Ref": AUTH_SECRET_LOGICAL_ID}


def test_the_execution_role_policy_reads_the_token_key_and_nothing_else(template: dict[str, Any]) -> None:
    policy = template["Resources"][AUTH_SECRET_READ_POLICY_LOGICAL_ID]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy"
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement == {
        "Sid": "ReadAuthJwtSecret",
        "Effect": "Allow",
        "Action": ["secretsmanager:GetSecretValue"],
        "Resource": {"Ref": AUTH_SECRET_LOGICAL_ID},
    }
    assert template["Outputs"][AUTH_SECRET_READ_POLICY_LOGICAL_ID + "Arn"]["Value"] == {
        "Ref": AUTH_SECRET_READ_POLICY_LOGICAL_ID
    }
    # The services' task roles do not read it: ECS injects it at task start.
    for service in SERVICE_ACCESS:
        statements = template["Resources"][policy_logical_id(service)]["Properties"]["PolicyDocument"]["Statement"]
        assert not any(action.startswith("secretsmanager:") for s in statements for action in s["Action"])


# --- policies ----------------------------------------------------------------------------


def _resource_name(resource: Any) -> str:
    if resource == "*":
        return "*"
    if "Fn::GetAtt" in resource:
        logical_id, attribute = resource["Fn::GetAtt"]
        assert attribute == "Arn"
        return TABLES_BY_LOGICAL_ID[logical_id].name
    # "${<Table>.Arn}/index/<index>" or "${<Table>.Arn}/stream/*"
    logical_id, _, below = resource["Fn::Sub"].removeprefix("${").partition(".Arn}/")
    assert below.startswith("index/") or below == "stream/*", resource
    return f"{TABLES_BY_LOGICAL_ID[logical_id].name}/{below}"


def granted(template: dict[str, Any], service: str) -> set[Grant]:
    policy = template["Resources"][policy_logical_id(service)]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy"
    grants: set[Grant] = set()
    for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
        assert statement["Effect"] == "Allow"
        assert set(statement) == {"Sid", "Effect", "Action", "Resource"}  # no NotAction, NotResource
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in statement["Action"]:
            assert action.startswith("dynamodb:") and "*" not in action
            grants.update((action.removeprefix("dynamodb:"), _resource_name(r)) for r in resources)
    return grants


def test_policies_grant_no_table_management_and_no_wildcard_but_list_tables(template: dict[str, Any]) -> None:
    for service in SERVICE_ACCESS:
        grants = granted(template, service)
        assert {action for action, on in grants if on == "*"} == {"ListTables"}
        assert not {"CreateTable", "DeleteTable", "UpdateTable", "UpdateTimeToLive"} & {action for action, _ in grants}
        # ensure_tables waits for every table of ALL_TABLES, so each service describes all of them.
        assert {on for action, on in grants if action == "DescribeTable"} == {t.name for t in ALL_TABLES}


class DynamoDbCallRecorder:
    """Every (IAM action, table) one service's calls need, taken from the
    payload of each call as its DynamoDB client is about to send it (a
    before_send hook), and from the parameters of each call of the boto3
    client its start-up (ensure_tables) uses."""

    # IAM authorises each item of a transaction as its own item action.
    _TRANSACTION_ITEM_ACTIONS = {
        "Put": "PutItem",
        "Update": "UpdateItem",
        "Delete": "DeleteItem",
        "ConditionCheck": "ConditionCheckItem",
    }

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.calls: set[Grant] = set()
        self._lock = threading.Lock()

    def _table(self, table_name: str) -> str:
        assert table_name.startswith(self.prefix), table_name
        return table_name.removeprefix(self.prefix)

    def _streams_of(self, stream_arn: str) -> str:
        """`arn:aws:dynamodb:<region>:<account>:table/<table>/stream/<label>` -> "<table>/stream/*"."""
        table_name = stream_arn.split(":table/", 1)[1].split("/stream/", 1)[0]
        return f"{self._table(table_name)}/stream/*"

    def __call__(self, action: str, payload: Mapping[str, Any]) -> None:
        """A DynamoDBClient.before_send hook."""
        self.record(action, payload)

    def boto3_hook(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        """A botocore before-parameter-build handler."""
        self.record(model.name, params)

    def record(self, operation: str, params: Mapping[str, Any]) -> None:
        needed: set[Grant] = set()
        if operation == "ListTables":
            needed.add((operation, "*"))
        elif operation == "BatchGetItem":
            needed.update((operation, self._table(name)) for name in params["RequestItems"])
        elif operation == "TransactWriteItems":
            for item in params["TransactItems"]:
                ((kind, write),) = item.items()
                needed.add((self._TRANSACTION_ITEM_ACTIONS[kind], self._table(write["TableName"])))
        elif operation == "TransactGetItems":
            needed.update(("GetItem", self._table(item["Get"]["TableName"])) for item in params["TransactItems"])
        elif operation in ("DescribeStream", "GetShardIterator"):
            needed.add((operation, self._streams_of(params["StreamArn"])))
        elif operation == "GetRecords":
            # A shard iterator begins with its stream's ARN, on AWS as on DynamoDB Local: "<stream arn>|...".
            needed.add((operation, self._streams_of(params["ShardIterator"].split("|", 1)[0])))
        else:
            on = self._table(params["TableName"])
            needed.add((operation, f"{on}/index/{params['IndexName']}" if "IndexName" in params else on))
        with self._lock:
            self.calls |= needed


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 for the events service's webhooks: POSTs to /ok
    are answered 200, any other path 500. Records the paths it was sent."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        received = self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(self.path)
                self.send_response(200 if self.path == "/ok" else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _wait_until(condition: Callable[[], bool], what: str, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {limit_s} s: {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def recorded_calls(dynamodb_endpoint: str) -> Iterator[dict[str, set[Grant]]]:
    """Each service with a client of its own, recorded from start-up
    (ensure_tables, on tables that exist, as in AWS) through every RPC; the
    events service's client of the Streams API too, and what its readers of
    the streams and its webhook dispatcher do meanwhile."""
    settings = replace(
        Settings(),
        dynamodb_endpoint=dynamodb_endpoint,
        table_prefix=f"cfn-{uuid.uuid4().hex[:8]}-",
        auth_jwt_secret=TEST_AUTH_SECRET,
        auto_rules_cache_s=0.0,  # XP sees an auto-unlock achievement put a moment ago
        # The events service: the receiver below is plain http; a delivery it refuses fails at once.
        events_poll_s=0.1,
        webhooks_allow_http=True,
        webhook_retry_window_s=0.0,
    )
    ensure_tables(create_dynamodb_client(settings), settings.table_prefix)  # as the stack would, unrecorded
    loop = ServerLoop.shared()
    recorders: dict[str, DynamoDbCallRecorder] = {}
    servers: list[grpc.aio.Server] = []
    clients: list[DynamoDBClient] = []
    ports: dict[str, int] = {}
    channels: dict[str, grpc.Channel] = {}
    factories: dict[str, Callable[..., Any]] = {
        "levels": levels_server.create_server,
        "achievements": achievements_server.create_server,
        "xp": xp_server.create_server,
        "events": events_server.create_server,
    }
    receiver = WebhookReceiver()
    try:
        for service, create_server in factories.items():  # in the order they call each other
            recorders[service] = DynamoDbCallRecorder(settings.table_prefix)
            # Start-up: table management, with boto3, as the entry point does.
            boto3_client = create_dynamodb_client(settings)
            boto3_client.meta.events.register("before-parameter-build.dynamodb", recorders[service].boto3_hook)
            ensure_tables(boto3_client, settings.table_prefix)
            # Serving: the service's own DynamoDB client.
            client = DynamoDBClient(settings)
            client.before_send.append(recorders[service])
            clients.append(client)
            peers = replace(
                settings,
                levels_target=f"localhost:{ports.get('levels', 0)}",
                xp_target=f"localhost:{ports.get('xp', 0)}",
                achievements_target=f"localhost:{ports.get('achievements', 0)}",
            )
            with pytest.MonkeyPatch.context() as patch:
                # The events service's own client of the Streams API, made in create_server, is recorded too.
                patch.setattr(events_server, "DynamoDBStreamsClient", _recorded_streams_client(recorders[service]))
                server, ports[service] = loop.run(create_server("localhost:0", peers, client))
            servers.append(server)
            loop.run(server.start())
        channels = {service: authorized_channel(f"localhost:{port}") for service, port in ports.items()}
        xp = xp_pb2_grpc.XpServiceStub(channels["xp"])
        _call_every_rpc(
            xp,
            levels_pb2_grpc.LevelsServiceStub(channels["levels"]),
            achievements_pb2_grpc.AchievementsServiceStub(channels["achievements"]),
        )
        readers = create_dynamodb_client(settings)  # the test's own, unrecorded

        def webhook_reader_is_live() -> bool:
            item = readers.get_item(
                TableName=settings.table_prefix + EVENT_READERS.name, Key={"reader": {"S": "webhooks"}}
            ).get("Item", {})
            return "cursor" in item  # saved once its reader of the streams reads from now on

        _call_every_events_rpc(
            events_pb2_grpc.EventsServiceStub(channels["events"]), xp, receiver, webhook_reader_is_live
        )
        yield {service: recorder.calls for service, recorder in recorders.items()}
    finally:
        receiver.close()
        for channel in channels.values():
            channel.close()
        for server in servers:
            loop.run(server.stop(grace=None))
        for client in clients:
            loop.run(client.close())


def _recorded_streams_client(recorder: DynamoDbCallRecorder) -> Callable[..., DynamoDBStreamsClient]:
    def make(*args: Any, **kwargs: Any) -> DynamoDBStreamsClient:
        client = DynamoDBStreamsClient(*args, **kwargs)
        client.before_send.append(recorder)
        return client

    return make


def _call_every_events_rpc(
    events: Any, xp: Any, receiver: WebhookReceiver, webhook_reader_is_live: Callable[[], bool]
) -> None:
    """Every Events RPC, and what the service does with an event meanwhile: a watch
    reads it; the webhook reader (holding its lease, saving its cursor) makes a
    delivery per webhook (a conditional put), which is delivered, or refused and
    failed for good; the senders look for due deliveries (index `due`)."""
    secret = "s" * 16
    for webhook_id, path in (("ok", "/ok"), ("refusing", "/refuse"), ("gone", "/ok")):
        events.PutWebhook(
            events_pb2.PutWebhookRequest(
                webhook=events_pb2.Webhook(webhook_id=webhook_id, url=receiver.url(path), secret=secret)
            )
        )
    events.DeleteWebhook(events_pb2.DeleteWebhookRequest(webhook_id="gone"))
    with pytest.raises(grpc.RpcError) as caught:
        events.DeleteWebhook(events_pb2.DeleteWebhookRequest(webhook_id="gone"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = events.ListWebhooks(events_pb2.ListWebhooksRequest())
    assert [w.webhook_id for w in listed.webhooks] == ["ok", "refusing"]

    _wait_until(webhook_reader_is_live, "the webhook reader reads the streams")
    user = f"player-{uuid.uuid4().hex[:8]}"
    watch = events.WatchEvents(events_pb2.WatchEventsRequest(user_id=user), timeout=60)
    try:
        watch.initial_metadata()  # the watch is live
        xp.GrantXp(xp_pb2.GrantXpRequest(user_id=user, amount=5, reason="events", request_id="events-1"))
        watched = next(watch)
        assert (watched.event.user_id, watched.event.type) == (user, events_pb2.EVENT_TYPE_XP_GRANTED)
    finally:
        watch.cancel()

    def failed() -> list[Any]:
        answer = events.ListFailedDeliveries(events_pb2.ListFailedDeliveriesRequest(webhook_id="refusing"))
        return list(answer.deliveries)

    _wait_until(lambda: "/ok" in receiver.paths and bool(failed()), "a delivery sent, and one failed for good")
    (refused,) = failed()
    assert refused.event.user_id == user and refused.last_error == "HTTP 500"
    # Named, then every failed one of the webhook (found by a Query).
    redelivered = events.RedeliverEvents(
        events_pb2.RedeliverEventsRequest(webhook_id="refusing", delivery_ids=[refused.delivery_id])
    )
    assert redelivered.redelivered == 1
    events.RedeliverEvents(events_pb2.RedeliverEventsRequest(webhook_id="refusing"))
    # The redelivery is due at once: a sender claims it, it is refused again, and fails for good again.
    _wait_until(lambda: receiver.paths.count("/refuse") >= 2 and bool(failed()), "the redelivery sent")


def _call_every_rpc(xp: Any, levels: Any, achievements: Any) -> None:
    """Every RPC, along every path that reaches DynamoDB differently."""
    leveled, granted_once, fresh, unlocker = (f"player-{uuid.uuid4().hex[:8]}" for _ in range(4))
    for level, xp_required in ((1, 0), (2, 100), (3, 300)):
        levels.PutLevel(
            levels_pb2.PutLevelRequest(
                level=levels_pb2.Level(
                    level=level, xp_required=xp_required, rewards=[levels_pb2.Reward(reward_id="coins", quantity=level)]
                )
            )
        )
    levels.PutLevel(levels_pb2.PutLevelRequest(level=levels_pb2.Level(level=99, xp_required=99_000)))
    levels.DeleteLevel(levels_pb2.DeleteLevelRequest(level=99))
    assert [l.level for l in levels.ListLevels(levels_pb2.ListLevelsRequest()).levels] == [1, 2, 3]

    for activity_id in ("win-match", "retired"):
        xp.PutActivity(
            xp_pb2.PutActivityRequest(
                activity=xp_pb2.Activity(activity_id=activity_id, name=activity_id, category="pvp", xp=150)
            )
        )
    assert xp.GetActivity(xp_pb2.GetActivityRequest(activity_id="win-match")).xp == 150
    assert len(xp.ListActivities(xp_pb2.ListActivitiesRequest()).activities) == 2
    assert len(xp.ListActivities(xp_pb2.ListActivitiesRequest(category="pvp")).activities) == 2

    # The streak catalog: puts (the catalog read for its size, the period kept by the put's condition,
    # which refuses another), a read, a delete (it leaves a mark) and a page. Every award of a pvp
    # activity below then adds its day to the user's run of daily-pvp.
    for streak_id in ("daily-pvp", "dropped"):
        xp.PutStreak(
            xp_pb2.PutStreakRequest(
                streak=xp_pb2.Streak(streak_id=streak_id, name=streak_id, category="pvp", period=xp_pb2.PERIOD_DAY)
            )
        )
    with pytest.raises(grpc.RpcError) as caught:
        xp.PutStreak(
            xp_pb2.PutStreakRequest(
                streak=xp_pb2.Streak(streak_id="daily-pvp", name="weekly", category="pvp", period=xp_pb2.PERIOD_WEEK)
            )
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert xp.GetStreak(xp_pb2.GetStreakRequest(streak_id="daily-pvp")).period == xp_pb2.PERIOD_DAY
    xp.DeleteStreak(xp_pb2.DeleteStreakRequest(streak_id="dropped"))
    assert [s.streak_id for s in xp.ListStreaks(xp_pb2.ListStreaksRequest()).streaks] == ["daily-pvp"]

    # An award that levels up (a check with a request id), its duplicate (a
    # replay of the check's record), and a retry after the activity left the catalog.
    first = xp.AwardXp(xp_pb2.AwardXpRequest(user_id=leveled, activity_id="retired", request_id="match-1"))
    assert (first.total_xp, first.level, first.level_check_deferred) == (150, 2, False)
    xp.DeleteActivity(xp_pb2.DeleteActivityRequest(activity_id="retired"))
    repeat = xp.AwardXp(xp_pb2.AwardXpRequest(user_id=leveled, activity_id="retired", request_id="match-1"))
    assert (repeat.duplicate, repeat.xp_awarded, repeat.level) == (True, 150, 2)
    assert [r.quantity for r in xp.GetProgress(xp_pb2.GetProgressRequest(user_id=leveled)).rewards] == [2]
    reached = levels.ListLevelsReached(levels_pb2.ListLevelsReachedRequest(user_id=leveled))
    assert [(l.level, [r.quantity for r in l.rewards]) for l in reached.levels] == [(2, [2])]

    # A grant below the next level pins the start level; a check without a request id.
    xp.GrantXp(xp_pb2.GrantXpRequest(user_id=granted_once, amount=10, reason="welcome", request_id="welcome"))
    assert levels.CheckLevelUp(levels_pb2.CheckLevelUpRequest(user_id=granted_once)).current_level == 1
    # Progress of a user never checked reads the start level from the level table.
    assert xp.GetProgress(xp_pb2.GetProgressRequest(user_id=fresh)).level == 1

    for achievement_id, min_level in (("first-win", 1), ("gone", 0)):
        achievements.PutAchievement(
            achievements_pb2.PutAchievementRequest(
                achievement=achievements_pb2.Achievement(
                    achievement_id=achievement_id,
                    name=achievement_id,
                    xp_reward=50,
                    requirements=achievements_pb2.Requirements(min_level=min_level),
                )
            )
        )
    assert (
        achievements.GetAchievement(achievements_pb2.GetAchievementRequest(achievement_id="first-win")).xp_reward == 50
    )
    assert (
        len(achievements.ListAchievements(achievements_pb2.ListAchievementsRequest()).achievements) == 2
    )  # before "gate"
    achievements.DeleteAchievement(achievements_pb2.DeleteAchievementRequest(achievement_id="gone"))
    # A user never checked, so the min_level requirement reads the level table.
    unlocked = achievements.UnlockAchievement(
        achievements_pb2.UnlockAchievementRequest(user_id=unlocker, achievement_id="first-win")
    )
    assert (unlocked.already_unlocked, unlocked.xp_awarded) == (False, 50)
    again = achievements.UnlockAchievement(
        achievements_pb2.UnlockAchievementRequest(user_id=unlocker, achievement_id="first-win")
    )
    assert (again.already_unlocked, again.xp_awarded) == (True, 0)
    listed = achievements.ListUserAchievements(achievements_pb2.ListUserAchievementsRequest(user_id=unlocker))
    assert [a.achievement_id for a in listed.achievements] == ["first-win"]
    assert list(xp.GetProgress(xp_pb2.GetProgressRequest(user_id=unlocker)).unlocked_achievements) == ["first-win"]
    # An achievement that requires another: checked on its unlock record (a ConditionCheck), and when
    # it is not held, the refusal reads which are (a BatchGetItem).
    achievements.PutAchievement(
        achievements_pb2.PutAchievementRequest(
            achievement=achievements_pb2.Achievement(
                achievement_id="gate",
                name="gate",
                requirements=achievements_pb2.Requirements(required_achievements=["first-win"]),
            )
        )
    )
    with pytest.raises(grpc.RpcError) as caught:
        achievements.UnlockAchievement(achievements_pb2.UnlockAchievementRequest(user_id=fresh, achievement_id="gate"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    gate = achievements.UnlockAchievement(
        achievements_pb2.UnlockAchievementRequest(user_id=unlocker, achievement_id="gate")
    )
    assert not gate.already_unlocked
    # An achievement that left the catalog: the unlock record is read for a repeat (none here).
    with pytest.raises(grpc.RpcError) as caught:
        achievements.UnlockAchievement(
            achievements_pb2.UnlockAchievementRequest(user_id=unlocker, achievement_id="gone")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # A reward GrantXp paid before the unlock: the unlock is recorded without paying twice.
    paid_before = "paid-before-player"
    xp.GrantXp(xp_pb2.GrantXpRequest(user_id=paid_before, amount=1, reason="operator", achievement_id="first-win"))
    recorded = achievements.UnlockAchievement(
        achievements_pb2.UnlockAchievementRequest(user_id=paid_before, achievement_id="first-win")
    )
    assert (recorded.already_unlocked, recorded.xp_awarded, recorded.total_xp) == (False, 0, 1)

    # Achievements that unlock themselves: awards counted; the second reaches the watch and XP asks
    # Achievements, which reads the user's counters and unlocks, checking the count (ConditionCheck),
    # moving the unlock stats, and leaves its watches; a refused manual unlock reads the counts.
    achievements.PutAchievement(
        achievements_pb2.PutAchievementRequest(
            achievement=achievements_pb2.Achievement(
                achievement_id="two-wins",
                name="two-wins",
                xp_reward=5,
                auto_unlock=True,
                requirements=achievements_pb2.Requirements(
                    activity_counts=[achievements_pb2.ActivityCount(category="pvp", count=2)]
                ),
            )
        )
    )
    counted = f"player-{uuid.uuid4().hex[:8]}"
    with pytest.raises(grpc.RpcError) as caught:
        achievements.UnlockAchievement(
            achievements_pb2.UnlockAchievementRequest(user_id=counted, achievement_id="two-wins")
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    answers = [
        xp.AwardXp(xp_pb2.AwardXpRequest(user_id=counted, activity_id="win-match", request_id=f"w{i}"))
        for i in range(2)
    ]
    assert [list(a.unlocked_achievements) for a in answers] == [[], ["two-wins"]]
    progress = achievements.GetAchievementProgress(achievements_pb2.GetAchievementProgressRequest(user_id=counted))
    assert {p.achievement.achievement_id for p in progress.achievements if p.unlocked} == {"two-wins"}
    stats = achievements.GetAchievementStats(achievements_pb2.GetAchievementStatsRequest(achievement_id="two-wins"))
    assert stats.unlocked_count == 1
    # The history (a Query of the ledger's by_time index); an adjustment and a revoke of a counted
    # award (the ledger entry read, the counters' ADDs of -1 in the revoke's transaction).
    assert len(xp.ListXpHistory(xp_pb2.ListXpHistoryRequest(user_id=counted)).entries) == 3  # two wins, a reward
    xp.AdjustXp(xp_pb2.AdjustXpRequest(user_id=counted, delta=-5, reason="support", request_id="fix-1"))
    revoked = xp.RevokeAward(xp_pb2.RevokeAwardRequest(user_id=counted, request_id="w0", reason="cheated"))
    assert revoked.xp_awarded == -150
    due = achievements.UnlockDueAchievements(
        achievements_pb2.UnlockDueAchievementsRequest(user_id=counted, trigger_id="operator", dry_run=True)
    )
    assert list(due.due) == []

    # An achievement that asks for a run: a refused manual unlock reads the user's runs; the award that
    # makes the run unlocks it by itself, the run's item checked in the unlock's transaction; progress
    # reads the user's runs.
    achievements.PutAchievement(
        achievements_pb2.PutAchievementRequest(
            achievement=achievements_pb2.Achievement(
                achievement_id="pvp-day",
                name="pvp-day",
                xp_reward=5,
                auto_unlock=True,
                requirements=achievements_pb2.Requirements(
                    streak_lengths=[achievements_pb2.StreakLength(streak_id="daily-pvp", length=1)]
                ),
            )
        )
    )
    streaker = f"player-{uuid.uuid4().hex[:8]}"
    with pytest.raises(grpc.RpcError) as caught:
        achievements.UnlockAchievement(
            achievements_pb2.UnlockAchievementRequest(user_id=streaker, achievement_id="pvp-day")
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    played = xp.AwardXp(xp_pb2.AwardXpRequest(user_id=streaker, activity_id="win-match", request_id="day-1"))
    assert list(played.unlocked_achievements) == ["pvp-day"]
    runs = xp.GetProgress(xp_pb2.GetProgressRequest(user_id=streaker)).streaks
    assert [(r.streak_id, r.current, r.best) for r in runs] == [("daily-pvp", 1, 1)]


@pytest.mark.parametrize("service", ["xp", "achievements", "levels", "events"])
def test_policy_grants_exactly_the_calls_the_service_makes(
    service: str, template: dict[str, Any], recorded_calls: dict[str, set[Grant]]
) -> None:
    grants, calls = granted(template, service), recorded_calls[service]
    assert calls - grants == set(), f"the {service} service makes calls its policy denies"
    # Only when Levels cannot answer do XP and Achievements note a deferred check on the ledger entry,
    # and only an unlock an earlier version left owing XP is marked paid later: a healthy run does neither.
    failure_path = {
        "xp": {("UpdateItem", "xp_ledger")},
        "achievements": {("UpdateItem", "xp_ledger"), ("UpdateItem", "user_achievements")},
    }.get(service, set())
    assert grants - calls - failure_path == set(), f"the {service} policy grants what the service never does"


def test_the_derived_least_privilege_table(template: dict[str, Any]) -> None:
    """The table docs/deploy.md shows, spelled out: each service's item actions by table."""

    def item_grants(service: str) -> dict[str, list[str]]:
        by_table: dict[str, list[str]] = {}
        for action, on in sorted(granted(template, service)):
            if action not in ("DescribeTable", "ListTables"):
                by_table.setdefault(on, []).append(action)
        return by_table

    assert item_grants("xp") == {
        "activities": ["ConditionCheckItem", "DeleteItem", "GetItem", "PutItem", "Scan"],
        "activities/index/by_category": ["Query"],
        "level_rewards": ["Query"],
        # The level table's version item (GetItem), and the table when it moved (Scan).
        "levels": ["GetItem", "Scan"],
        "user_achievements": ["Query"],
        # The read after an award takes the counters an auto-unlock rule counts with the progress item.
        "user_progress": ["BatchGetItem", "GetItem", "UpdateItem"],
        # Counters and streak runs: added to by awards, read after them (and a long run folded);
        # GetProgress queries the runs.
        "activity_counts": ["BatchGetItem", "Query", "UpdateItem"],
        # The streak catalog: a put's condition keeps the period, a delete leaves a mark (UpdateItem).
        "streaks": ["GetItem", "PutItem", "Scan", "UpdateItem"],
        # The players stat, once per user; the auto-unlock rules, from the catalog.
        "achievement_stats": ["UpdateItem"],
        "achievements": ["Scan"],
        "xp_ledger": ["GetItem", "PutItem", "UpdateItem"],
        "xp_ledger/index/by_time": ["Query"],
    }
    assert item_grants("achievements") == {
        # The unlock's transaction checks the revision of the entry it was decided on (ConditionCheckItem).
        "achievements": ["BatchGetItem", "ConditionCheckItem", "DeleteItem", "GetItem", "PutItem", "Scan"],
        "levels": ["GetItem", "Scan"],
        "user_achievements": ["BatchGetItem", "ConditionCheckItem", "GetItem", "PutItem", "Query", "UpdateItem"],
        "user_progress": ["BatchGetItem", "GetItem", "UpdateItem"],
        # Counts checked in the unlock's transaction, read by a refusal and an evaluation, watched.
        "activity_counts": ["BatchGetItem", "ConditionCheckItem", "Query", "UpdateItem"],
        "achievement_stats": ["BatchGetItem", "UpdateItem"],
        # The unlock pays its reward in its own transaction.
        "xp_ledger": ["PutItem", "UpdateItem"],
    }
    assert item_grants("levels") == {
        "level_checks": ["GetItem", "UpdateItem"],
        "level_rewards": ["BatchGetItem", "PutItem", "Query"],
        # Level writes move the version item (UpdateItem); a level-up checks it (ConditionCheckItem).
        "levels": ["ConditionCheckItem", "DeleteItem", "GetItem", "PutItem", "Scan", "UpdateItem"],
        "user_progress": ["GetItem", "UpdateItem"],
    }
    stream_read = ["DescribeStream", "GetRecords", "GetShardIterator"]
    assert item_grants("events") == {
        # PutWebhook updates (keeping created_at); ListWebhooks and the dispatcher scan; DeleteWebhook.
        "webhooks": ["DeleteItem", "Scan", "UpdateItem"],
        # Deliveries: made by a conditional put, claimed and finished by updates, listed by webhook.
        "webhook_deliveries": ["PutItem", "Query", "UpdateItem"],
        "webhook_deliveries/index/due": ["Query"],
        # The webhook reader's lease and cursor.
        "event_readers": ["UpdateItem"],
        # The tables events come from: their streams only, never their items.
        "user_progress/stream/*": stream_read,
        "user_achievements/stream/*": stream_read,
        "level_rewards/stream/*": stream_read,
    }


def test_only_the_events_service_reads_streams_and_of_the_tables_that_have_one(template: dict[str, Any]) -> None:
    streamed = {table.name for table in ALL_TABLES if table.stream_view}
    # The tables events are made of stream their changes, and no other table does.
    assert streamed == set(SOURCE_TABLES)
    for service in SERVICE_ACCESS:
        read = {on.removesuffix("/stream/*") for _, on in granted(template, service) if on.endswith("/stream/*")}
        assert read == (streamed if service == "events" else set()), service
    # Found by DescribeTable (LatestStreamArn): no ListStreams, which IAM could only grant on "*".
    assert not any(action == "ListStreams" for service in SERVICE_ACCESS for action, _ in granted(template, service))
