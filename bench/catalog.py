"""What the benchmark measures against: its catalog and its seeded users."""

from __future__ import annotations

from common.periods import DAY

# Awards cycle through the activities (300 XP every 3 awards) and a level takes
# 500 XP, so an award levels its user up about one time in five (until level
# 20); an unlock pays 20 XP, so about one time in 25.
ACTIVITIES = (("bench-quest", 100), ("bench-play", 50), ("bench-win", 150))
LEVEL_STEP_XP = 500
LEVEL_COUNT = 20
# Unlocks take the achievements in order, a new user after the last one.
ACHIEVEMENT_COUNT = 64
ACHIEVEMENT_XP = 20
# Awards go AWARDS_PER_USER at a time to a user of the client's own, then to a
# new one: the mix of new users, level-ups and plain awards is the same
# whatever the throughput.
AWARDS_PER_USER = 20
# Users with progress for GetProgress and CheckLevelUp: each granted SEED_XP,
# so at level 6 with 5 levels' rewards; nothing more is due for them.
SEED_USERS = 128
SEED_XP = 2600


def achievement_ids() -> tuple[str, ...]:
    return tuple(f"bench-ach-{i:02d}" for i in range(ACHIEVEMENT_COUNT))


def seeded_user(index: int) -> str:
    return f"bench-seeded-{index % SEED_USERS:04d}"


# The counted stage (the award_xp_counted cases; bench/cluster.py start_stage):
# an activity with a category of its own, counted by auto_unlock achievements at
# tiers a user's AWARDS_PER_USER awards cross. It gives what the plain cases'
# activities give on average (100 XP), so its users level up as often, plus the
# tiers' rewards. Its catalog lives under a table prefix and services of its
# own: any auto_unlock rule in the shared catalog would have every new user's
# first award evaluated, and the plain cases would no longer measure what they do.
COUNTED_STAGE = "counted"
COUNTED_ACTIVITY = ("bench-counted", 100)
COUNTED_CATEGORY = "bench-counted-category"
# (awards of COUNTED_ACTIVITY, xp_reward): each user's 20 awards are its first
# evaluation (award 1), the two tiers' unlocks (awards 5 and 15), and 17 plain
# counted awards.
COUNTED_TIERS = ((5, 50), (15, 50))


def counted_achievement_ids() -> tuple[str, ...]:
    return tuple(f"bench-counted-{awards}" for awards, _ in COUNTED_TIERS)


# The streak stage (the award_xp_streak cases): an activity that one daily
# streak counts (by its activity id), so that each award's transaction also adds
# the day to the user's run and its read is a BatchGetItem of the progress item
# and the run. The same XP as the plain activities' average (100), so its users
# level up as often. A stage of its own, as the counted cases': with any streak
# in the shared catalog, every GetProgress would also read the user's runs (a
# Query), and the plain cases would no longer measure what they do. The period is
# a day: every award of a run falls on the same day (two at most across
# midnight), so the run's set never grows to a fold (common.streaks.FOLD_AT).
STREAK_STAGE = "streak"
STREAK_ACTIVITY = ("bench-streak", 100)
STREAK_CATEGORY = "bench-streak-category"
STREAK_ID = "bench-streak-daily"
STREAK_PERIOD = DAY
