"""A game server's side of rewards, with the typed stubs: award XP when a match
ends, unlock an achievement, and show the player's progress and level-ups.

    python examples/game_server.py --user alice --activity win-match --achievement first-win

Targets default to the local cluster (`make up`), and the token to
REWARDS_GAME_TOKEN (`. .local/dev-auth.env`); see --help.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

import grpc

from rewards.v1 import achievements_pb2, achievements_pb2_grpc, levels_pb2, xp_pb2, xp_pb2_grpc


def describe_level_up(level_up: levels_pb2.LevelUpResult) -> str:
    if not level_up.leveled_up:
        return f"level {level_up.current_level} (next at {level_up.next_level_xp} XP)"
    rewards = ", ".join(f"{r.quantity} x {r.reward_id}" for r in level_up.rewards) or "no rewards"
    return f"LEVEL UP {level_up.previous_level} -> {level_up.current_level}: {rewards}"


Metadata = tuple[tuple[str, str], ...]


def finish_match(
    xp: xp_pb2_grpc.XpServiceStub, user_id: str, activity_id: str, match_id: str, metadata: Metadata
) -> xp_pb2.AwardXpResponse:
    # The match id is the request id: if this call is retried (timeout, crash), the XP still counts once.
    request = xp_pb2.AwardXpRequest(user_id=user_id, activity_id=activity_id, request_id=f"match:{match_id}")
    response: xp_pb2.AwardXpResponse = xp.AwardXp(request, timeout=5, metadata=metadata)
    return response


def unlock(
    achievements: achievements_pb2_grpc.AchievementsServiceStub, user_id: str, achievement_id: str, metadata: Metadata
) -> achievements_pb2.UnlockAchievementResponse | None:
    try:
        response: achievements_pb2.UnlockAchievementResponse = achievements.UnlockAchievement(
            achievements_pb2.UnlockAchievementRequest(user_id=user_id, achievement_id=achievement_id),
            timeout=10,
            metadata=metadata,
        )
        return response
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION:  # requirements not met yet: not an error for a game
            print(f"  not yet: {error.details()}")
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xp", default="localhost:50051", help="XpService address")
    parser.add_argument("--achievements", default="localhost:50052", help="AchievementsService address")
    parser.add_argument("--user", required=True)
    parser.add_argument("--activity", required=True, help="activity awarded at the end of each match")
    parser.add_argument("--achievement", required=True, help="achievement unlocked after the matches")
    parser.add_argument("--matches", type=int, default=3)
    parser.add_argument(
        "--token", default=os.environ.get("REWARDS_GAME_TOKEN", ""), help="a `game` token (default: REWARDS_GAME_TOKEN)"
    )
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("no token: pass --token or set REWARDS_GAME_TOKEN (`. .local/dev-auth.env` after `make up`)")

    # Every call carries the game server's token. (Over TLS, grpc.access_token_call_credentials does the same.)
    authorization: Metadata = (("authorization", f"Bearer {args.token}"),)
    with grpc.insecure_channel(args.xp) as xp_channel, grpc.insecure_channel(args.achievements) as achievements_channel:
        xp = xp_pb2_grpc.XpServiceStub(xp_channel)
        achievements = achievements_pb2_grpc.AchievementsServiceStub(achievements_channel)
        for _ in range(args.matches):
            award = finish_match(xp, args.user, args.activity, uuid.uuid4().hex, authorization)
            print(f"match: +{award.xp_awarded} XP, total {award.total_xp}, {describe_level_up(award.level_up)}")
        unlocked = unlock(achievements, args.user, args.achievement, authorization)
        if unlocked is not None:
            state = "already unlocked" if unlocked.already_unlocked else "unlocked"
            print(
                f"achievement {unlocked.achievement.name!r} {state}: +{unlocked.xp_awarded} XP, total {unlocked.total_xp}"
            )
        progress: xp_pb2.UserProgress = xp.GetProgress(
            xp_pb2.GetProgressRequest(user_id=args.user), timeout=5, metadata=authorization
        )
        print(
            f"progress: {progress.total_xp} XP, level {progress.level}, "
            f"achievements {list(progress.unlocked_achievements)}, "
            f"rewards {[(r.reward_id, r.quantity) for r in progress.rewards]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
