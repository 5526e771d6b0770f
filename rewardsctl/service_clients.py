"""The services over gRPC, through the generated stubs: the catalog as
rewardsctl.catalog values, the player calls as the services answer them, and
the webhooks of the Events service."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from common.channels import client_channel
from common.config import Settings
from common.grpc_edge import period_from_message, period_to_message, streak_to_message
from common.streaks import Streak, StreakLength
from rewards.v1 import (
    achievements_pb2,
    achievements_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    levels_pb2,
    levels_pb2_grpc,
    xp_pb2,
    xp_pb2_grpc,
)
from rewardsctl.catalog import Achievement, Activity, ActivityCount, Cap, Catalog, Level, Reward
from rewardsctl.catalog_plan import CatalogChange, Entry

_LIST_PAGE_SIZE = 100
# The most delivery ids one RedeliverEvents takes (events.proto's limits).
MAX_REDELIVER_IDS = 100


@dataclass(frozen=True)
class ServiceTargets:
    xp: str
    achievements: str
    levels: str


class ServiceClients:
    """One channel per service; every call has the same deadline."""

    def __init__(
        self, targets: ServiceTargets, timeout_s: float, settings: Settings | None = None, token: str = ""
    ) -> None:
        self.targets = targets
        self._timeout_s = timeout_s
        # What every client of the services should use: retries of UNAVAILABLE,
        # large responses, TLS with a client certificate when configured, and
        # the caller's token on every call.
        settings = settings or Settings()
        self._channels = [
            client_channel(t, settings, token) for t in (targets.xp, targets.achievements, targets.levels)
        ]
        self.xp = xp_pb2_grpc.XpServiceStub(self._channels[0])
        self.achievements = achievements_pb2_grpc.AchievementsServiceStub(self._channels[1])
        self.levels = levels_pb2_grpc.LevelsServiceStub(self._channels[2])

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> ServiceClients:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- catalog ------------------------------------------------------------------

    def read_catalog(self) -> Catalog:
        return Catalog.of(self.list_activities(), self.list_achievements(), self.list_levels(), self.list_streaks())

    def list_activities(self) -> list[Activity]:
        activities: list[Activity] = []
        token = ""
        while True:
            page = self.xp.ListActivities(
                xp_pb2.ListActivitiesRequest(page_size=_LIST_PAGE_SIZE, page_token=token), timeout=self._timeout_s
            )
            activities.extend(activity_from_message(m) for m in page.activities)
            token = page.next_page_token
            if not token:
                return activities

    def list_streaks(self) -> list[Streak]:
        streaks: list[Streak] = []
        token = ""
        while True:
            page = self.xp.ListStreaks(
                xp_pb2.ListStreaksRequest(page_size=_LIST_PAGE_SIZE, page_token=token), timeout=self._timeout_s
            )
            streaks.extend(streak_from_message(m) for m in page.streaks)
            token = page.next_page_token
            if not token:
                return streaks

    def list_achievements(self) -> list[Achievement]:
        achievements: list[Achievement] = []
        token = ""
        while True:
            page = self.achievements.ListAchievements(
                achievements_pb2.ListAchievementsRequest(page_size=_LIST_PAGE_SIZE, page_token=token),
                timeout=self._timeout_s,
            )
            achievements.extend(achievement_from_message(m) for m in page.achievements)
            token = page.next_page_token
            if not token:
                return achievements

    def list_levels(self) -> list[Level]:
        levels: list[Level] = []
        token = ""
        while True:
            page = self.levels.ListLevels(
                levels_pb2.ListLevelsRequest(page_size=_LIST_PAGE_SIZE, page_token=token), timeout=self._timeout_s
            )
            levels.extend(level_from_message(m) for m in page.levels)
            token = page.next_page_token
            if not token:
                return levels

    def apply_change(self, change: CatalogChange) -> None:
        """Writes one planned change; a "keep" writes nothing."""
        if change.action in ("create", "change"):
            self.put_entry(change.entry)
        elif change.action == "delete":
            self.delete_entry(change.entry)

    def put_entry(self, entry: Entry) -> None:
        if isinstance(entry, Activity):
            self.xp.PutActivity(xp_pb2.PutActivityRequest(activity=activity_to_message(entry)), timeout=self._timeout_s)
        elif isinstance(entry, Streak):
            self.xp.PutStreak(xp_pb2.PutStreakRequest(streak=streak_to_message(entry)), timeout=self._timeout_s)
        elif isinstance(entry, Achievement):
            self.achievements.PutAchievement(
                achievements_pb2.PutAchievementRequest(achievement=achievement_to_message(entry)),
                timeout=self._timeout_s,
            )
        else:
            self.levels.PutLevel(levels_pb2.PutLevelRequest(level=level_to_message(entry)), timeout=self._timeout_s)

    def get_achievement(self, achievement_id: str) -> Achievement:
        return achievement_from_message(
            self.achievements.GetAchievement(
                achievements_pb2.GetAchievementRequest(achievement_id=achievement_id), timeout=self._timeout_s
            )
        )

    def delete_entry(self, entry: Entry) -> None:
        if isinstance(entry, Activity):
            self.xp.DeleteActivity(xp_pb2.DeleteActivityRequest(activity_id=entry.activity_id), timeout=self._timeout_s)
        elif isinstance(entry, Streak):
            self.xp.DeleteStreak(xp_pb2.DeleteStreakRequest(streak_id=entry.streak_id), timeout=self._timeout_s)
        elif isinstance(entry, Achievement):
            self.achievements.DeleteAchievement(
                achievements_pb2.DeleteAchievementRequest(achievement_id=entry.achievement_id), timeout=self._timeout_s
            )
        else:
            self.levels.DeleteLevel(levels_pb2.DeleteLevelRequest(level=entry.level), timeout=self._timeout_s)

    # --- players ------------------------------------------------------------------

    def award(self, user_id: str, activity_id: str, request_id: str) -> xp_pb2.AwardXpResponse:
        return self.xp.AwardXp(
            xp_pb2.AwardXpRequest(user_id=user_id, activity_id=activity_id, request_id=request_id),
            timeout=self._timeout_s,
        )

    def unlock(self, user_id: str, achievement_id: str, request_id: str) -> achievements_pb2.UnlockAchievementResponse:
        return self.achievements.UnlockAchievement(
            achievements_pb2.UnlockAchievementRequest(
                user_id=user_id, achievement_id=achievement_id, request_id=request_id
            ),
            timeout=self._timeout_s,
        )

    def progress(self, user_id: str) -> xp_pb2.UserProgress:
        return self.xp.GetProgress(xp_pb2.GetProgressRequest(user_id=user_id), timeout=self._timeout_s)

    def history(self, user_id: str, limit: int | None = None) -> Iterator[xp_pb2.ListXpHistoryResponse]:
        """The user's ledger, newest first, page by page: pages of at most 100
        entries, asked for so that they hold `limit` entries in all, when given.
        The last page's next_page_token is empty when the whole ledger was
        read, else where the next entry starts."""
        token = ""
        remaining = limit
        while remaining is None or remaining > 0:
            page_size = _LIST_PAGE_SIZE if remaining is None else min(_LIST_PAGE_SIZE, remaining)
            page = self.xp.ListXpHistory(
                xp_pb2.ListXpHistoryRequest(user_id=user_id, page_size=page_size, page_token=token),
                timeout=self._timeout_s,
            )
            yield page
            token = page.next_page_token
            if not token:
                return
            if remaining is not None:
                remaining -= len(page.entries)

    def adjust(self, user_id: str, delta: int, reason: str, request_id: str) -> xp_pb2.AwardXpResponse:
        return self.xp.AdjustXp(
            xp_pb2.AdjustXpRequest(user_id=user_id, delta=delta, reason=reason, request_id=request_id),
            timeout=self._timeout_s,
        )

    def revoke(self, user_id: str, reason: str, *, request_id: str = "", entry_id: str = "") -> xp_pb2.AwardXpResponse:
        """Reverses the entry recorded with `request_id`, or the entry `entry_id` (exactly one of them)."""
        return self.xp.RevokeAward(
            xp_pb2.RevokeAwardRequest(user_id=user_id, request_id=request_id, reason=reason, entry_id=entry_id),
            timeout=self._timeout_s,
        )

    def unlock_due(
        self, user_id: str, trigger_id: str, achievement_ids: tuple[str, ...] = (), dry_run: bool = False
    ) -> achievements_pb2.UnlockDueAchievementsResponse:
        """Unlocks what is due for the user (of `achievement_ids`, when given)
        under `trigger_id`, or with dry_run lists it (the service role's RPC:
        an admin token may call it)."""
        return self.achievements.UnlockDueAchievements(
            achievements_pb2.UnlockDueAchievementsRequest(
                user_id=user_id, trigger_id=trigger_id, achievement_ids=list(achievement_ids), dry_run=dry_run
            ),
            timeout=self._timeout_s,
        )


class EventsClient:
    """The Events service's webhook calls (admin), on one channel; every call
    has the same deadline. The listings read every page."""

    def __init__(self, target: str, timeout_s: float, settings: Settings | None = None, token: str = "") -> None:
        self.target = target
        self._timeout_s = timeout_s
        self._channel = client_channel(target, settings or Settings(), token)
        self.events = events_pb2_grpc.EventsServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> EventsClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def put_webhook(self, webhook: events_pb2.Webhook) -> events_pb2.Webhook:
        """Creates or replaces it; the answer has no secret."""
        return self.events.PutWebhook(events_pb2.PutWebhookRequest(webhook=webhook), timeout=self._timeout_s)

    def list_webhooks(self) -> list[events_pb2.Webhook]:
        """Every webhook, in webhook_id order."""
        webhooks: list[events_pb2.Webhook] = []
        token = ""
        while True:
            page = self.events.ListWebhooks(
                events_pb2.ListWebhooksRequest(page_size=_LIST_PAGE_SIZE, page_token=token), timeout=self._timeout_s
            )
            webhooks.extend(page.webhooks)
            token = page.next_page_token
            if not token:
                return webhooks

    def delete_webhook(self, webhook_id: str) -> None:
        self.events.DeleteWebhook(events_pb2.DeleteWebhookRequest(webhook_id=webhook_id), timeout=self._timeout_s)

    def failed_deliveries(self, webhook_id: str) -> list[events_pb2.FailedDelivery]:
        """Every delivery of the webhook that failed for good, in delivery id order."""
        deliveries: list[events_pb2.FailedDelivery] = []
        token = ""
        while True:
            page = self.events.ListFailedDeliveries(
                events_pb2.ListFailedDeliveriesRequest(
                    webhook_id=webhook_id, page_size=_LIST_PAGE_SIZE, page_token=token
                ),
                timeout=self._timeout_s,
            )
            deliveries.extend(page.deliveries)
            token = page.next_page_token
            if not token:
                return deliveries

    def redeliver(self, webhook_id: str, delivery_ids: tuple[str, ...] = ()) -> int:
        """Queues the failed deliveries named (every failed one when none) again,
        at most MAX_REDELIVER_IDS ids a call; how many were queued."""
        if not delivery_ids:
            return self._redeliver(webhook_id, [])
        return sum(
            self._redeliver(webhook_id, list(delivery_ids[start : start + MAX_REDELIVER_IDS]))
            for start in range(0, len(delivery_ids), MAX_REDELIVER_IDS)
        )

    def _redeliver(self, webhook_id: str, delivery_ids: list[str]) -> int:
        answer = self.events.RedeliverEvents(
            events_pb2.RedeliverEventsRequest(webhook_id=webhook_id, delivery_ids=delivery_ids),
            timeout=self._timeout_s,
        )
        return answer.redelivered


# --- conversions --------------------------------------------------------------------


def activity_from_message(message: xp_pb2.Activity) -> Activity:
    cap = message.cap
    return Activity(
        message.activity_id,
        message.name,
        message.description,
        message.category,
        message.xp,
        Cap(cap.max_awards, period_from_message(cap.period)) if cap.max_awards else None,
    )


def activity_to_message(activity: Activity) -> xp_pb2.Activity:
    return xp_pb2.Activity(
        activity_id=activity.activity_id,
        name=activity.name,
        description=activity.description,
        category=activity.category,
        xp=activity.xp,
        cap=None
        if activity.cap is None
        else xp_pb2.Cap(max_awards=activity.cap.max_awards, period=period_to_message(activity.cap.period)),
    )


def streak_from_message(message: xp_pb2.Streak) -> Streak:
    return Streak(
        streak_id=message.streak_id,
        name=message.name,
        period=period_from_message(message.period),
        activity_id=message.activity_id,
        category=message.category,
    )


def achievement_from_message(message: achievements_pb2.Achievement) -> Achievement:
    requirements = message.requirements
    return Achievement(
        achievement_id=message.achievement_id,
        name=message.name,
        description=message.description,
        xp_reward=message.xp_reward,
        hidden=message.hidden,
        required_achievements=tuple(requirements.required_achievements),
        min_total_xp=requirements.min_total_xp,
        min_level=requirements.min_level,
        activity_counts=tuple(ActivityCount(c.activity_id, c.category, c.count) for c in requirements.activity_counts),
        auto_unlock=message.auto_unlock,
        streak_lengths=tuple(StreakLength(s.streak_id, s.length) for s in requirements.streak_lengths),
    )


def achievement_to_message(achievement: Achievement) -> achievements_pb2.Achievement:
    return achievements_pb2.Achievement(
        achievement_id=achievement.achievement_id,
        name=achievement.name,
        description=achievement.description,
        xp_reward=achievement.xp_reward,
        hidden=achievement.hidden,
        requirements=achievements_pb2.Requirements(
            required_achievements=list(achievement.required_achievements),
            min_total_xp=achievement.min_total_xp,
            min_level=achievement.min_level,
            activity_counts=[
                achievements_pb2.ActivityCount(activity_id=c.activity_id, category=c.category, count=c.count)
                for c in achievement.activity_counts
            ],
            streak_lengths=[
                achievements_pb2.StreakLength(streak_id=s.streak_id, length=s.length)
                for s in achievement.streak_lengths
            ],
        ),
        auto_unlock=achievement.auto_unlock,
    )


def level_from_message(message: levels_pb2.Level) -> Level:
    return Level(message.level, message.xp_required, tuple(Reward(r.reward_id, r.quantity) for r in message.rewards))


def level_to_message(level: Level) -> levels_pb2.Level:
    return levels_pb2.Level(
        level=level.level,
        xp_required=level.xp_required,
        rewards=[levels_pb2.Reward(reward_id=r.reward_id, quantity=r.quantity) for r in level.rewards],
    )
