"""Achievement use cases: the catalog and exactly-once unlocks."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace

from achievements_service.domain import (
    Achievement,
    AchievementChanged,
    AchievementNotFound,
    AchievementsRepository,
    AlreadyUnlocked,
    Requirements,
    RequirementsNotHeld,
    RequirementsNotMet,
    RewardPaidBefore,
    Unlock,
    check_achievement,
    new_unlock,
    unmet_requirements,
)
from common.auto_unlock import (
    AutoRule,
    DueUnlocks,
    Standing,
    WatchOutdated,
    auto_unlock_may_be_due,
    shown_id,
    watches_for,
)
from common.errors import ContentionExhausted, DomainError, PreconditionFailed
from common.level_check import LevelChecker, check_level_after_xp
from common.metrics import UNLOCKS, XP_AWARDED
from common.models import (
    ACHIEVEMENT,
    MAX_TOTAL_XP,
    LevelUpOutcome,
    TotalXpLimitReached,
    level_ups_joined,
    utc_now_iso,
)

# Catalog changes racing one unlock: each costs a re-read, and they are rare.
_MAX_CATALOG_REREADS = 5
# An evaluation unlocks what is due, reads again (a reward may complete another
# rule: a chain takes a round a link), and ends when a round unlocks nothing
# and its watches are written. Past this many rounds it stops, leaving the
# user's watches as they were, so that the next award evaluates again.
_MAX_EVALUATION_ROUNDS = 20

log = logging.getLogger("rewards.auto_unlock")


def _completable_by(rule: AutoRule, unlocked: Mapping[str, object]) -> bool:
    """Whether these unlocks (their records, their rewards' XP and level-ups) may complete `rule`."""
    needs = rule.requirements
    return bool(set(needs.required_achievements) & set(unlocked)) or bool(needs.min_total_xp or needs.min_level)


class NotAnAutoUnlock(PreconditionFailed):
    def __init__(self, index: int, achievement_id: str) -> None:
        super().__init__(
            f"achievement_ids[{index}]: {shown_id(achievement_id)!r} is not an auto_unlock achievement of the catalog",
            [(f"achievement_ids[{index}]", "not an auto_unlock achievement of the catalog")],
        )


class NotAutoUnlock(Exception):
    """The catalog entry an auto unlock was about to use is no longer auto_unlock (nothing was written)."""


@dataclass(frozen=True)
class UnlockOutcome:
    achievement: Achievement
    already_unlocked: bool
    # XP this call paid: the reward for exactly one call per unlock, 0 for the others.
    xp_awarded: int
    total_xp: int
    level_up: LevelUpOutcome | None
    # Auto-unlock achievements this unlock completed (and those their rewards did in turn).
    also_unlocked: tuple[str, ...] = ()
    # What it completed could not be evaluated: a repeat lists also_unlocked.
    also_unlocked_deferred: bool = False


@dataclass(frozen=True)
class Criterion:
    description: str
    current: int
    target: int


@dataclass(frozen=True)
class AchievementProgress:
    achievement: Achievement  # a hidden one the user lacks comes without name and description, unless revealed
    unlock: Unlock | None
    percent: float
    criteria: tuple[Criterion, ...]
    unlock_rate: float


@dataclass(frozen=True)
class AchievementStats:
    achievement_id: str
    unlocked_count: int
    players: int

    @property
    def unlock_rate(self) -> float:
        # Users are counted as players just after their first XP: a moment's lag is not a rate over 1.
        return min(1.0, self.unlocked_count / self.players) if self.players else 0.0


def criteria_of(achievement: Achievement, standing: Standing) -> tuple[Criterion, ...]:
    """One criterion per requirement, in the order the API lists them."""
    needs = achievement.requirements
    criteria = [Criterion(c.describe(), standing.count(c.counter), c.count) for c in needs.activity_counts]
    criteria.extend(Criterion(s.describe(), standing.count(s.counter), s.length) for s in needs.streak_lengths)
    if needs.min_total_xp:
        criteria.append(Criterion("total XP", standing.total_xp, needs.min_total_xp))
    if needs.min_level:
        criteria.append(Criterion("level", standing.level, needs.min_level))
    criteria.extend(
        Criterion(f"achievement {a!r} unlocked", int(a in standing.unlocked), 1) for a in needs.required_achievements
    )
    return tuple(criteria)


def percent_of(criteria: tuple[Criterion, ...], unlocked: bool) -> float:
    """100 once unlocked; otherwise each criterion's share met (capped at its
    target), averaged: an achievement with no requirements is 100."""
    if unlocked or not criteria:
        return 100.0
    return 100.0 * sum(min(c.current, c.target) / c.target for c in criteria) / len(criteria)


@dataclass(frozen=True)
class UserAchievementView:
    unlock: Unlock
    achievement: Achievement | None


class Achievements:
    def __init__(self, repository: AchievementsRepository, levels: LevelChecker) -> None:
        self._repository = repository
        self._levels = levels

    # --- catalog ------------------------------------------------------------------

    async def put_achievement(self, achievement: Achievement) -> Achievement:
        return await self._repository.put_achievement(check_achievement(achievement))

    async def get_achievement(self, achievement_id: str) -> Achievement:
        return await self._repository.get_achievement(achievement_id)

    async def list_achievements(self, page_size: int, page_token: str) -> tuple[list[Achievement], str]:
        return await self._repository.list_achievements(page_size, page_token)

    async def delete_achievement(self, achievement_id: str) -> None:
        await self._repository.delete_achievement(achievement_id)

    # --- unlocks ------------------------------------------------------------------

    async def unlock_achievement(self, user_id: str, achievement_id: str, request_id: str) -> UnlockOutcome:
        """The common path is two DynamoDB calls and no gRPC hop: one
        transaction writes the unlock and pays its reward, against this
        process's copy of the catalog entry (checked in the transaction), then
        the progress read says whether a level-up may be due. With auto-unlock
        rules in the catalog, the user is then evaluated under the unlock's
        own name, so that a repeat lists the same achievements."""
        outcome = await self._unlock_once(user_id, achievement_id, request_id)
        rules = await self._repository.auto_rules()
        if not rules.rules:
            return outcome
        # A repeat lists what its original completed; a new unlock may complete a rule that requires it,
        # or its reward may reach a watched threshold.
        if not (outcome.already_unlocked or achievement_id in rules.required):
            if not outcome.xp_awarded:
                return outcome
            record = await self._repository.get_progress(user_id)
            level = outcome.level_up.current_level if outcome.level_up else (record.level or 0)
            if not auto_unlock_may_be_due(rules, record, level, {}):
                return outcome
        try:
            due = await self.unlock_due_achievements(user_id, f"unlock#{achievement_id}")
        except DomainError as passing:  # contention, DynamoDB unavailable: the unlock itself is done
            log.warning(
                "auto-unlock evaluation after an unlock left to the next award",
                extra={"fields": {"user_id": user_id, "error": str(passing)}},
            )
            await self._repository.forget_auto_watches(user_id)
            return replace(outcome, also_unlocked_deferred=True)
        return replace(
            outcome,
            also_unlocked=due.unlocked,
            total_xp=max(outcome.total_xp, due.total_xp),
            level_up=level_ups_joined([outcome.level_up, due.level_up]) or outcome.level_up,
        )

    async def _unlock_once(
        self, user_id: str, achievement_id: str, request_id: str, rule: AutoRule | None = None, trigger: str = ""
    ) -> UnlockOutcome:
        """With `rule`, an auto unlock: made only from an entry that is
        auto_unlock (NotAutoUnlock otherwise), read again when this process's
        copy is not the revision the rule was read at."""
        paid_before: int | None = None
        for _ in range(_MAX_CATALOG_REREADS):
            try:
                achievement = await self._repository.cached_achievement(achievement_id)
                if rule is not None and achievement.revision != rule.revision:
                    achievement = await self._repository.get_achievement(achievement_id)
                if rule is not None and not achievement.auto_unlock:
                    raise NotAutoUnlock(achievement_id)
            except AchievementNotFound:
                earlier = await self._repository.get_unlock(user_id, achievement_id)
                if earlier is None:
                    raise
                # Answered from the unlock record, so owed XP is paid even after the achievement left the catalog.
                return await self._repeat(Achievement(achievement_id, name="", xp_reward=earlier.xp_reward), earlier)
            try:
                return await self._record_once(
                    user_id, achievement, request_id, paid_before=paid_before, trigger=trigger
                )
            except AchievementChanged:
                continue  # the catalog changed since this process read it: read it again
            except RewardPaidBefore as paid:
                # A GrantXp naming this achievement paid it before any unlock: unlock it without paying twice.
                paid_before = paid.paid_xp
        raise ContentionExhausted(f"achievement {achievement_id!r} kept changing; retry the unlock")

    async def _record_once(
        self,
        user_id: str,
        achievement: Achievement,
        request_id: str,
        *,
        paid_before: int | None = None,
        trigger: str = "",
    ) -> UnlockOutcome:
        """Raises AchievementChanged and RewardPaidBefore for the caller's loop."""
        unlock = new_unlock(user_id, achievement, request_id, utc_now_iso(), trigger)
        if paid_before is not None:  # the unlock records what was paid, and pays nothing
            unlock = replace(unlock, xp_reward=paid_before)
        payment = unlock.payment() if paid_before is None and unlock.xp_reward else None
        start_level = await self._repository.start_level() if achievement.requirements.min_level else 0
        try:
            await self._repository.record_unlock_once(unlock, achievement, start_level, payment)
        except AlreadyUnlocked as earlier:
            if earlier.unlock.attempt_id != unlock.attempt_id:  # not our own write retried after a lost answer
                return await self._repeat(achievement, earlier.unlock)
        except RequirementsNotHeld:
            needs = achievement.requirements
            progress, held, counts = await asyncio.gather(
                self._repository.get_progress(user_id),
                self._repository.unlocked_among(user_id, needs.required_achievements),
                self._repository.counts_of(user_id, tuple(c.counter for c in needs.counted())),
            )
            if payment is not None and progress.total_xp + payment.xp > MAX_TOTAL_XP:
                raise TotalXpLimitReached(user_id, payment.xp) from None
            level = progress.level if progress.level is not None else start_level
            standing = Standing(held, progress.total_xp, level, counts)
            unmet = unmet_requirements(achievement.requirements, standing)
            raise RequirementsNotMet(
                achievement.achievement_id, unmet or [("progress", "changed while unlocking; retry")]
            ) from None
        UNLOCKS.inc()
        if payment is None:
            progress = await self._repository.get_progress(user_id)
            return UnlockOutcome(achievement, False, 0, progress.total_xp, None)
        return await self._after_payment(achievement, unlock, True, already_unlocked=False)

    async def _repeat(self, achievement: Achievement, earlier: Unlock) -> UnlockOutcome:
        """A repeat reports neither XP nor a level-up, except where it pays XP
        that an unlock recorded by an earlier version still owes."""
        if earlier.owes_xp:
            paid = await self._repository.pay_owed_unlock_once(earlier, marker=uuid.uuid4().hex)
            if paid is not None:
                return await self._after_payment(
                    achievement, replace(earlier, xp_reward=paid.xp), paid.by_this_call, True
                )
        progress = await self._repository.get_progress(earlier.user_id)
        return UnlockOutcome(achievement, True, 0, progress.total_xp, None)

    async def _after_payment(
        self, achievement: Achievement, unlock: Unlock, counted: bool, already_unlocked: bool
    ) -> UnlockOutcome:
        if counted:  # not when an earlier version's GrantXp wrote (and counted) the entry
            XP_AWARDED.labels(ACHIEVEMENT).inc(unlock.xp_reward)
        entry_id = unlock.payment().entry_id
        record = await self._repository.get_progress(unlock.user_id)
        level = await check_level_after_xp(
            self._repository, self._levels, unlock.user_id, entry_id, entry_id, record=record
        )
        if record.total_xp > 0 and not record.player_counted:
            await self._repository.count_player_once(unlock.user_id)
        return UnlockOutcome(achievement, already_unlocked, unlock.xp_reward, level.total_xp, level.level_up)

    # --- auto unlocks ---------------------------------------------------------------

    async def unlock_due_achievements(
        self, user_id: str, trigger_id: str, only: tuple[str, ...] = (), dry_run: bool = False
    ) -> DueUnlocks:
        """Unlocks, once each, every auto-unlock achievement (of `only`, when
        given) whose requirements the user meets, round after round while
        rewards complete more, each recorded under `trigger_id`; then leaves
        the user's watches (common.auto_unlock) for the rules the user still
        lacks. Lists every unlock recorded under `trigger_id`, so that a
        repeat of what asked lists them again."""
        rules = await self._repository.auto_rules()
        unknown = set(only) - {r.achievement_id for r in rules.rules}
        if unknown:  # put a moment ago, through another replica? Read the rules now.
            rules = await self._repository.auto_rules(fresh=True)
            missing = [a for a in only if a not in {r.achievement_id for r in rules.rules}]
            if missing:
                raise NotAnAutoUnlock(only.index(missing[0]), missing[0])
        targets = [r for r in rules.rules if not only or r.achievement_id in only]
        looked_up = tuple(
            dict.fromkeys(
                [r.achievement_id for r in rules.rules]
                + [a for r in targets for a in r.requirements.required_achievements]
            )
        )
        unlocked_here: dict[str, LevelUpOutcome | None] = {}  # made by this call, with their level checks
        for _ in range(_MAX_EVALUATION_ROUNDS):
            progress, counters, held = await self._repository.auto_standing(user_id, looked_up)
            level = progress.level if progress.level is not None else await self._repository.start_level()
            standing = Standing(
                frozenset(held), progress.total_xp, level, {c.counter: c.awards for c in counters.values()}
            )
            due = [
                r for r in targets if r.achievement_id not in held and not unmet_requirements(r.requirements, standing)
            ]
            if dry_run:
                return DueUnlocks((), progress.total_xp, level, tuple(r.achievement_id for r in due))
            newly = [made for made in [await self._unlock_due_once(user_id, rule, trigger_id) for rule in due] if made]
            if newly:
                unlocked_here.update(newly)
                if only:  # follow the chain they start: the rules they, or their rewards, may complete
                    targets += [r for r in rules.rules if r not in targets and _completable_by(r, unlocked_here)]
                continue  # their rewards may complete more: read again
            if progress.total_xp > 0 and not progress.player_counted:  # XP an earlier version recorded
                await self._repository.count_player_once(user_id)
            if not only:
                watches = watches_for(targets, frozenset(held), standing, rules.fingerprint)
                unwatched = tuple(c.counter for c in counters.values() if c.watch_at is not None)
                try:
                    marks = {c.counter: c.streak_mark for c in counters.values() if c.streak_mark is not None}
                    written = await self._repository.write_watches(
                        user_id, watches, unwatched, await self._repository.start_level(), marks
                    )
                except WatchOutdated:
                    continue  # an award met a watched requirement meanwhile: evaluate again
                if not written:  # too many to watch: every award of the user asks
                    await self._repository.forget_auto_watches(user_id)
            earlier = {a: u for a, u in held.items() if u.trigger == trigger_id and a not in unlocked_here}
            level_up = await self._level_ups_of(user_id, unlocked_here, earlier)
            return DueUnlocks(tuple(sorted({*earlier, *unlocked_here})), progress.total_xp, level, (), level_up)
        log.warning(
            "auto-unlock evaluation stopped", extra={"fields": {"user_id": user_id, "rounds": _MAX_EVALUATION_ROUNDS}}
        )
        await self._repository.forget_auto_watches(user_id)  # the next award of the user evaluates again
        progress = await self._repository.get_progress(user_id)
        level = progress.level if progress.level is not None else await self._repository.start_level()
        level_up = await self._level_ups_of(user_id, unlocked_here, {})
        return DueUnlocks(tuple(sorted(unlocked_here)), progress.total_xp, level, (), level_up)

    async def unlocks_under_trigger(self, user_id: str, trigger_id: str) -> DueUnlocks:
        """What a repeat of the write named `trigger_id` reports when its first
        evaluation was answered: the unlocks recorded under it (among the
        catalog's auto-unlock achievements), with a replay of their level-up.
        Nothing is evaluated: an unlock due since then goes to the write that
        made it due, not to a repeat of an older one."""
        rules = await self._repository.auto_rules()
        progress, _, held = await self._repository.auto_standing(user_id, tuple(r.achievement_id for r in rules.rules))
        level = progress.level if progress.level is not None else await self._repository.start_level()
        earlier = {a: u for a, u in held.items() if u.trigger == trigger_id}
        level_up = await self._level_ups_of(user_id, {}, earlier)
        return DueUnlocks(tuple(sorted(earlier)), progress.total_xp, level, (), level_up)

    async def _level_ups_of(
        self, user_id: str, made: dict[str, LevelUpOutcome | None], earlier: dict[str, Unlock]
    ) -> LevelUpOutcome | None:
        """The level-up the listed unlocks' rewards made, joined: this call's
        own level checks, and for unlocks an earlier call made under the same
        trigger a replay of theirs (each check is named after the reward's
        ledger entry), so that a repeat reports what its original did."""
        replayed = await asyncio.gather(
            *(
                self._levels.check_level_up(user_id, unlock.payment().entry_id, replay_only=True)
                for unlock in earlier.values()
                if unlock.xp_reward > 0
            )
        )
        return level_ups_joined([*made.values(), *replayed])

    async def _unlock_due_once(
        self, user_id: str, rule: AutoRule, trigger_id: str
    ) -> tuple[str, LevelUpOutcome | None] | None:
        """The rule's achievement id, and the level-up its reward made, when
        this call unlocked it; None when another did, or it cannot be unlocked
        now (left the catalog, is no longer auto-unlock, its requirements
        changed, no room for its XP)."""
        try:
            outcome = await self._unlock_once(user_id, rule.achievement_id, "", rule=rule, trigger=trigger_id)
        except (NotAutoUnlock, AchievementNotFound, RequirementsNotMet, TotalXpLimitReached) as refused:
            # Refusals that last: the rule gets no watch until the catalog or the user changes. Passing
            # ones (contention, DynamoDB unavailable) fail the evaluation, and its caller asks again.
            log.info(
                "auto unlock not made",
                extra={"fields": {"user_id": user_id, "achievement_id": rule.achievement_id, "why": str(refused)}},
            )
            return None
        return None if outcome.already_unlocked else (rule.achievement_id, outcome.level_up)

    async def list_user_achievements(
        self, user_id: str, page_size: int, page_token: str
    ) -> tuple[list[UserAchievementView], str]:
        """One page of the user's unlocks, in id order, with their catalog entries (one batch read)."""
        unlocks, token = await self._repository.list_unlocks(user_id, page_size, page_token)
        catalog = await self._repository.get_achievements([u.achievement_id for u in unlocks])
        return [UserAchievementView(u, catalog.get(u.achievement_id)) for u in unlocks], token

    # --- progress and stats -----------------------------------------------------------

    async def achievement_progress(
        self, user_id: str, page_size: int, page_token: str, reveal_hidden: bool
    ) -> tuple[list[AchievementProgress], str]:
        """One page of the catalog with the user's progress on each: the
        page, then side by side the user's standing (progress, counters, the
        unlocks among the page and its required achievements) and the unlock counts."""
        page, token = await self._repository.list_achievements(page_size, page_token)
        ids = tuple(a.achievement_id for a in page)
        looked_up = ids + tuple(r for a in page for r in a.requirements.required_achievements)
        (progress, counters, unlocks), unlocked_counts, players = await asyncio.gather(
            self._repository.auto_standing(user_id, looked_up),
            self._repository.unlock_counts(ids),
            self._repository.player_count(),
        )
        level = progress.level if progress.level is not None else await self._repository.start_level()
        standing = Standing(
            frozenset(unlocks), progress.total_xp, level, {c.counter: c.awards for c in counters.values()}
        )
        views = []
        for achievement in page:
            unlock = unlocks.get(achievement.achievement_id)
            criteria = criteria_of(achievement, standing)
            if achievement.hidden and unlock is None and not reveal_hidden:
                # What it asks would give it away as much as its name: the numbers stay, the words go.
                achievement = replace(achievement, name="", description="", requirements=Requirements())
                criteria = tuple(replace(c, description="hidden") for c in criteria)
            rate = AchievementStats(achievement.achievement_id, unlocked_counts[achievement.achievement_id], players)
            views.append(
                AchievementProgress(
                    achievement, unlock, percent_of(criteria, unlock is not None), criteria, rate.unlock_rate
                )
            )
        return views, token

    async def achievement_stats(self, achievement_id: str) -> AchievementStats:
        """NOT_FOUND for an achievement not in the catalog."""
        await self._repository.cached_achievement(achievement_id)
        counts, players = await asyncio.gather(
            self._repository.unlock_counts((achievement_id,)), self._repository.player_count()
        )
        return AchievementStats(achievement_id, counts[achievement_id], players)
