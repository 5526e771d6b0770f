"""All configuration, read from the environment in this one place.

Defaults run the local cluster, except the DynamoDB endpoint: unset means real
AWS, so the local launcher, the compose file and the tests set
REWARDS_DYNAMODB_ENDPOINT.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Settings:
    dynamodb_endpoint: str | None = None
    aws_region: str = "us-east-1"
    table_prefix: str = "rewards-"
    xp_listen: str = "[::]:50051"
    achievements_listen: str = "[::]:50052"
    levels_listen: str = "[::]:50053"
    events_listen: str = "[::]:50054"
    xp_target: str = "localhost:50051"
    achievements_target: str = "localhost:50052"
    levels_target: str = "localhost:50053"
    events_target: str = "localhost:50054"
    # The HTTP/JSON gateway (gateway/): where it listens, and the deadline of
    # each gRPC call it makes on a web client's behalf.
    gateway_host: str = "0.0.0.0"
    gateway_port: int = 8080
    gateway_call_timeout_s: float = 10.0
    # Prometheus metrics over HTTP, one side port per service; 0 turns it off.
    xp_metrics_port: int = 9451
    achievements_metrics_port: int = 9452
    levels_metrics_port: int = 9453
    events_metrics_port: int = 9454
    # The same metrics as CloudWatch Embedded Metric Format lines on stdout (common/cloudwatch_metrics.py),
    # for CloudWatch Logs to extract: on when a namespace is set (a deployment sets its stack name),
    # written every interval as the changes since the last. Prometheus stays on either way.
    cloudwatch_metrics_namespace: str = ""
    cloudwatch_metrics_interval_s: float = 60.0
    level_check_timeout_s: float = 2.0
    # How long the Levels service answers "no level due" from its copy of the
    # level table before reading it again. A level-up, and a new user's start
    # level, always use the table as it is now; a catalog change made through
    # this process is seen at once, one made through another replica within this.
    level_table_cache_s: float = 1.0
    # How long XP and Achievements use their copy of the auto-unlock rules (the
    # catalog's auto_unlock achievements) before reading them again: a rule
    # put through another replica is evaluated for a player within this.
    auto_rules_cache_s: float = 2.0
    # How long each XP process uses its copy of the streak catalog before
    # reading it again: a streak put through another replica counts awards within this.
    streak_catalog_cache_s: float = 2.0
    # The deadline of XP's call that asks Achievements to unlock what an award
    # made due; when it passes, the unlocks are left to the user's next award.
    auto_unlock_timeout_s: float = 5.0
    # The game's one time zone (IANA name): days and weeks (from Monday) of caps and streaks start at
    # its local midnight, never the server's.
    time_zone: str = "UTC"
    # The events service: how often each reader of the streams asks for new records when it found
    # none (a watch's latency is about half of it, plus DynamoDB's), and whether webhooks may use
    # plain http:// urls (local development only: receivers then see unencrypted events).
    events_poll_s: float = 0.25
    webhooks_allow_http: bool = False
    # Webhook delivery: one POST's timeout, the first retry's delay (doubling, at most an hour
    # apart), how long a delivery is retried before it is failed, and the lease of the one replica
    # that reads the streams for webhooks (another takes over within it when that one dies).
    webhook_timeout_s: float = 10.0
    webhook_first_retry_s: float = 5.0
    webhook_retry_window_s: float = 24 * 3600.0
    webhook_lease_s: float = 15.0
    # The DynamoDB client's limits per call: attempts (its own retries included)
    # and socket timeouts, kept short so that its retries fit in an RPC's deadline.
    dynamodb_max_attempts: int = 3
    dynamodb_connect_timeout_s: float = 1.0
    dynamodb_read_timeout_s: float = 2.0
    # At start-up, how long a service retries (with backoff) until DynamoDB
    # answers and its tables are ready, before it exits: DynamoDB may start later.
    dynamodb_startup_wait_s: float = 60.0
    # How often each process checks that DynamoDB answers (a GetItem, sent only
    # when none of its calls got an answer meanwhile): while it does not, the
    # service's own health entry is NOT_SERVING. 0 turns the check off.
    dynamodb_health_interval_s: float = 2.0
    # Transport security (PEM files). With a certificate and key the servers
    # speak TLS; with a CA as well they require client certificates signed by it
    # (mTLS), and calls between services present the same certificate and
    # verify the peer against that CA. All empty: plaintext (local development).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    # Callers' tokens (JWT, HS256): the key that signs and verifies them, and
    # during a key rotation the previous key, still accepted. The services do
    # not start without a key unless insecure_no_auth is set.
    auth_jwt_secret: str = ""
    auth_jwt_previous_secret: str = ""
    # The longest a token of each role may last (exp - iat), in seconds: there
    # is no revocation, so a leaked token is good until it expires. Longer ones
    # are refused, and are not minted. Every service must have the same values.
    auth_game_token_max_lifetime_s: int = 90 * 24 * 3600
    auth_admin_token_max_lifetime_s: int = 90 * 24 * 3600
    auth_service_token_max_lifetime_s: int = 3600
    insecure_no_auth: bool = False
    # The token clients of the services (rewardsctl, the example game server)
    # send as `authorization: Bearer`; the services themselves ignore it.
    token: str = ""
    # The event loop: "uvloop" (libuv, less Python per callback) or "asyncio".
    event_loop: str = "uvloop"
    # Processes of each service, all on its one port (SO_REUSEPORT): one per core.
    workers: int = 1
    # RPCs one process serves at once; more wait in gRPC's queue. 0: no limit.
    max_concurrent_rpcs: int = 0
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    # OpenTelemetry: the OTLP/gRPC collector (such as http://localhost:4317) that each process sends
    # its spans to. Empty: no spans, no exporter (common.tracing). The standard variable, read here
    # like the others; the SDK's other OTEL_* variables (sampler, headers, batching) apply too.
    otel_exporter_otlp_endpoint: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        settings = cls()
        for name, variable in ENVIRONMENT_VARIABLES.items():
            raw = env.get(variable, "").strip()
            if name == "aws_region" and not raw:
                raw = env.get("AWS_DEFAULT_REGION", "").strip()
            if not raw:
                continue
            current = getattr(settings, name)
            value: object = raw
            if isinstance(current, bool):
                value = raw.lower() in ("1", "true", "yes")
            elif isinstance(current, int):
                value = int(raw)
            elif isinstance(current, float):
                value = float(raw)
            elif name == "log_level":
                value = raw.upper()
            settings = replace(settings, **{name: value})  # type: ignore[arg-type]
        # An empty prefix is a valid choice (tables named exactly as defined).
        if "REWARDS_TABLE_PREFIX" in env:
            settings = replace(settings, table_prefix=env["REWARDS_TABLE_PREFIX"])
        return settings


# Settings whose variable is a standard one, not REWARDS_*.
_STANDARD_VARIABLES = {"aws_region": "AWS_REGION", "otel_exporter_otlp_endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT"}


def _variable_name(field_name: str) -> str:
    return _STANDARD_VARIABLES.get(field_name) or "REWARDS_" + field_name.upper()


# Every variable the services read, by setting: what a deployment (the compose
# file, a task definition) may set.
ENVIRONMENT_VARIABLES: dict[str, str] = {f.name: _variable_name(f.name) for f in fields(Settings)}
