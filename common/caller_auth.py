"""Who may call what: signed bearer tokens (JWT, HS256) that carry a role, and
the one table of which role may call which method.

Roles:
- `game`: a game server. Awards, unlocks, level checks, progress, catalog reads.
- `service`: one rewards service calling another (XP asks Levels to check a
  level-up; Achievements asks XP to pay an unlock's XP). Each service mints its
  own short-lived token from the shared key.
- `admin`: operators and tools. Everything, including catalog writes and XP
  adjustments (GrantXp).

Health checking needs no token, so that orchestrators can probe. Reflection
(grpcurl list / describe) takes any valid token.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import jwt

from common.config import ENVIRONMENT_VARIABLES, Settings
from common.errors import DomainError
from common.rpc_interceptors import with_metadata
from common.rpc_logging import add_rpc_field

AUTHORIZATION_HEADER = "authorization"
HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
ISSUER = "rewards"
# HS256 with a key shorter than its hash is weak (RFC 7518 3.2).
MIN_SECRET_LENGTH = 32
# Clock skew tolerated between the minting host and the verifying one.
CLOCK_SKEW_S = 30
# A service's own token for calls to its peers: short-lived, renewed before it
# expires (both shortened when the configured service maximum is shorter).
SERVICE_TOKEN_TTL_S = 300
_SERVICE_TOKEN_RENEW_BEFORE_S = 60
# `sub` names the caller on every RPC's log line: short, and printable.
MAX_SUBJECT_LENGTH = 128
# Control characters, invisible formatting (bidi overrides, zero-width),
# line/paragraph separators and lone surrogates: they disguise or break a log line.
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class Role(str, enum.Enum):
    GAME = "game"
    ADMIN = "admin"
    SERVICE = "service"


_GAME = frozenset({Role.GAME, Role.ADMIN})
_SERVICE = frozenset({Role.SERVICE, Role.ADMIN})
_GAME_OR_SERVICE = frozenset({Role.GAME, Role.SERVICE, Role.ADMIN})
_ADMIN = frozenset({Role.ADMIN})
_ANY = frozenset(Role)

# Every method a server serves, and the roles that may call it. A method that is
# served but missing here is refused to every caller (fail closed).
METHOD_ROLES: dict[str, frozenset[Role]] = {
    "/rewards.v1.XpService/PutActivity": _ADMIN,
    "/rewards.v1.XpService/GetActivity": _GAME,
    "/rewards.v1.XpService/ListActivities": _GAME,
    "/rewards.v1.XpService/DeleteActivity": _ADMIN,
    "/rewards.v1.XpService/AwardXp": _GAME,
    # XP adjustments and unlock payments: never a game server's call, since a
    # grant naming an achievement decides what that achievement pays.
    "/rewards.v1.XpService/GrantXp": _SERVICE,
    "/rewards.v1.XpService/GetProgress": _GAME,
    "/rewards.v1.XpService/ListXpHistory": _GAME,
    # Corrections take XP away: an operator's calls, never a game server's.
    "/rewards.v1.XpService/AdjustXp": _ADMIN,
    "/rewards.v1.XpService/RevokeAward": _ADMIN,
    "/rewards.v1.XpService/PutStreak": _ADMIN,
    "/rewards.v1.XpService/GetStreak": _GAME,
    "/rewards.v1.XpService/ListStreaks": _GAME,
    "/rewards.v1.XpService/DeleteStreak": _ADMIN,
    "/rewards.v1.AchievementsService/PutAchievement": _ADMIN,
    "/rewards.v1.AchievementsService/GetAchievement": _GAME,
    "/rewards.v1.AchievementsService/ListAchievements": _GAME,
    "/rewards.v1.AchievementsService/DeleteAchievement": _ADMIN,
    "/rewards.v1.AchievementsService/UnlockAchievement": _GAME,
    "/rewards.v1.AchievementsService/ListUserAchievements": _GAME,
    "/rewards.v1.AchievementsService/GetAchievementProgress": _GAME,
    "/rewards.v1.AchievementsService/GetAchievementStats": _GAME,
    # XP asks after an award that may have completed an auto-unlock achievement; an operator's backfill asks too.
    "/rewards.v1.AchievementsService/UnlockDueAchievements": _SERVICE,
    "/rewards.v1.LevelsService/PutLevel": _ADMIN,
    "/rewards.v1.LevelsService/ListLevels": _GAME,
    "/rewards.v1.LevelsService/DeleteLevel": _ADMIN,
    # A game server may ask too (after a catalog change); XP asks after an award that may raise the level.
    "/rewards.v1.LevelsService/CheckLevelUp": _GAME_OR_SERVICE,
    "/rewards.v1.LevelsService/ListLevelsReached": _GAME,
    # Watching every user (an empty user_id) is for the admin and service roles (events_service.servicer).
    "/rewards.v1.EventsService/WatchEvents": _GAME_OR_SERVICE,
    "/rewards.v1.EventsService/PutWebhook": _ADMIN,
    "/rewards.v1.EventsService/ListWebhooks": _ADMIN,
    "/rewards.v1.EventsService/DeleteWebhook": _ADMIN,
    "/rewards.v1.EventsService/ListFailedDeliveries": _ADMIN,
    "/rewards.v1.EventsService/RedeliverEvents": _ADMIN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _ANY,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": _ANY,
}


@dataclass(frozen=True)
class Caller:
    subject: str
    role: Role


_current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("rpc_caller", default=None)


def current_caller() -> Caller | None:
    """The caller of the RPC being served; None when the services run without tokens."""
    return _current_caller.get()


class TokenRefused(Exception):
    """The token is missing, malformed, badly signed, expired or lacks a claim;
    the message says which, and never echoes the token."""


class RoleRefused(Exception):
    """A valid token whose role may not call the method."""


class AuthNotConfigured(Exception):
    """Neither a signing key nor the explicit insecure flag is configured, or a
    setting of the tokens is unusable."""


class TokenNotMintable(ValueError):
    """A token the services would refuse: longer than its role's maximum
    lifetime, or with an unusable subject."""


_MAX_VERIFIED_TOKENS = 4096


def _max_lifetime_setting(role: Role) -> str:
    return f"auth_{role.value}_token_max_lifetime_s"


def max_lifetime_variable(role: Role) -> str:
    """The environment variable of `role`'s maximum token lifetime."""
    return ENVIRONMENT_VARIABLES[_max_lifetime_setting(role)]


