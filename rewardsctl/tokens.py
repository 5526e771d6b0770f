"""Tokens for callers of the services, minted from the deployment's key
(REWARDS_AUTH_JWT_SECRET), and the local cluster's development tokens."""

from __future__ import annotations

import re
import secrets

from common.caller_auth import Role, TokenAuthority, max_token_lifetimes
from common.config import Settings

# What the local cluster's and the compose file's dev tokens last, or their
# role's maximum when that is shorter.
DEV_TOKEN_TTL_S = 30 * 24 * 3600
# What `token mint` makes without --ttl, or the role's maximum when that is
# shorter (a service token: 1 hour by default).
DEFAULT_MINT_TTL_S = 12 * 3600
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def new_secret() -> str:
    """A random key for REWARDS_AUTH_JWT_SECRET (64 URL-safe characters)."""
    return secrets.token_urlsafe(48)


def parse_duration(text: str) -> int:
    """`90s`, `15m`, `12h` or `30d`, in seconds."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration such as 15m, 12h or 30d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def minting_authority(settings: Settings) -> TokenAuthority:
    """The deployment's key with its maximum token lifetimes, as the services
    verify with them. Raises AuthNotConfigured."""
    return TokenAuthority(settings.auth_jwt_secret, max_lifetimes_s=max_token_lifetimes(settings))


def mint_token(authority: TokenAuthority, role: Role, subject: str, ttl: str | None) -> str:
    """`token mint`: a token lasting `ttl` (`15m`, `12h`, `30d`), or without one
    DEFAULT_MINT_TTL_S capped at the role's maximum. An explicit `ttl` past that
    maximum is refused, never shortened: ValueError (TokenNotMintable) naming the
    setting."""
    ttl_s = min(DEFAULT_MINT_TTL_S, authority.max_lifetime_s(role)) if ttl is None else parse_duration(ttl)
    return authority.mint(role, subject, ttl_s)


def dev_tokens_env(authority: TokenAuthority, secret: str) -> str:
    """Shell lines that export the key and a `game` and an `admin` token;
    REWARDS_TOKEN (what rewardsctl sends) is the admin one."""
    admin = authority.mint(Role.ADMIN, "dev-admin", min(DEV_TOKEN_TTL_S, authority.max_lifetime_s(Role.ADMIN)))
    game = authority.mint(Role.GAME, "dev-game-server", min(DEV_TOKEN_TTL_S, authority.max_lifetime_s(Role.GAME)))
    return (
        "# Development credentials of the local rewards cluster; load them with: . .local/dev-auth.env\n"
        f"export REWARDS_AUTH_JWT_SECRET={secret}\n"
        f"export REWARDS_GAME_TOKEN={game}\n"
        f"export REWARDS_ADMIN_TOKEN={admin}\n"
        f"export REWARDS_TOKEN={admin}\n"
    )
