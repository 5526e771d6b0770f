"""Level use cases over the repository."""

from __future__ import annotations

import uuid

from common.errors import ContentionExhausted
from common.metrics import LEVEL_UPS
from common.models import Level, LevelTable, LevelUpOutcome, ProgressRecord
from levels_service.domain import LevelCheck, LevelUpPlan, check_level, plan_level_up
from levels_service.storage import LevelChangedConcurrently, LevelsRepository

# Each lost race means another check raised the level, so a few suffice.
_MAX_LOST_RACES = 50


class Levels:
    def __init__(self, repository: LevelsRepository, level_table_cache_s: float = 0.0) -> None:
        self._repository = repository
        self._level_table_cache_s = level_table_cache_s

    def put_level(self, level: Level) -> Level:
        self._repository.put_level(check_level(level))
        return level

    def list_levels(self) -> LevelTable:
        return self._repository.load_level_table()

    def delete_level(self, level: int) -> None:
        self._repository.delete_level(level)

    def check_level_up(self, user_id: str, request_id: str = "") -> LevelUpOutcome:
        """Grants every level now due, exactly once, and reports them. A level-up
        belongs to the request that made it: a repeat of that request_id reports
        the same levels again and grants nothing more, so every answer for one
        request_id is the same; levels due since are left to the next check."""
        # Most checks find nothing due: they may answer from a recent copy of
        # the table. Whatever grants or pins a level uses the table as it is now.
        recent = self._repository.recent_level_table(self._level_table_cache_s)
        table = recent or self._repository.load_level_table()
        fresh = recent is None
        check_id = request_id or f"auto:{uuid.uuid4().hex}"
        granted: list[LevelUpPlan] = []
        lost_races = 0
        while True:
            if request_id:
                progress, earlier = self._repository.get_progress_and_check(user_id, request_id)
                # Also after a lost race: a concurrent copy of this request may have granted it.
                if earlier is not None and not granted:
                    return self._replay(user_id, earlier, progress, table)
            else:
                progress = self._repository.get_progress(user_id)
            plan = plan_level_up(table, progress.level, progress.total_xp)
            if not fresh and (plan.leveled_up or (progress.level is None and progress.updated_at is not None)):
                table, fresh = self._repository.load_level_table(), True
                plan = plan_level_up(table, progress.level, progress.total_xp)
            if not plan.leveled_up:
                if not granted and progress.level is None and progress.updated_at is not None:
                    self._repository.store_start_level_once(user_id, plan.current_level)
                # Recorded, so that a repeat of this request reports what this check found (nothing) and
                # levels that become due later go to the next new check, not to a repeat of this one.
                if request_id and not granted and progress.updated_at is not None:
                    if not self._repository.record_nothing_due_once(user_id, request_id, plan.current_level):
                        continue  # a concurrent copy of this request granted first: report what it granted
                return self._outcome(user_id, progress, table, granted or [plan])
            step = plan.first_step()
            try:
                self._repository.grant_level_rewards_once(
                    user_id,
                    progress.level,
                    step,
                    table.xp_required(step.current_level),
                    check_id,
                    record_check=bool(request_id),
                )
                granted.append(step)
                LEVEL_UPS.inc(len(step.passed))
            except LevelChangedConcurrently:
                lost_races += 1
                if lost_races > _MAX_LOST_RACES:
                    raise ContentionExhausted(f"level of user {user_id!r} kept changing; retry CheckLevelUp") from None

    def _outcome(
        self, user_id: str, progress: ProgressRecord, table: LevelTable, steps: list[LevelUpPlan]
    ) -> LevelUpOutcome:
        current = max(steps[-1].current_level, progress.level or 0)
        return LevelUpOutcome(
            user_id=user_id,
            leveled_up=any(s.leveled_up for s in steps),
            previous_level=steps[0].previous_level,
            current_level=current,
            total_xp=progress.total_xp,
            rewards=tuple(r for s in steps for r in s.rewards),
            next_level_xp=table.next_level_xp(current),
        )

    def _replay(self, user_id: str, earlier: LevelCheck, progress: ProgressRecord, table: LevelTable) -> LevelUpOutcome:
        reached = self._repository.levels_reached(user_id, earlier.levels) if earlier.levels else []
        current = max([progress.level or table.start_level, *earlier.levels])
        return LevelUpOutcome(
            user_id=user_id,
            leveled_up=bool(earlier.levels),
            # A check that found nothing due answers as it did: no level-up, at the level the user is at.
            previous_level=earlier.previous_level if earlier.levels else current,
            current_level=current,
            total_xp=progress.total_xp,
            rewards=tuple(reward for r in reached for reward in r.rewards),
            next_level_xp=table.next_level_xp(current),
        )