def max_token_lifetimes(settings: Settings) -> dict[Role, int]:
    """Each role's maximum token lifetime (exp - iat), in seconds."""
    return {role: int(getattr(settings, _max_lifetime_setting(role))) for role in Role}


def duration_text(seconds: float) -> str:
    """`90d`, `1h`, `15m` when exact, else seconds (`3601s`)."""
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def subject_problem(subject: object) -> str | None:
    """What is wrong with a token's `sub` claim, without echoing it; None if nothing."""
    if not isinstance(subject, str):
        return "'sub' claim is not a string"
    if not subject:
        return "'sub' claim is empty"
    if len(subject) > MAX_SUBJECT_LENGTH:
        return f"'sub' claim is {len(subject)} characters long; at most {MAX_SUBJECT_LENGTH}"
    for position, character in enumerate(subject):
        if unicodedata.category(character) in _UNPRINTABLE_CATEGORIES:
            return f"'sub' claim has a control or invisible character (U+{ord(character):04X}) at position {position}"
    return None


class TokenAuthority:
    """Mints and verifies the tokens. Verification accepts the current key and,
    during a rotation, the previous one; minting uses the current key only."""

    def __init__(
        self,
        secret: str,
        previous_secrets: Sequence[str] = (),
        max_lifetimes_s: Mapping[Role, int] | None = None,
    ) -> None:
        for key in (secret, *previous_secrets):
            if len(key) < MIN_SECRET_LENGTH:
                raise AuthNotConfigured(
                    f"REWARDS_AUTH_JWT_SECRET (and REWARDS_AUTH_JWT_PREVIOUS_SECRET) must be at least "
                    f"{MIN_SECRET_LENGTH} characters; generate one with `rewardsctl token secret`"
                )
        self._keys = (secret, *previous_secrets)
        self._max_lifetimes_s = dict(max_token_lifetimes(Settings()) if max_lifetimes_s is None else max_lifetimes_s)
        for role in Role:
            if self._max_lifetimes_s.get(role, 0) <= 0:
                raise AuthNotConfigured(f"{max_lifetime_variable(role)} must be a positive number of seconds")
        # token -> (caller, exp): a game server sends the same token on every
        # call, and its HMAC check and claim parsing cost more than the rest of
        # the edge. Only verified tokens enter; each leaves at its exp (past it,
        # a fresh verification, with its clock-skew leeway, decides).
        self._verified: dict[str, tuple[Caller, float]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenAuthority | None:
        """None when auth is explicitly off; refuses a configuration with neither."""
        if not settings.auth_jwt_secret:
            if settings.insecure_no_auth:
                return None
            raise AuthNotConfigured(
                "no REWARDS_AUTH_JWT_SECRET: the services do not start without a key to verify callers' tokens "
                "(set REWARDS_INSECURE_NO_AUTH=true to serve every caller unauthenticated, for local experiments only)"
            )
        previous = (settings.auth_jwt_previous_secret,) if settings.auth_jwt_previous_secret else ()
        return cls(settings.auth_jwt_secret, previous, max_token_lifetimes(settings))

    def max_lifetime_s(self, role: Role) -> int:
        return self._max_lifetimes_s[role]

    def mint(self, role: Role, subject: str, ttl_s: float) -> str:
        """A token of `role` for `subject`, lasting `ttl_s`. Raises
        TokenNotMintable for one that verification would refuse."""
        problem = subject_problem(subject)
        if problem is not None:
            raise TokenNotMintable(f"subject: {problem}")
        ttl = int(ttl_s)
        limit = self._max_lifetimes_s[role]
        if ttl <= 0 or ttl > limit:
            raise TokenNotMintable(
                f"a {role.value} token may last at most {duration_text(limit)} ({max_lifetime_variable(role)}); "
                f"{duration_text(ttl)} asked"
            )
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "role": role.value, "iat": now, "exp": now + ttl}
        return jwt.encode(claims, self._keys[0], algorithm="HS256")

    def verify(self, token: str) -> Caller:
        now = time.time()
        known = self._verified.get(token)
        if known is not None:
            if now < known[1]:
                return known[0]
            self._verified.pop(token, None)
        caller, expires_at = self._verify_signed(token)
        if now < expires_at:
            if len(self._verified) >= _MAX_VERIFIED_TOKENS:
                self._verified.clear()
            self._verified[token] = (caller, expires_at)
        return caller

    def _verify_signed(self, token: str) -> tuple[Caller, float]:
        claims: dict[str, Any] | None = None
        for key in self._keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=["HS256"],
                    issuer=ISSUER,
                    leeway=CLOCK_SKEW_S,
                    # iat too: a token's lifetime (exp - iat) must be known to be judged.
                    options={"require": ["exp", "iat", "sub", "role", "iss"]},
                )
                break
            except jwt.InvalidSignatureError:
                continue  # maybe signed with the previous key
            except jwt.ExpiredSignatureError as error:
                raise TokenRefused("token has expired; mint a new one") from error
            except jwt.MissingRequiredClaimError as error:
                raise TokenRefused(f"token lacks the {error.claim!r} claim") from error
            except jwt.InvalidIssuerError as error:
                raise TokenRefused(f"token was not issued by {ISSUER!r}") from error
            except jwt.InvalidTokenError as error:
                raise TokenRefused(f"token is not a valid JWT ({type(error).__name__})") from error
        if claims is None:
            raise TokenRefused("token signature does not match this deployment's key")
        try:
            role = Role(claims["role"])
        except ValueError as error:
            raise TokenRefused(
                f"token role {str(claims['role'])[:32]!r} is none of {', '.join(r.value for r in Role)}"
            ) from error
        problem = subject_problem(claims["sub"])
        if problem is not None:
            raise TokenRefused(f"token {problem}")
        # Both from the minter's clock, so no skew allowance.
        lifetime_s = float(claims["exp"]) - float(claims["iat"])
        limit = self._max_lifetimes_s[role]
        if lifetime_s > limit:
            raise TokenRefused(
                f"token lifetime (exp - iat) of {duration_text(lifetime_s)} exceeds the {duration_text(limit)} "
                f"maximum for role {role.value!r} ({max_lifetime_variable(role)}); mint a shorter one"
            )
        return Caller(subject=claims["sub"], role=role), float(claims["exp"])


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str:
    values = [value for key, value in metadata or () if key == AUTHORIZATION_HEADER]
    if not values:
        raise TokenRefused("no authorization metadata; send `authorization: Bearer <token>`")
    if len(values) > 1:
        raise TokenRefused("more than one authorization metadata entry")
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    scheme, _, token = str(value).strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenRefused("authorization metadata must be `Bearer <token>`")
    return token.strip()


