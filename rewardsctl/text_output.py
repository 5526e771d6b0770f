"""What rewardsctl prints, as text: plans, answers of the services and their
errors. Pure: it formats and returns strings; the command prints them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from common.streaks import Streak, StreakLength
from rewards.v1 import achievements_pb2, events_pb2, levels_pb2, xp_pb2
from rewardsctl.backfill import BackfillResult
from rewardsctl.catalog import Achievement, Activity, ActivityCount, Cap, Level, Reward
from rewardsctl.catalog_plan import Backfill, CatalogChange, CatalogPlan, SectionSummary

_SIGN = {"create": "+", "change": "~", "delete": "-", "keep": "="}
_PLANNED = {"create": "create", "change": "change", "delete": "delete", "keep": "keep"}
_DONE = {"create": "created", "change": "changed", "delete": "deleted", "keep": "kept"}


# --- catalog ----------------------------------------------------------------------


def change_line(change: CatalogChange, *, done: bool) -> str:
    verb = (_DONE if done else _PLANNED)[change.action]
    if change.refused:  # never made: `! refused change streak daily: period 'day' -> 'week': why`
        return (
            f"! refused {verb} {change.kind} {change.key}: "
            + "; ".join(f"{c.field} {_value(c.old)} -> {_value(c.new)}" for c in change.field_changes)
            + f": {change.refused}"
        )
    line = f"{_SIGN[change.action]} {verb} {change.kind} {change.key}"
    if change.action == "create":
        line += f" ({entry_summary(change.entry)})"
    elif change.action == "change":
        line += ": " + "; ".join(f"{c.field} {_value(c.old)} -> {_value(c.new)}" for c in change.field_changes)
    elif change.action == "delete":
        line += " (not in the file)"
    else:
        line += " (not in the file; --no-delete)"
    return line


def entry_summary(entry: Activity | Streak | Achievement | Level) -> str:
    if isinstance(entry, Activity):
        return (
            f"{entry.name!r}, {entry.xp:,} XP"
            + (f", category {entry.category}" if entry.category else "")
            + (f", at most {cap_text(entry.cap)}" if entry.cap else "")
        )
    if isinstance(entry, Streak):
        subject = entry.activity_id if entry.activity_id else f"category {entry.category}"
        return f"{entry.name!r}, {entry.period}s in a row of {subject}"
    if isinstance(entry, Achievement):
        parts = [repr(entry.name), f"{entry.xp_reward:,} XP"]
        if entry.required_achievements:
            parts.append("requires " + ", ".join(entry.required_achievements))
        if entry.min_total_xp:
            parts.append(f"min {entry.min_total_xp:,} XP")
        if entry.min_level:
            parts.append(f"min level {entry.min_level}")
        if entry.activity_counts:
            parts.append("counts " + ", ".join(count_text(c) for c in entry.activity_counts))
        if entry.streak_lengths:
            parts.append("runs " + ", ".join(run_text(r) for r in entry.streak_lengths))
        if entry.hidden:
            parts.append("hidden")
        if entry.auto_unlock:
            parts.append("auto_unlock")
        return ", ".join(parts)
    return f"at {entry.xp_required:,} XP" + (f", rewards {rewards_text(entry.rewards)}" if entry.rewards else "")


def count_text(count: ActivityCount) -> str:
    """`10 x win-match`, `7 x category daily-quest`."""
    return f"{count.count:,} x {count.subject}"


def run_text(run: StreakLength) -> str:
    """`7 x streak daily-login`: a best run of 7 periods."""
    return f"{run.length:,} x streak {run.streak_id}"


def cap_text(cap: Cap | None) -> str:
    """`3 a day`, `10 a week`; `none`."""
    return "none" if cap is None else f"{cap.max_awards:,} a {cap.period}"


def _value(value: Any) -> str:
    if value is None or isinstance(value, Cap):  # an activity's cap, the only field that may be None
        return cap_text(value)
    if isinstance(value, tuple):
        if value and isinstance(value[0], Reward):
            return "[" + rewards_text(value) + "]"
        if value and isinstance(value[0], ActivityCount):
            return "[" + ", ".join(count_text(c) for c in value) + "]"
        if value and isinstance(value[0], StreakLength):
            return "[" + ", ".join(run_text(r) for r in value) + "]"
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return repr(shown)
    return str(value)


def rewards_text(rewards: Iterable[Reward | levels_pb2.Reward]) -> str:
    return ", ".join(f"{r.quantity:,} {r.reward_id}" for r in rewards)


def summary_line(summary: SectionSummary, *, done: bool) -> str:
    if not summary.managed:
        return f"{summary.section}: not in the file, {summary.unchanged} left as they are"
    if done:
        parts = [f"{summary.create} created", f"{summary.change} changed", f"{summary.delete} deleted"]
    else:
        parts = [f"{summary.create} to create", f"{summary.change} to change", f"{summary.delete} to delete"]
    if summary.keep:
        parts.append(f"{summary.keep} kept (--no-delete)")
    parts.append(f"{summary.unchanged} unchanged")
    return f"{summary.section}: " + ", ".join(parts)


def plan_footer(plan: CatalogPlan, *, dry_run: bool) -> str:
    if not plan.writes:
        return "no changes: the catalog already matches the file"
    changes = f"{len(plan.writes)} change" + ("" if len(plan.writes) == 1 else "s")
    if dry_run:
        return f"dry run: {changes} planned, nothing was changed"
    return f"applied {changes}"


def refused_footer(plan: CatalogPlan, path: str) -> str:
    """Why apply wrote nothing: each change the services would refuse."""
    refused = plan.refused
    lines = [
        f"nothing was changed: the services would refuse {len(refused)} of the {len(plan.writes)} changes "
        f"{path} asks for:"
    ]
    lines.extend(f"  {change.kind} {change.key}: {change.refused}" for change in refused)
    lines.append(f"fix {path} and apply it again")
    return "\n".join(lines)


def backfill_line(backfill: Backfill, *, planned: bool) -> str:
    """`backfill wins-10: count of win-match lowered 10 -> 5`."""
    return f"{'will backfill' if planned else 'backfill'} {backfill.achievement_id}: {'; '.join(backfill.reasons)}"


# --- backfill ---------------------------------------------------------------------


def backfill_summary(result: BackfillResult, achievement_ids: Iterable[str], *, dry_run: bool) -> str:
    """What a backfill did, or with dry_run what is due; per achievement, those
    asked for first (0 included), in id order."""
    shown = list(dict.fromkeys([*sorted(achievement_ids), *(result.due if dry_run else result.unlocks)]))
    width = max([24, *(len(a) + 4 for a in shown)])
    users = f"{result.users:,}"
    if result.users_before:
        users += f" ({result.users_this_run:,} in this run, {result.users_before:,} before it, from the checkpoint)"
    lines = [f"{'users evaluated':<{width}} {users}"]
    if dry_run:
        lines.append(f"{'users with unlocks due':<{width}} {result.users_due:,}")
        lines.append(f"{'unlocks due':<{width}} {result.due_count:,}")
        counts = result.due
    else:
        lines.append(f"{'users with new unlocks':<{width}} {result.users_with_unlocks:,}")
        lines.append(f"{'unlocks':<{width}} {result.unlock_count:,}")
        counts = result.unlocks
    lines.extend(f"{'  ' + a:<{width}} {counts.get(a, 0):,}" for a in shown)
    return "\n".join(lines)


# --- players ----------------------------------------------------------------------


def award_text(response: xp_pb2.AwardXpResponse, activity_id: str, request_id: str) -> str:
    if response.duplicate:
        lines = [
            f"{response.user_id}: request {request_id} was already recorded, nothing changed "
            f"(it awarded {response.xp_awarded:,} XP for {activity_id}); total {response.total_xp:,} XP, level {response.level}"
        ]
    else:
        lines = [
            f"{response.user_id}: +{response.xp_awarded:,} XP for {activity_id}; "
            f"total {response.total_xp:,} XP, level {response.level}"
        ]
    if response.HasField("level_up"):
        lines.extend(level_up_lines(response.level_up))
    if response.unlocked_achievements:
        lines.append(f"unlocked (auto_unlock): {', '.join(response.unlocked_achievements)}")
    if response.level_check_deferred:
        lines.append(
            "the level check was deferred (Levels service slow or down): run again with "
            f"--request-id {request_id} to get the level-up"
        )
    lines.append(f"request_id {request_id} (repeat it with --request-id to retry safely)")
    return "\n".join(lines)


def adjust_text(response: xp_pb2.AwardXpResponse, reason: str, request_id: str) -> str:
    if response.duplicate:
        lines = [
            f"{response.user_id}: request {request_id} was already recorded, nothing changed "
            f"(it adjusted {response.xp_awarded:+,} XP); total {response.total_xp:,} XP, level {response.level}"
        ]
    else:
        lines = [
            f"{response.user_id}: {response.xp_awarded:+,} XP adjusted ({reason!r}); "
            f"total {response.total_xp:,} XP, level {response.level}"
        ]
    if response.xp_awarded < 0:
        lines.append(_LEVEL_STAYS.format(level=response.level))
    if response.HasField("level_up"):
        lines.extend(level_up_lines(response.level_up))
    if response.unlocked_achievements:
        lines.append(f"unlocked (auto_unlock): {', '.join(response.unlocked_achievements)}")
    if response.level_check_deferred:
        lines.append(
            "the level check was deferred (Levels service slow or down): run again with "
            f"--request-id {request_id} to get the level-up"
        )
    lines.append(f"request_id {request_id} (repeat it with --request-id to retry safely)")
    return "\n".join(lines)


def revoke_text(response: xp_pb2.AwardXpResponse, *, request_id: str = "", entry_id: str = "") -> str:
    """What a revoke did: the XP it took (xp_awarded, negative), the total
    after it; a repeat says the entry was revoked already."""
    target = f"request {request_id}" if request_id else f"entry {entry_id}"
    if response.duplicate:
        lines = [
            f"{response.user_id}: {target} was already revoked, nothing changed (it took "
            f"{response.xp_awarded:+,} XP); total {response.total_xp:,} XP, level {response.level}"
        ]
    else:
        lines = [
            f"{response.user_id}: revoked {target}: {response.xp_awarded:+,} XP; "
            f"total {response.total_xp:,} XP, level {response.level}"
        ]
    lines.append(_LEVEL_STAYS.format(level=response.level))
    return "\n".join(lines)


# What taking XP back leaves: levels never go down, and the answer's level is the stored one.
_LEVEL_STAYS = "level {level} stays: levels reached, their rewards and unlocked achievements are never taken back"


def history_line(entry: xp_pb2.LedgerEntry) -> str:
    """One ledger entry: time, kind, signed XP, what it was for, its id (what
    `rewardsctl revoke --entry-id` takes), and for a revoke the entry it reverses.

    `2025-06-01T12:00:00.000000Z  activity       +150  activity win-match  entry req#r1`"""
    recorded = f"{entry.recorded_at.ToDatetime():%Y-%m-%dT%H:%M:%S.%f}Z" if entry.HasField("recorded_at") else "-"
    what = []
    if entry.activity_id:
        what.append(f"activity {entry.activity_id}")
    if entry.achievement_id:
        what.append(f"achievement {entry.achievement_id}")
    if entry.capped:
        what.append("capped")
    if entry.reason:
        what.append(f"reason {entry.reason!r}")
    line = f"{recorded:<27}  {entry_kind(entry.kind):<11}  {entry.xp:>+9,}  {', '.join(what) or '-'}  entry {entry.entry_id}"
    if entry.reverses_entry_id:
        line += f"  reverses {entry.reverses_entry_id}"
    return line


def entry_kind(kind: xp_pb2.LedgerEntry.Kind.ValueType) -> str:
    """`activity`, `grant`, `achievement`, `adjustment`, `revoke` (a kind this
    version does not know: `kind 7`)."""
    try:
        return xp_pb2.LedgerEntry.Kind.Name(kind).removeprefix("KIND_").lower()
    except ValueError:
        return f"kind {kind}"


def history_footer(user_id: str, shown: int, more: bool) -> str:
    """The last line of `rewardsctl history`: nothing when every entry was listed."""
    if shown == 0 and not more:
        return f"{user_id}: no ledger entries (a user with nothing yet)"
    if more:
        return f"the newest {shown:,} entries of {user_id}; --limit N lists more (0 lists all)"
    return ""


def unlock_text(response: achievements_pb2.UnlockAchievementResponse, user_id: str) -> str:
    achievement = response.achievement
    if response.already_unlocked and response.xp_awarded == 0:
        lines = [
            f"{user_id}: {achievement.achievement_id} was already unlocked, nothing paid; total {response.total_xp:,} XP"
        ]
    elif response.already_unlocked:
        lines = [
            f"{user_id}: {achievement.achievement_id} was already unlocked; its owed reward is paid now: "
            f"+{response.xp_awarded:,} XP; total {response.total_xp:,} XP"
        ]
    else:
        lines = [
            f"{user_id}: unlocked {achievement.achievement_id} ({achievement.name!r}): +{response.xp_awarded:,} XP; "
            f"total {response.total_xp:,} XP"
        ]
    if response.HasField("level_up"):
        lines.extend(level_up_lines(response.level_up))
    return "\n".join(lines)


def level_up_lines(level_up: levels_pb2.LevelUpResult) -> list[str]:
    if not level_up.leveled_up:
        return []
    line = f"level up: {level_up.previous_level} -> {level_up.current_level}"
    if level_up.rewards:
        line += f"; rewards: {rewards_text(level_up.rewards)}"
    return [line]


def progress_text(progress: xp_pb2.UserProgress) -> str:
    totals: dict[str, int] = {}
    for reward in progress.rewards:
        totals[reward.reward_id] = totals.get(reward.reward_id, 0) + reward.quantity
    rewards = ", ".join(f"{quantity:,} {reward_id}" for reward_id, quantity in totals.items())
    lines = [
        f"user          {progress.user_id}",
        f"total XP      {progress.total_xp:,}",
        f"level         {progress.level}",
        f"achievements  {', '.join(progress.unlocked_achievements) or 'none'}",
        f"rewards       {rewards + _grant_count(len(progress.rewards)) if rewards else 'none'}",
    ]
    if progress.HasField("updated_at"):
        lines.append(f"updated at    {progress.updated_at.ToJsonString()}")
    return "\n".join(lines)


def message_json(message: Message) -> str:
    return json_format.MessageToJson(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


# --- webhooks ---------------------------------------------------------------------


def event_type_name(event_type: events_pb2.EventType.ValueType) -> str:
    """`level_up`, `xp_awarded`, as `webhooks add --type` takes them (a type
    this version does not know: `type 9`)."""
    try:
        return events_pb2.EventType.Name(event_type).removeprefix("EVENT_TYPE_").lower()
    except ValueError:
        return f"type {event_type}"


def event_types_text(types: Iterable[events_pb2.EventType.ValueType]) -> str:
    """`level_up, achievement_unlocked`; `every type` when there are none."""
    return ", ".join(event_type_name(t) for t in types) or "every type"


def webhook_put_text(webhook: events_pb2.Webhook, generated_secret: str = "") -> str:
    """What `webhooks add` did; the secret it made, when it made one (shown
    this once: the service never returns it)."""
    lines = [
        f"webhook {webhook.webhook_id}: {webhook.url}, {event_types_text(webhook.types)} "
        "(events that happen from now on are POSTed to it, signed with its secret)"
    ]
    if generated_secret:
        lines.append(
            f"secret {generated_secret}\n"
            "  shown this once: the service never returns it; keep it where the receiver checks the "
            "Rewards-Signature header"
        )
    return "\n".join(lines)


def webhooks_text(webhooks: list[events_pb2.Webhook]) -> str:
    """One webhook a line, in id order: id, url, types (never a secret)."""
    if not webhooks:
        return "no webhooks (`rewardsctl webhooks add WEBHOOK_ID URL` adds one)"
    id_width = max(len(w.webhook_id) for w in webhooks)
    url_width = max(len(w.url) for w in webhooks)
    return "\n".join(f"{w.webhook_id:<{id_width}}  {w.url:<{url_width}}  {event_types_text(w.types)}" for w in webhooks)


def failed_deliveries_text(webhook_id: str, deliveries: list[events_pb2.FailedDelivery]) -> str:
    """One failed delivery a line, in delivery id order: its id (what `webhooks
    redeliver` takes), the event's type, attempts, when it failed, the last
    attempt's error; then how to deliver them again."""
    if not deliveries:
        return f"{webhook_id}: no failed deliveries"
    id_width = max(len(d.delivery_id) for d in deliveries)
    type_width = max(len(event_type_name(d.event.type)) for d in deliveries)
    attempts_width = max(len(_attempts(d.attempts)) for d in deliveries)
    lines = [
        f"{d.delivery_id:<{id_width}}  {event_type_name(d.event.type):<{type_width}}  "
        f"{_attempts(d.attempts):<{attempts_width}}  failed {_moment(d) or '-'}  {d.last_error or '-'}"
        for d in deliveries
    ]
    count = "1 failed delivery" if len(deliveries) == 1 else f"{len(deliveries):,} failed deliveries"
    lines.append(
        f"{count} of {webhook_id}: `rewardsctl webhooks redeliver {webhook_id} [DELIVERY_ID ...]` sends "
        "them (all, or those named) again"
    )
    return "\n".join(lines)


