"""Tokens for callers of the services, minted from the deployment's key
(REWARDS_AUTH_JWT_SECRET), and the local cluster's development tokens."""

from __future__ import annotations

import re
import secrets

from common.caller_auth import Role, TokenAuthority

# What the local cluster's and the compose file's dev tokens last.
DEV_TOKEN_TTL_S = 30 * 24 * 3600
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


def dev_tokens_env(authority: TokenAuthority, secret: str) -> str:
    """Shell lines that export the key and a `game` and an `admin` token;
    REWARDS_TOKEN (what rewardsctl sends) is the admin one."""
    admin = authority.mint(Role.ADMIN, "dev-admin", DEV_TOKEN_TTL_S)
    game = authority.mint(Role.GAME, "dev-game-server", DEV_TOKEN_TTL_S)
    return (
        "# Development credentials of the local rewards cluster; load them with: . .local/dev-auth.env\n"
        f"export REWARDS_AUTH_JWT_SECRET={secret}\n"
        f"export REWARDS_GAME_TOKEN={game}\n"
        f"export REWARDS_ADMIN_TOKEN={admin}\n"
        f"export REWARDS_TOKEN={admin}\n"
    )
