"""Level use cases: the level table, and level-ups granted exactly once."""

from __future__ import annotations

import asyncio
import uuid

from common.errors import ContentionExhausted, InvalidField
from common.metrics import LEVEL_UPS
from common.models import Level, LevelReached, LevelTable, LevelUpOutcome, ProgressRecord, reward_totals
from common.rpc_deadline import remaining_s
from levels_service.domain import (
    AUTO_CHECK_PREFIX,
    MAX_LEVEL,
    LevelChangedConcurrently,
    LevelCheck,
    LevelsRepository,
    LevelTableChanged,
    LevelUpPlan,
    check_level,
    check_reward_ids,
    plan_level_up,
)

_REPEAT_POLL_S = 0.05
# Each lost race means another check raised the level (or the table moved), so a few suffice.
_MAX_LOST_RACES = 50


class Levels:
    def __init__(self, repository: LevelsRepository, repeat_wait_s: float = 1.0) -> None:
        self._repository = repository
        # How long a replaying repeat waits for a level-up that its first call may still be making.
        self._repeat_wait_s = repeat_wait_s

    async def put_level(self, level: Level) -> Level:
        """Written against the table version its reward-id count was checked on."""
        checked = check_level(level)
        table = await self._repository.level_table()
        for _ in range(_MAX_LOST_RACES):
            check_reward_ids(table.table, checked)
            try:
                await self._repository.put_level(checked, table.version)
                return checked
            except LevelTableChanged:
                table = await self._repository.level_table_at_least(table.version + 1)
        raise ContentionExhausted("the level table kept changing; retry the PutLevel")

    async def list_levels(self, page_size: int, page_token: str) -> tuple[tuple[Level, ...], str]:
        """One page of the table as this process holds it, in level order; the token is the page's last level."""
        after = _level_after(page_token)
        rest = [level for level in (await self._repository.level_table()).table.levels if level.level > after]
        page = tuple(rest[:page_size])
        return page, str(page[-1].level) if len(rest) > page_size else ""

    async def list_levels_reached(
        self, user_id: str, page_size: int, page_token: str
    ) -> tuple[list[LevelReached], str]:
        """One page of the levels a user passed, in level order; the token is the page's last level."""
        after = _level_after(page_token)
        reached, more = await self._repository.levels_reached_page(user_id, page_size, after)
        return reached, str(reached[-1].level) if more and reached else ""

    async def delete_level(self, level: int) -> None:
        await self._repository.delete_level(level)

    async def check_level_up(self, user_id: str, request_id: str = "", replay_only: bool = False) -> LevelUpOutcome:
        """Grants every level now due, exactly once, and reports them. A level-up
        belongs to the request that made it: a repeat of that request_id reports
        the same level-up again and grants nothing more. A level-up too long for
        one transaction fixes its target in its first step, and any later check
        completes it before anything else, so every answer for the request that
        made it reports the whole of it, wherever deadlines fell."""
        check_id = request_id or f"{AUTO_CHECK_PREFIX}{uuid.uuid4().hex}"
        own_steps: list[LevelUpPlan] = []
        lost_races = 0
        waited_s = 0.0
        while True:
            versioned = await self._repository.level_table()
            if request_id:
                progress, earlier = await self._repository.get_progress_and_check(user_id, request_id)
            else:
                progress, earlier = await self._repository.get_progress(user_id), None
            if progress.level_version is not None and progress.level_version > versioned.version:
                versioned = await self._repository.level_table_at_least(progress.level_version)
            table = versioned.table
            try:
                if progress.pending_check is not None and progress.level is not None:
                    # A level-up under way, this check's or another's: it is completed first.
                    step = await self._continue(user_id, progress, versioned.version, table)
                    if progress.pending_check == check_id:
                        own_steps.append(step)
                    continue
                if earlier is not None:
                    return await self._replay(user_id, earlier, progress, table)
                plan = plan_level_up(table, progress.level, progress.total_xp)
                if replay_only and (not plan.leveled_up or progress.deferred_check not in (None, request_id)):
                    # Nothing recorded and nothing due (or the due level is a deferred award's, for its
                    # retry): the first check found nothing, or has not decided and will find nothing.
                    current = progress.level if progress.level is not None else table.start_level
                    return LevelUpOutcome(
                        user_id, False, current, current, progress.total_xp, (), table.next_level_xp(current)
                    )
                left = remaining_s()
                wait_s = self._repeat_wait_s if left is None else min(self._repeat_wait_s, left - 0.5)
                if replay_only and waited_s < wait_s:
                    # A level is due and nothing is recorded: the first check may still be running (a
                    # concurrent copy of the request), or another award's check is about to grant it.
                    # Wait for either; past the wait, this check does what a first check would.
                    await asyncio.sleep(_REPEAT_POLL_S)
                    waited_s += _REPEAT_POLL_S
                    continue
                if not plan.leveled_up:
                    if own_steps:
                        return self._outcome(user_id, progress, table, own_steps)
                    if progress.updated_at is not None and (
                        progress.level_version != versioned.version
                        or progress.next_level_xp != table.next_level_xp(plan.current_level)
                        or progress.level is None
                    ):
                        # Pins the start level of a new user, and the next threshold under this table.
                        pinned = await self._repository.pin_threshold(
                            user_id,
                            progress.level,
                            plan.current_level,
                            table.next_level_xp(plan.current_level),
                            versioned.version,
                        )
                        if not pinned:
                            raise LevelChangedConcurrently(user_id)
                    # A named check that found nothing due is recorded, so that its repeats answer the same
                    # and levels due later go to the next new check. The award path names a check only
                    # when a level-up may be due, or on a repeat: an award with nothing due records nothing.
                    if request_id and progress.updated_at is not None:
                        if not await self._repository.record_nothing_due_once(user_id, request_id, plan.current_level):
                            raise LevelChangedConcurrently(user_id)  # a copy of this request granted first
                    return self._outcome(user_id, progress, table, [plan])
                step = plan.first_step()
                await self._repository.grant_level_step(
                    user_id,
                    step,
                    owner=check_id,
                    target_level=plan.current_level,
                    min_total_xp=table.xp_required(plan.current_level),
                    next_level_xp=table.next_level_xp(plan.current_level),
                    version=versioned.version,
                    continuing=False,
                )
                LEVEL_UPS.inc(len(step.passed))
                own_steps.append(step)
                if step.current_level == plan.current_level:
                    return self._outcome(user_id, progress, table, own_steps, granted_now=True)
            except LevelTableChanged:
                await self._repository.level_table_at_least(versioned.version + 1)
                lost_races += 1
            except LevelChangedConcurrently:
                lost_races += 1
            if lost_races > _MAX_LOST_RACES:
                raise ContentionExhausted(f"level of user {user_id!r} kept changing; retry CheckLevelUp")

    async def _continue(self, user_id: str, progress: ProgressRecord, version: int, table: LevelTable) -> LevelUpPlan:
        """The next step of the level-up under way."""
        assert progress.level is not None and progress.pending_check is not None
        target = progress.pending_target or progress.level
        whole = LevelUpPlan(progress.level, target, table.levels_passed(progress.level, target))
        step = whole.first_step()
        await self._repository.grant_level_step(
            user_id,
            step,
            owner=progress.pending_check,
            target_level=target,
            min_total_xp=0,
            next_level_xp=table.next_level_xp(target),
            version=version,
            continuing=True,
        )
        LEVEL_UPS.inc(len(step.passed))
        return step

    def _outcome(
        self,
        user_id: str,
        progress: ProgressRecord,
        table: LevelTable,
        steps: list[LevelUpPlan],
        granted_now: bool = False,
    ) -> LevelUpOutcome:
        current = steps[-1].current_level if granted_now else max(steps[-1].current_level, progress.level or 0)
        return LevelUpOutcome(
            user_id=user_id,
            leveled_up=any(s.leveled_up for s in steps),
            previous_level=steps[0].previous_level,
            current_level=current,
            total_xp=progress.total_xp,
            rewards=reward_totals(r for s in steps for r in s.rewards),
            next_level_xp=table.next_level_xp(current),
        )

    async def _replay(
        self, user_id: str, earlier: LevelCheck, progress: ProgressRecord, table: LevelTable
    ) -> LevelUpOutcome:
        reached = await self._repository.levels_reached(user_id, earlier.levels) if earlier.levels else []
        current = max([progress.level or table.start_level, earlier.target_level, *earlier.levels])
        return LevelUpOutcome(
            user_id=user_id,
            leveled_up=bool(earlier.levels),
            # A check that found nothing due answers as it did: no level-up, at the level the user is at.
            previous_level=earlier.previous_level if earlier.levels else current,
            current_level=current,
            total_xp=progress.total_xp,
            rewards=reward_totals(reward for r in reached for reward in r.rewards),
            next_level_xp=table.next_level_xp(current),
        )


def _level_after(page_token: str) -> int:
    if not page_token:
        return 0
    # Checked before int(): Python refuses to parse more than 4,300 digits.
    if (
        not (page_token.isascii() and page_token.isdigit() and len(page_token) <= 7)
        or not 1 <= int(page_token) <= MAX_LEVEL
    ):
        raise InvalidField("page_token", "is not a token this listing issued")
    return int(page_token)
