"""The rules a token must keep besides its signature: a maximum lifetime per
role (exp - iat, from Settings), a short printable `sub`, and the verify cache
that must not outlive a token's exp. Pure: no server, no DynamoDB."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from common import caller_auth
from common.caller_auth import (
    AuthNotConfigured,
    Role,
    ServiceToken,
    TokenAuthority,
    TokenNotMintable,
    TokenRefused,
)
from common.config import Settings
from rewardsctl.tokens import dev_tokens_env, mint_token, minting_authority

SECRET = "token-rules-secret-" + "0123456789abcdef" * 2
DAY = 86400


def signed(lifetime_s: int | None = 600, **claims: Any) -> str:
    """A token signed with SECRET, issued now and lasting `lifetime_s`; a claim set to None is left out."""
    now = int(time.time())
    body = {"iss": "rewards", "sub": "caller", "role": "game", "iat": now, "exp": now + (lifetime_s or 0), **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, SECRET, algorithm="HS256")


def lifetime_of(token: str) -> int:
    # Signed with SECRET; its times are what is measured, not judged.
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False})
    return int(claims["exp"] - claims["iat"])


def refusal(authority: TokenAuthority, token: str) -> str:
    with pytest.raises(TokenRefused) as refused:
        authority.verify(token)
    return str(refused.value)


# --- lifetimes -------------------------------------------------------------------------


def test_the_default_maximum_lifetimes_are_90_days_for_game_and_admin_and_an_hour_for_service() -> None:
    settings = Settings()
    assert (
        settings.auth_game_token_max_lifetime_s,
        settings.auth_admin_token_max_lifetime_s,
        settings.auth_service_token_max_lifetime_s,
    ) == (90 * DAY, 90 * DAY, 3600)
    authority = TokenAuthority(SECRET)
    assert [authority.max_lifetime_s(role) for role in (Role.GAME, Role.ADMIN, Role.SERVICE)] == [
        90 * DAY,
        90 * DAY,
        3600,
    ]


@pytest.mark.parametrize(
    "role, longest, variable",
    [
        ("game", 90 * DAY, "REWARDS_AUTH_GAME_TOKEN_MAX_LIFETIME_S"),
        ("admin", 90 * DAY, "REWARDS_AUTH_ADMIN_TOKEN_MAX_LIFETIME_S"),
        ("service", 3600, "REWARDS_AUTH_SERVICE_TOKEN_MAX_LIFETIME_S"),
    ],
)
def test_a_token_may_last_its_roles_maximum_and_not_a_second_more(role: str, longest: int, variable: str) -> None:
    authority = TokenAuthority(SECRET)
    assert authority.verify(signed(longest, role=role, sub="at-the-limit")).role is Role(role)
    assert refusal(authority, signed(longest + 1, role=role)) == (
        f"token lifetime (exp - iat) of {longest + 1}s exceeds the {caller_auth.duration_text(longest)} "
        f"maximum for role {role!r} ({variable}); mint a shorter one"
    )


def test_a_hundred_year_token_is_refused_naming_the_rule() -> None:
    assert refusal(TokenAuthority(SECRET), signed(36500 * DAY, role="admin")) == (
        "token lifetime (exp - iat) of 36500d exceeds the 90d maximum for role 'admin' "
        "(REWARDS_AUTH_ADMIN_TOKEN_MAX_LIFETIME_S); mint a shorter one"
    )


def test_a_token_without_iat_is_refused_since_its_lifetime_is_unknown() -> None:
    assert refusal(TokenAuthority(SECRET), signed(60, iat=None)) == "token lacks the 'iat' claim"


def test_the_maximums_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "REWARDS_AUTH_JWT_SECRET": SECRET,
            "REWARDS_AUTH_GAME_TOKEN_MAX_LIFETIME_S": "7200",
            "REWARDS_AUTH_ADMIN_TOKEN_MAX_LIFETIME_S": "600",
            "REWARDS_AUTH_SERVICE_TOKEN_MAX_LIFETIME_S": "120",
        }
    )
    authority = TokenAuthority.from_settings(settings)
    assert authority is not None
    assert [authority.max_lifetime_s(role) for role in (Role.GAME, Role.ADMIN, Role.SERVICE)] == [7200, 600, 120]
    assert authority.verify(signed(7200)).subject == "caller"
    assert refusal(authority, signed(3 * 3600)) == (
        "token lifetime (exp - iat) of 3h exceeds the 2h maximum for role 'game' "
        "(REWARDS_AUTH_GAME_TOKEN_MAX_LIFETIME_S); mint a shorter one"
    )


@pytest.mark.parametrize("value", ["0", "-60"])
def test_a_maximum_that_is_not_positive_is_a_configuration_error(value: str) -> None:
    settings = Settings.from_env(
        {"REWARDS_AUTH_JWT_SECRET": SECRET, "REWARDS_AUTH_SERVICE_TOKEN_MAX_LIFETIME_S": value}
    )
    with pytest.raises(AuthNotConfigured) as refused:
        TokenAuthority.from_settings(settings)
    assert str(refused.value) == "REWARDS_AUTH_SERVICE_TOKEN_MAX_LIFETIME_S must be a positive number of seconds"


def test_the_authority_does_not_mint_past_a_roles_maximum() -> None:
    authority = TokenAuthority(SECRET)
    assert lifetime_of(authority.mint(Role.SERVICE, "xp", 3600)) == 3600
    with pytest.raises(TokenNotMintable) as refused:
        authority.mint(Role.SERVICE, "xp", 3601)
    assert str(refused.value) == (
        "a service token may last at most 1h (REWARDS_AUTH_SERVICE_TOKEN_MAX_LIFETIME_S); 3601s asked"
    )
    with pytest.raises(TokenNotMintable) as refused:
        authority.mint(Role.GAME, "studio", 100 * DAY)
    assert (
        str(refused.value) == "a game token may last at most 90d (REWARDS_AUTH_GAME_TOKEN_MAX_LIFETIME_S); 100d asked"
    )


# --- the subject -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject, reason",
    [
        ("s" * 129, "token 'sub' claim is 129 characters long; at most 128"),
        ("x" * 10240, "token 'sub' claim is 10240 characters long; at most 128"),
        ("studio\ninjected log line", "token 'sub' claim has a control or invisible character (U+000A) at position 6"),
        ("\x1b[31mred", "token 'sub' claim has a control or invisible character (U+001B) at position 0"),
        ("admin\u202eesrever", "token 'sub' claim has a control or invisible character (U+202E) at position 5"),
        ("", "token 'sub' claim is empty"),
    ],
)
def test_a_long_or_unprintable_subject_is_refused_naming_the_claim(subject: str, reason: str) -> None:
    assert refusal(TokenAuthority(SECRET), signed(sub=subject)) == reason


def test_the_authority_mints_and_accepts_128_printable_characters_but_not_more() -> None:
    authority = TokenAuthority(SECRET)
    subject = "é-studio-" + "a" * 119
    assert len(subject) == 128
    assert authority.verify(authority.mint(Role.GAME, subject, 60)).subject == subject
    with pytest.raises(TokenNotMintable) as refused:
        authority.mint(Role.GAME, "x" * 200, 60)
    assert str(refused.value) == "subject: 'sub' claim is 200 characters long; at most 128"


# --- the verify cache ------------------------------------------------------------------


def test_the_verify_cache_serves_a_token_until_its_exp_and_not_after(monkeypatch: pytest.MonkeyPatch) -> None:
    authority = TokenAuthority(SECRET)
    token = signed(60)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        decoded.append(args[0])
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(caller_auth.jwt, "decode", counting_decode)
    assert authority.verify(token).subject == "caller"
    assert authority.verify(token).subject == "caller"
    assert len(decoded) == 1  # the second call was the cache's
    # Past exp (PyJWT still sees the real clock, so the token itself verifies):
    # the cache no longer answers, a fresh verification does.
    monkeypatch.setattr(caller_auth.time, "time", lambda: exp + 1.0)
    assert authority.verify(token).subject == "caller"
    assert authority.verify(token).subject == "caller"
    assert len(decoded) == 3


def test_a_service_token_over_an_hour_is_refused_each_time_it_is_sent() -> None:
    authority = TokenAuthority(SECRET)
    token = signed(2 * 3600, role="service")
    for _ in range(2):
        assert refusal(authority, token).startswith("token lifetime (exp - iat) of 2h exceeds the 1h maximum")


# --- the services' own tokens ------------------------------------------------------------


def test_a_service_token_fits_the_service_maximum_and_is_renewed_before_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert lifetime_of(ServiceToken(TokenAuthority(SECRET), "xp").metadata()[1].removeprefix("Bearer ")) == 300
    authority = TokenAuthority(SECRET, max_lifetimes_s={Role.GAME: DAY, Role.ADMIN: DAY, Role.SERVICE: 120})
    clock = [1000.0]
    monkeypatch.setattr(caller_auth.time, "monotonic", lambda: clock[0])
    service_token = ServiceToken(authority, "xp")
    first = service_token.metadata()[1].removeprefix("Bearer ")
    assert lifetime_of(first) == 120
    assert authority.verify(first).role is Role.SERVICE
    clock[0] += 120 - 24 - 1  # renewed a fifth of its life (24 s) before it ends
    assert service_token.metadata()[1].removeprefix("Bearer ") == first
    clock[0] += 1
    real_time = time.time
    monkeypatch.setattr(caller_auth.time, "time", lambda: real_time() + 10)  # a later iat, so another token
    renewed = service_token.metadata()[1].removeprefix("Bearer ")
    assert renewed != first and lifetime_of(renewed) == 120


# --- rewardsctl ------------------------------------------------------------------------


def test_rewardsctl_mints_the_default_lifetime_capped_at_the_roles_maximum() -> None:
    authority = minting_authority(Settings(auth_jwt_secret=SECRET))
    assert lifetime_of(mint_token(authority, Role.GAME, "studio", None)) == 12 * 3600
    assert lifetime_of(mint_token(authority, Role.SERVICE, "tool", None)) == 3600
    assert lifetime_of(mint_token(authority, Role.ADMIN, "ops", "90d")) == 90 * DAY


def test_rewardsctl_refuses_to_mint_past_the_maximum_rather_than_shorten_it() -> None:
    authority = minting_authority(Settings(auth_jwt_secret=SECRET, auth_game_token_max_lifetime_s=7 * DAY))
    with pytest.raises(ValueError) as refused:
        mint_token(authority, Role.GAME, "studio", "30d")
    assert str(refused.value) == "a game token may last at most 7d (REWARDS_AUTH_GAME_TOKEN_MAX_LIFETIME_S); 30d asked"


def test_dev_tokens_last_30_days_or_their_roles_maximum_when_shorter() -> None:
    authority = minting_authority(Settings(auth_jwt_secret=SECRET, auth_game_token_max_lifetime_s=7 * DAY))
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in dev_tokens_env(authority, SECRET).splitlines()[1:]
    )
    assert (lifetime_of(exports["REWARDS_GAME_TOKEN"]), lifetime_of(exports["REWARDS_ADMIN_TOKEN"])) == (
        7 * DAY,
        30 * DAY,
    )