def _attempts(attempts: int) -> str:
    return "1 attempt" if attempts == 1 else f"{attempts:,} attempts"


def _moment(delivery: events_pb2.FailedDelivery) -> str:
    if not delivery.HasField("failed_at"):
        return ""
    return delivery.failed_at.ToDatetime().isoformat(timespec="milliseconds") + "Z"


def redeliver_text(webhook_id: str, redelivered: int, named: int) -> str:
    """What `webhooks redeliver` queued again: every failed delivery (named
    0), or those of the `named` ones that had failed."""
    count = "1 failed delivery" if redelivered == 1 else f"{redelivered:,} failed deliveries"
    if not named:
        if not redelivered:
            return f"{webhook_id}: no failed deliveries to deliver again"
        return f"queued {count} of {webhook_id} again: each is sent again, with retries as a new delivery"
    line = f"queued {count} of {webhook_id} again ({redelivered:,} of the {named:,} named)"
    if redelivered < named:
        line += (
            f"; the other {named - redelivered:,} are not failed deliveries of {webhook_id} (pending, delivered "
            f"or unknown: `rewardsctl webhooks failed {webhook_id}` lists the failed ones)"
        )
    return line


# --- errors -----------------------------------------------------------------------

# What the message of a service's UNAVAILABLE says when its DynamoDB could not be reached
# (common.dynamodb.transactions.storage_error_as_domain_error): "... (ConnectionError); retry".
DYNAMODB_UNREACHABLE = "DynamoDB could not be reached"