def authorize(authority: TokenAuthority, method: str, metadata: Iterable[tuple[str, Any]] | None) -> Caller:
    """The caller of `method`, if its token is good and its role may call it.
    Raises TokenRefused (UNAUTHENTICATED) or RoleRefused (PERMISSION_DENIED)."""
    caller = authority.verify(bearer_token(metadata))
    allowed = METHOD_ROLES.get(method, frozenset())
    if caller.role not in allowed:
        raise RoleRefused(
            f"role {caller.role.value!r} may not call {method.lstrip('/')}"
            + (f"; it takes {' or '.join(sorted(r.value for r in allowed))}" if allowed else "")
        )
    return caller


class CallRefused(DomainError):
    """A call refused before any of its work: UNAUTHENTICATED or PERMISSION_DENIED."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.grpc_code = code


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that refuses without reading the
    request (no deserializer: a refused request is never parsed)."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def refuse_unary(_request: Any, _context: grpc.aio.ServicerContext) -> Any:
        # Raised, not aborted: the edge interceptor counts and logs it, then ends the call with it.
        raise CallRefused(code, message)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse_unary, response_serializer=handler.response_serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse, response_serializer=handler.response_serializer)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, response_serializer=handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(refuse, response_serializer=handler.response_serializer)


class CallerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses a call before any of its work: UNAUTHENTICATED without a good
    token, PERMISSION_DENIED when the token's role may not call the method.
    Placed inside RpcEdgeInterceptor, so refusals are logged and counted."""

    def __init__(self, authority: TokenAuthority) -> None:
        self._authority = authority

    async def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(HEALTH_METHOD_PREFIX):
            return handler
        try:
            caller = authorize(self._authority, method, handler_call_details.invocation_metadata)
        except TokenRefused as refused:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, f"authorization: {refused}")
        except RoleRefused as refused:
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED, str(refused))
        who = f"{caller.role.value}:{caller.subject}"
        if handler.unary_stream is not None:
            streaming = handler.unary_stream

            async def streamed_to_caller(request: Any, context: grpc.aio.ServicerContext) -> Any:
                add_rpc_field("caller", who)
                bound = _current_caller.set(caller)
                try:
                    async for response in streaming(request, context):
                        yield response
                finally:
                    with contextlib.suppress(ValueError):  # a stream closed from another context
                        _current_caller.reset(bound)

            return grpc.unary_stream_rpc_method_handler(
                streamed_to_caller,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def served_to_caller(request: Any, context: grpc.aio.ServicerContext) -> Any:
            add_rpc_field("caller", who)  # who did it, on the RPC's log line
            bound = _current_caller.set(caller)
            try:
                return await inner(request, context)
            finally:
                _current_caller.reset(bound)

        return grpc.unary_unary_rpc_method_handler(
            served_to_caller,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class ServiceToken:
    """This service's own `service` token for calls to its peers, minted from
    the shared key and renewed shortly before it expires."""

    def __init__(self, authority: TokenAuthority, subject: str) -> None:
        self._authority = authority
        self._subject = subject
        self._ttl_s = min(SERVICE_TOKEN_TTL_S, authority.max_lifetime_s(Role.SERVICE))
        # Before it ends, with room for a slow call (and whole-second exp): a
        # minute, or a fifth of its life when that is shorter.
        self._renew_before_s = min(_SERVICE_TOKEN_RENEW_BEFORE_S, self._ttl_s / 5)
        self._lock = threading.Lock()
        self._token = ""
        self._renew_at = 0.0

    def metadata(self) -> tuple[str, str]:
        now = time.monotonic()
        if now >= self._renew_at:
            with self._lock:
                if now >= self._renew_at:
                    self._token = self._authority.mint(Role.SERVICE, self._subject, self._ttl_s)
                    self._renew_at = now + self._ttl_s - self._renew_before_s
        return (AUTHORIZATION_HEADER, f"Bearer {self._token}")


class BearerTokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a client channel
    (rewardsctl, tests, a game server written in Python), streams (WatchEvents) too."""

    def __init__(self, token: str) -> None:
        self._metadata = (AUTHORIZATION_HEADER, f"Bearer {token}")

    def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        return continuation(with_metadata(client_call_details, [self._metadata]), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        return continuation(with_metadata(client_call_details, [self._metadata]), request)
