"""Level use cases over the repository."""
from __future__ import annotations

from common.errors import ContentionExhausted
from common.models import LevelUpOutcome, Reward
from levels_service.domain import Level, LevelTable, plan_level_up
from levels_service.storage import LevelChangedConcurrently, LevelsRepository

# Each lost race means another caller raised the level, so a few re-reads suffice.
_MAX_LEVEL_RACES = 50


class Levels:
    def __init__(self, repository: LevelsRepository) -> None:
        self._repository = repository

    def put_level(self, level: Level) -> Level:
        self._repository.put_level(level)
        return level

    def list_levels(self) -> LevelTable:
        return self._repository.load_level_table()

    def delete_level(self, level: int) -> None:
        self._repository.delete_level(level)

    def check_level_up(self, user_id: str) -> LevelUpOutcome:
        for _ in range(_MAX_LEVEL_RACES):
            table = self._repository.load_level_table()
            progress = self._repository.get_progress(user_id)
            plan = plan_level_up(table, progress.level, progress.total_xp)
            outcome = LevelUpOutcome(
                user_id=user_id,
                leveled_up=plan.leveled_up,
                previous_level=plan.previous_level,
                current_level=plan.current_level,
                total_xp=progress.total_xp,
                rewards=tuple(Reward(r.reward_id, r.quantity) for r in plan.rewards),
                next_level_xp=table.next_level_xp(plan.current_level),
            )
            if not plan.leveled_up:
                return outcome
            try:
                self._repository.grant_level_rewards_once(
                    user_id,
                    expected_level=progress.level,
                    new_level=plan.current_level,
                    min_total_xp=table.xp_required(plan.current_level),
                    rewards=plan.rewards,
                )
                return outcome
            except LevelChangedConcurrently:
                continue
        raise ContentionExhausted(f"level of user {user_id!r} kept changing; retry CheckLevelUp")
