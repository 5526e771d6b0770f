"""Client channels: the one each service uses to call another, and the options
any client of these services (rewardsctl, a game server) should use."""

from __future__ import annotations

import json

import grpc

from common.caller_auth import BearerTokenInterceptor, ServiceToken, TokenAuthority
from common.config import Settings
from common.rpc_interceptors import PeerCallInterceptor
from common.transport_security import channel_credentials

# A user's full reward history (GetProgress) or a level-up across hundreds of
# levels can pass gRPC's default 4 MB; requests stay small.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_REQUEST_BYTES = 1024 * 1024

# Retries of UNAVAILABLE (a peer restarting, DynamoDB unreachable or
# throttling) with backoff, by gRPC itself. Safe because every write is
# idempotent: awards and grants by request id, unlocks by achievement, level
# checks by their request id. Each attempt stays within the call's deadline.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "rewards.v1.XpService"},
                    {"service": "rewards.v1.AchievementsService"},
                    {"service": "rewards.v1.LevelsService"},
                    {"service": "rewards.v1.EventsService"},
                ],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)

CLIENT_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", RETRY_SERVICE_CONFIG),
    # Spread calls over every address a DNS name resolves to (replicas behind service discovery).
    ("grpc.lb_policy_name", "round_robin"),
    # Reconnect quickly after a peer restarts: calls fail fast (no
    # wait_for_ready) while it is down, so a long backoff would prolong the outage.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def client_channel(target: str, settings: Settings, token: str = "") -> grpc.Channel:
    """A channel to one of the services: TLS (with this process's certificate)
    when the configuration has a CA, plaintext otherwise; with `token`, every
    call carries `authorization: Bearer <token>`."""
    credentials = channel_credentials(settings)
    if credentials is None:
        channel = grpc.insecure_channel(target, options=CLIENT_CHANNEL_OPTIONS)
    else:
        channel = grpc.secure_channel(target, credentials, options=CLIENT_CHANNEL_OPTIONS)
    return grpc.intercept_channel(channel, BearerTokenInterceptor(token)) if token else channel


def peer_channel(target: str, settings: Settings, caller: str) -> grpc.aio.Channel:
    """The grpc.aio channel the service named `caller` uses to call another (one
    per process and target, made inside its event loop): its own `service`
    token, mTLS when configured, retries, trace id and deadline propagation."""
    authority = TokenAuthority.from_settings(settings)
    credentials = ServiceToken(authority, caller).metadata if authority else None
    interceptors = [PeerCallInterceptor(credentials)]
    channel_credentials_ = channel_credentials(settings)
    if channel_credentials_ is None:
        return grpc.aio.insecure_channel(target, options=CLIENT_CHANNEL_OPTIONS, interceptors=interceptors)
    return grpc.aio.secure_channel(
        target, channel_credentials_, options=CLIENT_CHANNEL_OPTIONS, interceptors=interceptors
    )