_RETRY_HINTS = {
    grpc.StatusCode.UNAVAILABLE: "safe to retry: run the same command again",
    grpc.StatusCode.ABORTED: "safe to retry: run the same command again",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the call may or may not have been done: it is safe to run the same command again",
}


def rpc_error_text(error: grpc.RpcError, target: str) -> str:
    """`CODE: message`, then each field or requirement the details name, and
    what to do when the call can be repeated."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    lines = [f"{code.name}: {message}"]
    for subject, description in _status_details(error):
        if description not in message:  # the message names most already
            lines.append(f"  {subject}: {description}")
    if code == grpc.StatusCode.UNAVAILABLE and DYNAMODB_UNREACHABLE in message:
        # The service answered: it is DynamoDB behind it that is down (its message may say "ConnectionError").
        lines.append(
            "  the service runs, but DynamoDB does not answer it: check that DynamoDB runs at the services' "
            "REWARDS_DYNAMODB_ENDPOINT (`make status` shows DynamoDB Local, `make up` starts it)"
        )
    elif code == grpc.StatusCode.UNAVAILABLE and ("connect" in message.lower() or "connection" in message.lower()):
        lines.append(f"  check that the service runs at {target} (`make up` starts the local cluster)")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        lines.append(
            "  pass a token with --token or REWARDS_TOKEN (`make up` writes dev tokens to .local/dev-auth.env; "
            "`rewardsctl token mint` makes one from REWARDS_AUTH_JWT_SECRET)"
        )
    hint = _RETRY_HINTS.get(code)
    if hint:
        lines.append(f"  {hint}")
    return "\n".join(lines)


def _status_details(error: grpc.RpcError) -> list[tuple[str, str]]:
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return []
    if status is None:
        return []
    found: list[tuple[str, str]] = []
    for packed in status.details:
        if packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            packed.Unpack(bad_request)
            found.extend((f"field {v.field}", v.description) for v in bad_request.field_violations)
        elif packed.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            packed.Unpack(failure)
            found.extend((f"unmet {v.subject}", v.description) for v in failure.violations)
    return found


def _grant_count(count: int) -> str:
    return " (1 grant)" if count == 1 else f" ({count:,} grants)"
