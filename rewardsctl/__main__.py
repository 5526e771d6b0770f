"""rewardsctl: the catalog as a file, player operations, and backups of a stage.

    rewardsctl catalog apply FILE [--dry-run] [--no-delete] [--if-empty] [--no-backfill]
                                  [--backfill-rate USERS_PER_SECOND] [--backfill-segments N]
    rewardsctl catalog export [-o FILE]
    rewardsctl achievements backfill [ACHIEVEMENT_ID ...] [--dry-run] [--segments N]
                                  [--rate USERS_PER_SECOND] [--page-size N] [--checkpoint PATH] [--restart]
    rewardsctl award USER ACTIVITY [--request-id ID] [--json]
    rewardsctl unlock USER ACHIEVEMENT [--request-id ID] [--json]
    rewardsctl progress USER [--json]
    rewardsctl history USER [--limit N] [--json]
    rewardsctl adjust USER DELTA --reason TEXT [--request-id ID] [--json]
    rewardsctl revoke USER (--request-id ID | --entry-id ID) --reason TEXT [--json]
    rewardsctl backup export DIR
    rewardsctl backup import DIR [--workers N]
    rewardsctl verify [--json] [--strict] [--catalog-changed] [--limit N] [--time-zone ZONE]
    rewardsctl token mint --role game|admin|service [--subject NAME] [--ttl 12h]
    rewardsctl token secret
    rewardsctl token dev-env
    rewardsctl webhooks add WEBHOOK_ID URL [--type TYPE ...] [--secret SECRET | --secret-env VAR] [--json]
    rewardsctl webhooks list [--json]
    rewardsctl webhooks remove WEBHOOK_ID
    rewardsctl webhooks failed WEBHOOK_ID [--json]
    rewardsctl webhooks redeliver WEBHOOK_ID [DELIVERY_ID ...] [--json]

Catalog, player and webhook commands call the services over gRPC with the
token of --token or REWARDS_TOKEN; backups and verify read and write DynamoDB directly;
a backfill (and catalog apply, for the auto_unlock achievements it adds or
eases) scans user_progress in DynamoDB and calls the Achievements service.
Targets, endpoint and table prefix come from the services' own environment
variables (common.config), and flags override them.

Exit status: 0 done; 1 a service or DynamoDB refused or failed (the message
says why); 2 a bad command line or catalog file (nothing was written);
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from common.caller_auth import AuthNotConfigured, Role
from common.config import Settings
from common.dynamodb import create_dynamodb_client, error_code
from rewards.v1 import events_pb2, xp_pb2
from rewardsctl import text_output
from rewardsctl.backfill import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_SEGMENTS,
    BackfillResult,
    Checkpoint,
    CheckpointError,
    CheckpointFile,
    EvaluationFailed,
    default_checkpoint_path,
    players_table,
    run_backfill,
    start_or_resume,
)
from rewardsctl.backup import BackupError, Manifest, export_stage, import_stage
from rewardsctl.catalog import CatalogFileError, catalog_warnings, format_catalog, parse_catalog
from rewardsctl.catalog_plan import CatalogPlan, backfills, plan_catalog
from rewardsctl.progress_display import ItemCountDisplay
from rewardsctl.service_clients import EventsClient, ServiceClients, ServiceTargets
from rewardsctl.tokens import dev_tokens_env, mint_token, minting_authority, new_secret
from rewardsctl.verify import (
    DEFAULT_FINDINGS_LIMIT,
    WARNING,
    StageNotFound,
    VerifyReport,
    read_catalog,
    read_users,
    report_as_json,
    report_as_text,
    verify_users,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Answer = TypeVar("Answer")


class CommandFailed(Exception):
    """Ends the command with `message` on stderr and exit status `status`."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


# --- catalog ----------------------------------------------------------------------


def catalog_apply(args: argparse.Namespace, settings: Settings) -> int:
    path = Path(args.file)
    try:
        desired = parse_catalog(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CommandFailed(f"cannot read {path}: {error.strerror or error}", EXIT_USAGE) from error
    except CatalogFileError as error:
        raise CommandFailed(
            f"{path} is not a valid catalog, nothing was changed:\n"
            + "\n".join("  " + p.replace("\n", "\n    ") for p in error.problems),
            EXIT_USAGE,
        ) from error
    for warning in catalog_warnings(desired):
        print(f"warning: {warning}", file=sys.stderr)
    with _service_clients(args, settings) as clients:
        current = _call(lambda: clients.read_catalog(), "reading the catalog", _all_targets(clients.targets))
        if args.if_empty and not current.is_empty():
            streaks = f"{len(current.streaks)} streaks, " if current.streaks else ""
            print(
                f"the catalog is not empty ({len(current.activities or ())} activities, {streaks}"
                f"{len(current.achievements or ())} achievements, {len(current.levels or ())} levels): "
                f"left as it is (--if-empty)"
            )
            return EXIT_OK
        plan = plan_catalog(desired, current, delete_missing=not args.no_delete)
        if plan.refused:
            # Known before any write (a streak's period changed): the plan is shown, and nothing is written.
            for change in plan.changes:
                print(text_output.change_line(change, done=False))
            for summary in plan.summaries:
                print(text_output.summary_line(summary, done=False))
            raise CommandFailed(text_output.refused_footer(plan, str(path)))
        applied = 0
        for change in plan.changes:
            if not args.dry_run and change.writes:
                try:
                    clients.apply_change(change)
                except (grpc.RpcError, ValueError) as error:
                    # ValueError: protobuf cannot carry a value (a lone surrogate in a string).
                    reason = (
                        text_output.rpc_error_text(error, _target_of(change.kind, clients.targets))
                        if isinstance(error, grpc.RpcError)
                        else str(error)
                    )
                    raise CommandFailed(
                        f"could not {change.action} {change.kind} {change.key}: {reason}\n"
                        f"{applied} of {len(plan.writes)} changes were made before this one; fix {path} and apply "
                        "it again (apply is idempotent: what is done already is left as it is)"
                    ) from error
                applied += 1
            print(text_output.change_line(change, done=not args.dry_run))
        for summary in plan.summaries:
            print(text_output.summary_line(summary, done=not args.dry_run))
        print(text_output.plan_footer(plan, dry_run=args.dry_run))
        _backfill_after_apply(args, settings, clients, plan)
    return EXIT_OK


def _backfill_after_apply(
    args: argparse.Namespace, settings: Settings, clients: ServiceClients, plan: CatalogPlan
) -> None:
    """Players who already meet an auto_unlock achievement the apply added or
    made easier get it now, not at their next award (which may never come)."""
    due = backfills(plan)
    if not due:
        return
    ids = tuple(b.achievement_id for b in due)
    command = f"rewardsctl achievements backfill {' '.join(ids)}"
    if args.no_backfill:
        print(f"not backfilled (--no-backfill): {', '.join(ids)}; `{command}` evaluates every player for them")
        return
    if args.if_empty:
        # A new stage's first catalog, as `make up` loads it: no players to evaluate yet (and the
        # command needs no DynamoDB access). A player who plays again is evaluated at the next award.
        print(
            f"not backfilled (--if-empty loads a new stage's first catalog): {', '.join(ids)}; "
            f"`{command}` evaluates every player for them"
        )
        return
    if args.dry_run:
        for backfill in due:
            print(text_output.backfill_line(backfill, planned=True))
        return
    for backfill in due:
        print(text_output.backfill_line(backfill, planned=False))
    # A replica of the Achievements service other than the one that took the writes evaluates the rules
    # it last read, for up to auto_rules_cache_s: the backfill starts once every replica has the new ones.
    options = BackfillOptions(
        segments=args.backfill_segments, rate=args.backfill_rate, rules_wait_s=settings.auto_rules_cache_s
    )
    result = _backfill(
        settings, clients, ids, ids, options, continue_with=f"`{command}`", done_before="the catalog was applied"
    )
    print(f"backfill done (run {result.checkpoint.run_id}):")
    print(text_output.backfill_summary(result, ids, dry_run=False))


# --- achievements -----------------------------------------------------------------


@dataclass(frozen=True)
class BackfillOptions:
    segments: int | None = None  # None: the checkpoint's, else DEFAULT_SEGMENTS
    rate: float = 0.0
    page_size: int = DEFAULT_PAGE_SIZE
    checkpoint: Path | None = None  # None: default_checkpoint_path
    restart: bool = False
    dry_run: bool = False
    # After a catalog change: how long the services may evaluate the auto-unlock rules they read before it.
    rules_wait_s: float = 0.0


def achievements_backfill(args: argparse.Namespace, settings: Settings) -> int:
    asked = tuple(dict.fromkeys(args.achievement_ids))
    options = BackfillOptions(
        segments=args.segments,
        rate=args.rate,
        page_size=args.page_size,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        restart=args.restart,
        dry_run=args.dry_run,
    )
    with _service_clients(args, settings) as clients:
        targets = _auto_unlock_achievements(clients, asked)
        if not targets:
            print("no auto_unlock achievements in the catalog: nothing to backfill")
            return EXIT_OK
        result = _backfill(settings, clients, asked, targets, options, continue_with="the same command")
    if options.dry_run:
        print(f"dry run: nothing was unlocked and no checkpoint was written; due now for {', '.join(targets)}:")
    else:
        print(f"backfill done (run {result.checkpoint.run_id}, trigger {result.checkpoint.trigger_id}):")
    print(text_output.backfill_summary(result, targets, dry_run=options.dry_run))
    return EXIT_OK


def _auto_unlock_achievements(clients: ServiceClients, asked: tuple[str, ...]) -> tuple[str, ...]:
    """The achievements a backfill evaluates: those asked for, each checked to
    be in the catalog and auto_unlock; or, when none is, every auto_unlock one."""
    target = clients.targets.achievements
    if not asked:
        listed = _call(lambda: clients.list_achievements(), "listing the achievements", target)
        return tuple(sorted(a.achievement_id for a in listed if a.auto_unlock))
    problems = []
    for achievement_id in asked:
        try:
            achievement = clients.get_achievement(achievement_id)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                problems.append(error.details() or f"achievement {achievement_id!r} is not in the catalog")
                continue
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                problems.append(f"achievement id {achievement_id!r}: {error.details()}")
                continue
            raise CommandFailed(
                f"reading achievement {achievement_id} failed: {text_output.rpc_error_text(error, target)}"
            ) from error
        if not achievement.auto_unlock:
            problems.append(
                f"achievement {achievement_id!r} is not auto_unlock: a backfill unlocks only auto_unlock "
                f"achievements (`rewardsctl unlock USER {achievement_id}` unlocks it for one user)"
            )
    if problems:
        raise CommandFailed("nothing was backfilled:\n" + "\n".join(f"  {p}" for p in problems), EXIT_USAGE)
    return asked


def _backfill(
    settings: Settings,
    clients: ServiceClients,
    asked: tuple[str, ...],
    targets: tuple[str, ...],
    options: BackfillOptions,
    *,
    continue_with: str,
    done_before: str = "",
) -> BackfillResult:
    """Runs (or goes on with) the backfill of `asked` (every auto_unlock
    achievement when empty), with its checkpoint, progress on stderr."""
    where = settings.dynamodb_endpoint or f"AWS ({settings.aws_region})"
    stopped = f"{done_before}; its backfill stopped" if done_before else "backfill stopped"
    path = options.checkpoint or default_checkpoint_path(settings, asked)
    store = CheckpointFile(path)
    scan_client = create_dynamodb_client(settings)
    table = players_table(settings.table_prefix)
    # Before any checkpoint: the players are read from DynamoDB, which the services' settings do not tell us.
    hint = (
        "\n  a backfill reads the stage's players from DynamoDB: --dynamodb-endpoint and --table-prefix (or "
        "REWARDS_DYNAMODB_ENDPOINT and REWARDS_TABLE_PREFIX) name the stage (`make up`: http://localhost:8000)"
        + ("" if continue_with == "the same command" else f"; then run {continue_with}")
    )
    try:
        scan_client.describe_table(TableName=table)
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":
            raise CommandFailed(
                f"{stopped}: table {table} does not exist at {where}: is the table prefix right?{hint}"
            ) from error
        raise CommandFailed(f"{stopped}: DynamoDB at {where} refused: {error_code(error)}: {error}{hint}") from error
    except NoCredentialsError as error:
        raise CommandFailed(f"{stopped}: no AWS credentials for DynamoDB at {where}{hint}") from error
    except BotoCoreError as error:
        raise CommandFailed(f"{stopped}: DynamoDB at {where} could not be reached: {error}{hint}") from error

    if options.dry_run:
        checkpoint = Checkpoint.new(settings.table_prefix, asked, options.segments or DEFAULT_SEGMENTS)
        trigger_id = f"backfill-dry-run#{checkpoint.run_id}"  # recorded nowhere: a dry run unlocks nothing
        print(f"dry run: evaluating every player of {table}, unlocking nothing", file=sys.stderr)
    else:
        try:
            checkpoint, resumed = start_or_resume(
                store, settings.table_prefix, asked, options.segments, options.restart
            )
        except CheckpointError as error:
            raise CommandFailed(f"{stopped}: {error}", EXIT_USAGE) from error
        except OSError as error:
            raise CommandFailed(f"{stopped}: cannot write the checkpoint {path}: {error.strerror or error}") from error
        trigger_id = checkpoint.trigger_id
        if resumed:
            print(
                f"resuming backfill run {checkpoint.run_id} from the checkpoint {path}: "
                f"{checkpoint.segments_done} of {len(checkpoint.segments)} segments done, "
                f"{checkpoint.users:,} users evaluated before",
                file=sys.stderr,
            )
        else:
            print(
                f"backfill run {checkpoint.run_id} of {', '.join(targets)}: {len(checkpoint.segments)} segments, "
                f"checkpoint {path}",
                file=sys.stderr,
            )
    kept = (
        ""
        if options.dry_run
        else f"\nthe checkpoint {path} keeps what was done (run {checkpoint.run_id}): {continue_with} goes on from there"
    )

    if options.rules_wait_s > 0:
        print(
            f"waiting {options.rules_wait_s:g} s for every Achievements replica to read the new rules "
            "(REWARDS_AUTO_RULES_CACHE_S)",
            file=sys.stderr,
        )
        time.sleep(options.rules_wait_s)

    def evaluate(user_id: str) -> tuple[list[str], list[str]]:
        answer = clients.unlock_due(user_id, trigger_id, asked, options.dry_run)
        return list(answer.unlocked), list(answer.due)

    try:
        result = run_backfill(
            scan_client,
            checkpoint,
            evaluate,
            save=None if options.dry_run else store.save,
            page_size=options.page_size,
            rate=options.rate,
            dry_run=options.dry_run,
            progress=ItemCountDisplay(sys.stderr, "backfill", unit="users"),
        )
    except EvaluationFailed as failed:
        reason = text_output.rpc_error_text(failed.error, clients.targets.achievements).replace(
            "run the same command again", continue_with if continue_with != "the same command" else "run it again"
        )
        raise CommandFailed(
            f"{stopped}: UnlockDueAchievements for user {failed.user_id!r} failed: {reason}{kept}"
        ) from failed
    except ClientError as error:
        raise CommandFailed(f"{stopped}: DynamoDB at {where} refused: {error_code(error)}: {error}{kept}") from error
    except BotoCoreError as error:
        raise CommandFailed(f"{stopped}: DynamoDB at {where} could not be reached: {error}{kept}") from error
    except OSError as error:
        raise CommandFailed(
            f"{stopped}: cannot write the checkpoint {path}: {error.strerror or error}{kept}"
        ) from error
    except KeyboardInterrupt:
        if kept:
            print(kept.strip(), file=sys.stderr)
        raise
    if not options.dry_run:
        store.remove()
    return result


def catalog_export(args: argparse.Namespace, settings: Settings) -> int:
    with _service_clients(args, settings) as clients:
        catalog = _call(lambda: clients.read_catalog(), "reading the catalog", _all_targets(clients.targets))
    text = format_catalog(
        catalog, header="The rewards catalog, exported by rewardsctl.\nLoad it with: rewardsctl catalog apply FILE"
    )
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(
            f"wrote {len(catalog.activities or ())} activities, {len(catalog.streaks or ())} streaks, "
            f"{len(catalog.achievements or ())} achievements and {len(catalog.levels or ())} levels to {args.output}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return EXIT_OK


# --- players ----------------------------------------------------------------------


def _with_own_request_id(
    args: argparse.Namespace,
    settings: Settings,
    command: str,
    send: Callable[[Any, str], Any],
    text: Callable[[Any, str], str],
) -> int:
    """An XP write under a request id of our own (or the caller's), so that
    repeating it (after a lost answer or a deferred check) cannot count it twice."""
    request_id = args.request_id or f"rewardsctl-{uuid.uuid4().hex}"
    with _service_clients(args, settings) as clients:
        response = _call(lambda: send(clients, request_id), command, clients.targets.xp, retry_with=request_id)
    if args.json:
        print(text_output.message_json(response))
        if not args.request_id:
            print(f"request_id {request_id}", file=sys.stderr)
    else:
        print(text(response, request_id))
    return EXIT_OK


def award(args: argparse.Namespace, settings: Settings) -> int:
    return _with_own_request_id(
        args,
        settings,
        "award",
        lambda clients, request_id: clients.award(args.user, args.activity, request_id),
        lambda response, request_id: text_output.award_text(response, args.activity, request_id),
    )


def unlock(args: argparse.Namespace, settings: Settings) -> int:
    with _service_clients(args, settings) as clients:
        response = _call(
            lambda: clients.unlock(args.user, args.achievement, args.request_id or ""),
            "unlock",
            clients.targets.achievements,
        )
    print(text_output.message_json(response) if args.json else text_output.unlock_text(response, args.user))
    return EXIT_OK


def progress(args: argparse.Namespace, settings: Settings) -> int:
    with _service_clients(args, settings) as clients:
        response = _call(lambda: clients.progress(args.user), "progress", clients.targets.xp)
    print(text_output.message_json(response) if args.json else text_output.progress_text(response))
    return EXIT_OK


def history(args: argparse.Namespace, settings: Settings) -> int:
    """The newest --limit entries (all with 0), newest first: as text, printed
    page by page; as JSON, one ListXpHistoryResponse holding them all, whose
    next_page_token is where the next entry starts (empty when all were listed)."""
    limit: int | None = args.limit or None
    listed = xp_pb2.ListXpHistoryResponse()
    shown, more = 0, False
    with _service_clients(args, settings) as clients:
        try:
            for page in clients.history(args.user, limit):
                entries = page.entries[: None if limit is None else limit - shown]
                shown += len(entries)
                more = bool(page.next_page_token) or len(entries) < len(page.entries)
                if args.json:
                    listed.entries.extend(entries)
                    listed.next_page_token = page.next_page_token
                else:
                    for entry in entries:
                        print(text_output.history_line(entry))
        except grpc.RpcError as error:
            read = f" after {shown:,} entries" if shown else ""
            raise CommandFailed(
                f"history failed{read}: {text_output.rpc_error_text(error, clients.targets.xp)}"
            ) from error
    if args.json:
        print(text_output.message_json(listed))
    else:
        footer = text_output.history_footer(args.user, shown, more)
        if footer:
            print(footer)
    return EXIT_OK


def adjust(args: argparse.Namespace, settings: Settings) -> int:
    return _with_own_request_id(
        args,
        settings,
        "adjust",
        lambda clients, request_id: clients.adjust(args.user, args.delta, args.reason, request_id),
        lambda response, request_id: text_output.adjust_text(response, args.reason, request_id),
    )


def revoke(args: argparse.Namespace, settings: Settings) -> int:
    # Idempotent as it is: an entry is revoked once, and a repeat answers the same.
    request_id, entry_id = args.request_id or "", args.entry_id or ""
    with _service_clients(args, settings) as clients:
        response = _call(
            lambda: clients.revoke(args.user, args.reason, request_id=request_id, entry_id=entry_id),
            "revoke",
            clients.targets.xp,
        )
    if args.json:
        print(text_output.message_json(response))
    else:
        print(text_output.revoke_text(response, request_id=request_id, entry_id=entry_id))
    return EXIT_OK


# --- backups ----------------------------------------------------------------------


def backup_export(args: argparse.Namespace, settings: Settings) -> int:
    started = time.monotonic()
    manifest = _dynamodb(
        settings,
        lambda client: export_stage(
            client, settings.table_prefix, Path(args.dir), ItemCountDisplay(sys.stderr, "export")
        ),
    )
    print(
        f"exported {manifest.items:,} items of {len(manifest.tables)} tables (prefix {settings.table_prefix!r}) "
        f"to {args.dir} in {time.monotonic() - started:.1f} s"
    )
    _print_table_counts(manifest)
    return EXIT_OK


def backup_import(args: argparse.Namespace, settings: Settings) -> int:
    started = time.monotonic()
    manifest = _dynamodb(
        settings,
        lambda client: import_stage(
            client, settings.table_prefix, Path(args.dir), ItemCountDisplay(sys.stderr, "import"), workers=args.workers
        ),
    )
    print(
        f"imported {manifest.items:,} items of {len(manifest.tables)} tables into prefix {settings.table_prefix!r} "
        f"in {time.monotonic() - started:.1f} s (backup of {manifest.source_table_prefix!r} made {manifest.created_at}); "
        "counts verified"
    )
    _print_table_counts(manifest)
    return EXIT_OK


# --- invariants ---------------------------------------------------------------------


def verify(args: argparse.Namespace, settings: Settings) -> int:
    where = f"prefix {settings.table_prefix!r} at {settings.dynamodb_endpoint or f'AWS ({settings.aws_region})'}"
    # Where caps' and streaks' days and weeks start: the services' REWARDS_TIME_ZONE, unless --time-zone.
    time_zone = args.time_zone or settings.time_zone
    if args.time_zone is None:
        try:
            _time_zone(time_zone)
        except argparse.ArgumentTypeError as error:
            raise CommandFailed(f"REWARDS_TIME_ZONE: {error}", EXIT_USAGE) from error

    def read_and_check(client: Any) -> VerifyReport:
        # One user's items at a time: memory does not grow with the stage.
        return verify_users(
            read_catalog(client, settings.table_prefix, time_zone),
            read_users(client, settings.table_prefix),
            catalog_changed=args.catalog_changed,
            limit=args.limit,
        )

    try:
        report = _dynamodb(settings, read_and_check)
    except StageNotFound as error:
        raise CommandFailed(str(error)) from error
    print(report_as_json(report, where) if args.json else report_as_text(report, where))
    # --strict: for a stage that should be settled, where owed XP or a due level check is a failure too.
    failed = not report.ok or (args.strict and report.count(WARNING) > 0)
    return EXIT_FAILED if failed else EXIT_OK


# --- tokens -------------------------------------------------------------------------


def token_mint(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.auth_jwt_secret:
        raise CommandFailed("token mint needs the deployment's key in REWARDS_AUTH_JWT_SECRET", EXIT_USAGE)
    try:
        authority = minting_authority(settings)
        token = mint_token(authority, Role(args.role), args.subject or f"rewardsctl-{args.role}", args.ttl)
    except (ValueError, AuthNotConfigured) as error:
        raise CommandFailed(str(error), EXIT_USAGE) from error
    print(token)
    return EXIT_OK


def token_secret(args: argparse.Namespace, settings: Settings) -> int:
    print(new_secret())
    return EXIT_OK


def token_dev_env(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.auth_jwt_secret:
        raise CommandFailed("token dev-env needs the key in REWARDS_AUTH_JWT_SECRET", EXIT_USAGE)
    try:
        authority = minting_authority(settings)
    except AuthNotConfigured as error:
        raise CommandFailed(str(error), EXIT_USAGE) from error
    print(dev_tokens_env(authority, settings.auth_jwt_secret), end="")
    return EXIT_OK


# --- webhooks -----------------------------------------------------------------------

# What `webhooks add --type` takes: the EventType names without their prefix, in lower case.
EVENT_TYPES = {name.removeprefix("EVENT_TYPE_").lower(): value for name, value in events_pb2.EventType.items() if value}


def webhooks_add(args: argparse.Namespace, settings: Settings) -> int:
    secret, generated = _webhook_secret(args)
    types = list(dict.fromkeys(t for listed in args.types or () for t in listed))
    webhook = events_pb2.Webhook(webhook_id=args.webhook_id, url=args.url, types=types, secret=secret)
    with _events_client(args, settings) as client:
        answer = _call(lambda: client.put_webhook(webhook), "webhooks add", client.target)
    if args.json:
        if generated:  # the one place it is shown: the service never returns it
            answer.secret = secret
        print(text_output.message_json(answer))
    else:
        print(text_output.webhook_put_text(answer, secret if generated else ""))
    return EXIT_OK


def _webhook_secret(args: argparse.Namespace) -> tuple[str, bool]:
    """(the secret, whether this command made it): --secret, the variable of
    --secret-env, else a new random one."""
    if args.secret is not None:
        return args.secret, False
    if args.secret_env is not None:
        value = os.environ.get(args.secret_env, "")
        if not value:
            raise CommandFailed(
                f"--secret-env {args.secret_env}: the variable is not set or empty; nothing was changed", EXIT_USAGE
            )
        return value, False
    return secrets.token_urlsafe(32), True


def webhooks_list(args: argparse.Namespace, settings: Settings) -> int:
    with _events_client(args, settings) as client:
        webhooks = _call(lambda: client.list_webhooks(), "webhooks list", client.target)
    if args.json:
        print(text_output.message_json(events_pb2.ListWebhooksResponse(webhooks=webhooks)))
    else:
        print(text_output.webhooks_text(webhooks))
    return EXIT_OK


def webhooks_remove(args: argparse.Namespace, settings: Settings) -> int:
    with _events_client(args, settings) as client:
        _call(lambda: client.delete_webhook(args.webhook_id), "webhooks remove", client.target)
    print(f"removed webhook {args.webhook_id}: its pending deliveries stop")
    return EXIT_OK


def webhooks_failed(args: argparse.Namespace, settings: Settings) -> int:
    with _events_client(args, settings) as client:
        deliveries = _call(
            lambda: client.failed_deliveries(args.webhook_id),
            f"listing the failed deliveries of {args.webhook_id}",
            client.target,
        )
    if args.json:
        print(text_output.message_json(events_pb2.ListFailedDeliveriesResponse(deliveries=deliveries)))
    else:
        print(text_output.failed_deliveries_text(args.webhook_id, deliveries))
    return EXIT_OK


def webhooks_redeliver(args: argparse.Namespace, settings: Settings) -> int:
    delivery_ids = tuple(dict.fromkeys(args.delivery_ids))
    with _events_client(args, settings) as client:
        redelivered = _call(
            lambda: client.redeliver(args.webhook_id, delivery_ids), "webhooks redeliver", client.target
        )
    if args.json:
        print(text_output.message_json(events_pb2.RedeliverEventsResponse(redelivered=redelivered)))
    else:
        print(text_output.redeliver_text(args.webhook_id, redelivered, len(delivery_ids)))
    return EXIT_OK


def _print_table_counts(manifest: Manifest) -> None:
    for table in manifest.tables:
        print(f"  {table.table:<18} {table.items:>10,}")


def _dynamodb(settings: Settings, work: Callable[[Any], Answer]) -> Answer:
    where = settings.dynamodb_endpoint or f"AWS ({settings.aws_region})"
    try:
        return work(create_dynamodb_client(settings))
    except BackupError as error:
        raise CommandFailed(str(error)) from error
    except NoCredentialsError as error:
        raise CommandFailed(
            f"no AWS credentials for DynamoDB at {where}; DynamoDB Local takes any pair, such as "
            "AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local"
        ) from error
    except ClientError as error:
        raise CommandFailed(f"DynamoDB at {where} refused: {error_code(error)}: {error}") from error
    except BotoCoreError as error:
        raise CommandFailed(f"DynamoDB at {where} could not be reached: {error}") from error


# --- plumbing ---------------------------------------------------------------------


def _service_clients(args: argparse.Namespace, settings: Settings) -> ServiceClients:
    targets = ServiceTargets(
        xp=args.xp_target or settings.xp_target,
        achievements=args.achievements_target or settings.achievements_target,
        levels=args.levels_target or settings.levels_target,
    )
    return ServiceClients(targets, timeout_s=args.timeout, settings=settings, token=args.token or settings.token)


def _events_client(args: argparse.Namespace, settings: Settings) -> EventsClient:
    return EventsClient(
        args.events_target or settings.events_target,
        timeout_s=args.timeout,
        settings=settings,
        token=args.token or settings.token,
    )


def _target_of(kind: str, targets: ServiceTargets) -> str:
    by_kind = {"activity": targets.xp, "streak": targets.xp, "achievement": targets.achievements}
    return by_kind.get(kind, targets.levels)


def _all_targets(targets: ServiceTargets) -> str:
    return f"{targets.xp}, {targets.achievements} and {targets.levels}"


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (got {value})")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more (got {text})")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {value})")
    return value


def _time_zone(text: str) -> str:
    try:
        ZoneInfo(text)
    except (ValueError, ZoneInfoNotFoundError):
        raise argparse.ArgumentTypeError(
            f"not an IANA time zone name, such as America/New_York (got {text!r})"
        ) from None
    return text


def _event_types(text: str) -> list[events_pb2.EventType.ValueType]:
    """`level_up`, `LEVEL_UP`, `EVENT_TYPE_LEVEL_UP`; several separated by commas."""
    types = []
    for name in text.split(","):
        key = name.strip().lower().replace("-", "_").removeprefix("event_type_")
        if key not in EVENT_TYPES:
            raise argparse.ArgumentTypeError(f"unknown event type {name.strip()!r} (known: {', '.join(EVENT_TYPES)})")
        types.append(EVENT_TYPES[key])
    return types


def _delta(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of XP, such as 50 or -50 (got {text!r})") from None
    if value == 0:
        raise argparse.ArgumentTypeError("must not be 0: a positive DELTA adds XP, a negative one takes it back")
    return value


def _call(call: Callable[[], Answer], what: str, target: str, retry_with: str = "") -> Answer:
    try:
        return call()
    except grpc.RpcError as error:
        message = text_output.rpc_error_text(error, target)
        if retry_with:
            message = message.replace("run the same command again", f"run it again with --request-id {retry_with}")
        raise CommandFailed(f"{what} failed: {message}") from error


def build_parser() -> argparse.ArgumentParser:
    services = argparse.ArgumentParser(add_help=False)
    group = services.add_argument_group("services (default: REWARDS_XP_TARGET etc., else localhost:50051-50053)")
    group.add_argument("--xp-target", metavar="HOST:PORT")
    group.add_argument("--achievements-target", metavar="HOST:PORT")
    group.add_argument("--levels-target", metavar="HOST:PORT")
    group.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="deadline of each call (default 10)"
    )
    group.add_argument("--token", metavar="JWT", help="the caller's token (default: REWARDS_TOKEN)")

    events = argparse.ArgumentParser(add_help=False)
    group = events.add_argument_group("the events service (default: REWARDS_EVENTS_TARGET, else localhost:50054)")
    group.add_argument("--events-target", metavar="HOST:PORT")
    group.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="deadline of each call (default 10)"
    )
    group.add_argument("--token", metavar="JWT", help="the caller's token, admin (default: REWARDS_TOKEN)")

    dynamodb = argparse.ArgumentParser(add_help=False)
    group = dynamodb.add_argument_group("DynamoDB (default: REWARDS_DYNAMODB_ENDPOINT, REWARDS_TABLE_PREFIX)")
    group.add_argument("--dynamodb-endpoint", metavar="URL", help="unset means AWS itself")
    group.add_argument("--table-prefix", metavar="PREFIX", help="the stage's table prefix (default rewards-)")

    parser = argparse.ArgumentParser(
        prog="rewardsctl",
        description="The rewards catalog as a file, player operations, webhooks, and backups of a stage.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    catalog = commands.add_parser(
        "catalog", help="apply or export the catalog (activities, streaks, achievements, levels)"
    )
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    apply = catalog_commands.add_parser(
        "apply",
        parents=[services, dynamodb],
        help="make the catalog what FILE says",
        description="Makes the catalog what FILE says: entries of the file are created or changed, and entries of "
        "a section the file has but that it does not list are deleted (a section the file leaves out "
        "is left alone). Idempotent: a second apply changes nothing. A plan the services would refuse (a "
        "streak's period changed: it is fixed once created) is printed, and nothing is written (exit status 1). "
        "Then backfills the auto_unlock "
        "achievements it added or made easier to get (auto_unlock switched on, min_total_xp or "
        "min_level lowered, an activity count or a streak run lowered or removed, a required achievement removed): "
        "every player of the stage is evaluated for them, as `achievements backfill` does.",
    )
    apply.add_argument("file", metavar="FILE")
    apply.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    apply.add_argument("--no-delete", action="store_true", help="keep entries the file does not list")
    apply.add_argument(
        "--if-empty",
        action="store_true",
        help="only when the catalog has no entries at all (for loading a sample at start; no backfill)",
    )
    apply.add_argument(
        "--no-backfill", action="store_true", help="do not backfill the auto_unlock achievements added or eased"
    )
    apply.add_argument(
        "--backfill-rate",
        type=_non_negative_float,
        default=0.0,
        metavar="USERS_PER_SECOND",
        help="pace of the backfill (default 0: no limit)",
    )
    apply.add_argument(
        "--backfill-segments",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"parallel scan segments of the backfill (default {DEFAULT_SEGMENTS})",
    )
    apply.set_defaults(run=catalog_apply)
    export = catalog_commands.add_parser("export", parents=[services], help="print the catalog in the file format")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    export.set_defaults(run=catalog_export)

    achievements = commands.add_parser("achievements", help="operations on auto_unlock achievements")
    achievements_commands = achievements.add_subparsers(dest="achievements_command", required=True, metavar="ACTION")
    backfill_parser = achievements_commands.add_parser(
        "backfill",
        parents=[services, dynamodb],
        help="evaluate every player now for auto_unlock achievements (all, or those named)",
        description="Evaluates every player of the stage (the items of user_progress, read by a parallel scan) "
        "for the auto_unlock achievements named (every auto_unlock one when none is), through the "
        "Achievements service's UnlockDueAchievements: each player who meets one gets it, exactly once, "
        "with its XP. For players who qualified before an achievement existed or was made easier. "
        "Resumable: a checkpoint file records each segment's progress after every page; the same command "
        "run again after a crash goes on where it stopped, under the same run id (--restart starts over). "
        "Exit status 0 when every player was evaluated.",
    )
    backfill_parser.add_argument(
        "achievement_ids",
        nargs="*",
        metavar="ACHIEVEMENT_ID",
        help="the auto_unlock achievements to evaluate (default: every auto_unlock one)",
    )
    backfill_parser.add_argument(
        "--dry-run",
        action="store_true",
        help="unlock nothing and write no checkpoint: print per achievement how many players it is due for",
    )
    backfill_parser.add_argument(
        "--segments",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"parallel scan segments, one thread each (default {DEFAULT_SEGMENTS}, or the checkpoint's)",
    )
    backfill_parser.add_argument(
        "--rate",
        type=_non_negative_float,
        default=0.0,
        metavar="USERS_PER_SECOND",
        help="players evaluated per second at most, all segments together (default 0: no limit)",
    )
    backfill_parser.add_argument(
        "--page-size",
        type=_positive_int,
        default=DEFAULT_PAGE_SIZE,
        metavar="N",
        help=f"players per scan page, the unit of the checkpoint (default {DEFAULT_PAGE_SIZE})",
    )
    backfill_parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="the checkpoint file (default: one per stage and achievements under "
        "$XDG_STATE_HOME/rewardsctl, else ~/.local/state/rewardsctl)",
    )
    backfill_parser.add_argument(
        "--restart", action="store_true", help="ignore an earlier checkpoint and start a new run"
    )
    backfill_parser.set_defaults(run=achievements_backfill)

    award_parser = commands.add_parser("award", parents=[services], help="award the XP of an activity to a user")
    award_parser.add_argument("user", metavar="USER")
    award_parser.add_argument("activity", metavar="ACTIVITY")
    award_parser.add_argument("--request-id", metavar="ID", help="deduplicates repeats (default: a new id, printed)")
    award_parser.add_argument("--json", action="store_true", help="print the service's answer as JSON")
    award_parser.set_defaults(run=award)

    unlock_parser = commands.add_parser("unlock", parents=[services], help="unlock an achievement for a user")
    unlock_parser.add_argument("user", metavar="USER")
    unlock_parser.add_argument("achievement", metavar="ACHIEVEMENT")
    unlock_parser.add_argument("--request-id", metavar="ID", help="kept with the unlock, for tracing")
    unlock_parser.add_argument("--json", action="store_true", help="print the service's answer as JSON")
    unlock_parser.set_defaults(run=unlock)

    progress_parser = commands.add_parser(
        "progress", parents=[services], help="a user's XP, level, achievements, rewards"
    )
    progress_parser.add_argument("user", metavar="USER")
    progress_parser.add_argument("--json", action="store_true", help="print the service's answer as JSON")
    progress_parser.set_defaults(run=progress)

    history_parser = commands.add_parser(
        "history",
        parents=[services],
        help="a user's XP ledger, newest first: awards, grants, adjustments, revokes",
        description="Lists the user's XP ledger, newest first, one entry a line: when it was recorded, its kind "
        "(activity, grant, achievement, adjustment, revoke), its XP (signed), what it was for (activity, "
        "achievement, reason), its entry id (what `revoke --entry-id` takes) and, for a revoke, the entry it "
        "reverses. Pages through ListXpHistory.",
    )
    history_parser.add_argument("user", metavar="USER")
    history_parser.add_argument(
        "--limit",
        type=_non_negative_int,
        default=50,
        metavar="N",
        help="the newest N entries (default 50; 0 lists all)",
    )
    history_parser.add_argument(
        "--json",
        action="store_true",
        help="print them as one ListXpHistoryResponse (next_page_token: where the next entry starts)",
    )
    history_parser.set_defaults(run=history)

    adjust_parser = commands.add_parser(
        "adjust",
        parents=[services],
        help="add or take back XP, with a reason (admin)",
        description="AdjustXp: adds DELTA XP to the user's total (a negative DELTA takes XP back; never below "
        "0: FAILED_PRECONDITION), recorded in the ledger as an adjustment with the reason. Levels "
        "reached, their rewards and unlocked achievements stay. Idempotent per request id.",
    )
    adjust_parser.add_argument("user", metavar="USER")
    adjust_parser.add_argument("delta", type=_delta, metavar="DELTA", help="signed XP, not 0 (such as 50 or -50)")
    adjust_parser.add_argument("--reason", required=True, metavar="TEXT", help="why; kept in the ledger (required)")
    adjust_parser.add_argument("--request-id", metavar="ID", help="deduplicates repeats (default: a new id, printed)")
    adjust_parser.add_argument("--json", action="store_true", help="print the service's answer as JSON")
    adjust_parser.set_defaults(run=adjust)

    revoke_parser = commands.add_parser(
        "revoke",
        parents=[services],
        help="reverse the XP of one earlier award or grant, once (admin)",
        description="RevokeAward: reverses the XP of one ledger entry, named by the request id it was recorded "
        "with or by its entry id (from `rewardsctl history`), with a revoke entry that names it; an "
        "activity award's counters go down by one. Once per entry: a repeat changes nothing and answers "
        "the same. Adjustments, revokes and entries of no XP (capped awards) cannot be revoked; nor can an "
        "entry whose XP the total no longer holds (totals never go below 0). Levels reached, their rewards and unlocked "
        "achievements stay.",
    )
    revoke_parser.add_argument("user", metavar="USER")
    target = revoke_parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--request-id", metavar="ID", help="the request id the entry was recorded with")
    target.add_argument("--entry-id", metavar="ID", help="the entry's id, as `rewardsctl history` shows it")
    revoke_parser.add_argument("--reason", required=True, metavar="TEXT", help="why; kept in the ledger (required)")
    revoke_parser.add_argument("--json", action="store_true", help="print the service's answer as JSON")
    revoke_parser.set_defaults(run=revoke)

    backup = commands.add_parser("backup", help="copy a stage's tables to a directory and back")
    backup_commands = backup.add_subparsers(dest="backup_command", required=True, metavar="ACTION")
    backup_export_parser = backup_commands.add_parser(
        "export", parents=[dynamodb], help="write every table of the stage to DIR (new or empty)"
    )
    backup_export_parser.add_argument("dir", metavar="DIR")
    backup_export_parser.set_defaults(run=backup_export)
    backup_import_parser = backup_commands.add_parser(
        "import", parents=[dynamodb], help="write a backup into a stage whose tables are empty (created if missing)"
    )
    backup_import_parser.add_argument("dir", metavar="DIR")
    backup_import_parser.add_argument(
        "--workers", type=_positive_int, default=8, metavar="N", help="concurrent batch writes (default 8)"
    )
    backup_import_parser.set_defaults(run=backup_import)

    verify_parser = commands.add_parser(
        "verify",
        parents=[dynamodb],
        help="check the exactly-once invariants of every user, from the tables",
        description="Reads the stage's tables and checks, for every user: total XP is the sum of the ledger and "
        "never below zero, no request counted twice, each revoke reverses one award of the user once by its XP, "
        "each unlocked achievement paid once, the level matches the XP (levels stay when XP is taken back), "
        "each passed level's rewards granted once, no more awards of a capped activity counted in a period than "
        "its cap, and each period of a streak run had a counted award of what the streak counts. Prints the "
        "summary first (users, what each invariant checked and found), then the first --limit findings. Reads one user at a time, so memory stays small whatever the "
        "stage. Exit status 0 when nothing is violated, 1 otherwise. "
        "A scan is not a snapshot: verify a stage that takes no writes.",
    )
    verify_parser.add_argument(
        "--json", action="store_true", help="print the report as JSON (every count; the findings --limit lists)"
    )
    verify_parser.add_argument(
        "--limit",
        type=_non_negative_int,
        default=DEFAULT_FINDINGS_LIMIT,
        metavar="N",
        help=f"list the first N findings, violations first, by user id (default {DEFAULT_FINDINGS_LIMIT}; "
        "0 lists none); all are counted",
    )
    verify_parser.add_argument(
        "--strict", action="store_true", help="fail on warnings too (owed XP, level checks due): for a settled stage"
    )
    verify_parser.add_argument(
        "--catalog-changed",
        action="store_true",
        help="the level table, achievement requirements, caps, streaks or the time zone changed while players "
        "played: findings against the current catalog become notes",
    )
    verify_parser.add_argument(
        "--time-zone",
        type=_time_zone,
        default=None,
        metavar="ZONE",
        help="the game's time zone, where caps' and streaks' days and weeks start (default: REWARDS_TIME_ZONE, "
        "as the services read it, else UTC)",
    )
    verify_parser.set_defaults(run=verify)

    token = commands.add_parser("token", help="mint a caller's token, or make a new key")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    mint = token_commands.add_parser(
        "mint",
        help="print a signed token for a caller (needs REWARDS_AUTH_JWT_SECRET)",
        description="Prints a JWT signed with REWARDS_AUTH_JWT_SECRET. game: awards, unlocks, level checks, progress "
        "and catalog reads. admin: everything, catalog writes and GrantXp included. service: what one "
        "service calls on another (the services mint their own).",
    )
    mint.add_argument("--role", required=True, choices=[r.value for r in Role])
    mint.add_argument("--subject", metavar="NAME", help="who the caller is, as logged (default rewardsctl-ROLE)")
    mint.add_argument(
        "--ttl",
        default=None,
        metavar="DURATION",
        help="lifetime, such as 15m, 12h, 30d (default 12h, or the role's maximum when shorter: service 1h)",
    )
    mint.set_defaults(run=token_mint)
    secret = token_commands.add_parser("secret", help="print a new random key for REWARDS_AUTH_JWT_SECRET")
    secret.set_defaults(run=token_secret)
    dev_env = token_commands.add_parser(
        "dev-env",
        help="print export lines of the key and a game and an admin dev token (needs REWARDS_AUTH_JWT_SECRET)",
        description="Prints shell export lines: REWARDS_AUTH_JWT_SECRET, a game token (REWARDS_GAME_TOKEN) and an admin "
        "token (REWARDS_ADMIN_TOKEN, also REWARDS_TOKEN), each valid 30 days. For development clusters "
        "(docker-compose.yml's dev-tokens service); it prints the key itself.",
    )
    dev_env.set_defaults(run=token_dev_env)

    _add_webhook_commands(commands, events)
    return parser


def _add_webhook_commands(commands: Any, events: argparse.ArgumentParser) -> None:
    webhooks = commands.add_parser(
        "webhooks", help="the Events service's webhooks: add, list, remove; failed deliveries, sent again (admin)"
    )
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    add = webhook_commands.add_parser(
        "add",
        parents=[events],
        help="create or replace a webhook; prints the secret it makes when none is given",
        description="PutWebhook: creates the webhook, or replaces the one of that id (url, types and secret). "
        "Each event of its types (every type when no --type is given) that happens from now on is POSTed to URL "
        "as JSON, signed with its secret in the Rewards-Signature header, and retried with backoff on a timeout "
        "or a non-2xx answer until the service's retry window ends (24 hours unless configured), then kept as "
        "failed (`webhooks failed`). URL must be https:// (http:// only when the service runs with "
        "REWARDS_WEBHOOKS_ALLOW_HTTP=true). Without --secret or --secret-env, a new random secret is made and "
        "printed, this once: the service never returns it.",
    )
    add.add_argument("webhook_id", metavar="WEBHOOK_ID")
    add.add_argument("url", metavar="URL")
    add.add_argument(
        "--type",
        dest="types",
        action="append",
        type=_event_types,
        metavar="TYPE",
        help=f"an event type it receives, repeatable or comma-separated ({', '.join(EVENT_TYPES)}; "
        "default: every type)",
    )
    secret = add.add_mutually_exclusive_group()
    secret.add_argument(
        "--secret",
        metavar="SECRET",
        help="the signing secret, 16 to 256 characters (a command line is visible to others: prefer --secret-env)",
    )
    secret.add_argument("--secret-env", metavar="VAR", help="read the signing secret from the environment variable VAR")
    add.add_argument(
        "--json", action="store_true", help="print the service's answer as JSON (with the secret, when it made one)"
    )
    add.set_defaults(run=webhooks_add)

    listing = webhook_commands.add_parser(
        "list", parents=[events], help="every webhook: id, url, event types (secrets are never shown)"
    )
    listing.add_argument("--json", action="store_true", help="print them as one ListWebhooksResponse")
    listing.set_defaults(run=webhooks_list)

    remove = webhook_commands.add_parser(
        "remove", parents=[events], help="delete a webhook; its pending deliveries stop"
    )
    remove.add_argument("webhook_id", metavar="WEBHOOK_ID")
    remove.set_defaults(run=webhooks_remove)

    failed = webhook_commands.add_parser(
        "failed",
        parents=[events],
        help="the deliveries of a webhook that failed for good, in delivery id order",
        description="ListFailedDeliveries, every page: one delivery a line, in delivery id order: its delivery id "
        "(<user_id>/<event_id>, what `webhooks redeliver` takes), the event's type, the attempts made, when it "
        "failed, and the last attempt's error (such as HTTP 503 or a timeout).",
    )
    failed.add_argument("webhook_id", metavar="WEBHOOK_ID")
    failed.add_argument("--json", action="store_true", help="print them as one ListFailedDeliveriesResponse")
    failed.set_defaults(run=webhooks_failed)

    redeliver = webhook_commands.add_parser(
        "redeliver",
        parents=[events],
        help="send failed deliveries of a webhook again (all, or those named)",
        description="RedeliverEvents: queues the failed deliveries named (every failed delivery of the webhook "
        "when none is) again, each with a new retry window, and prints how many were. A delivery that is not "
        "a failed one of the webhook (pending, delivered, unknown) is left as it is.",
    )
    redeliver.add_argument("webhook_id", metavar="WEBHOOK_ID")
    redeliver.add_argument(
        "delivery_ids", nargs="*", metavar="DELIVERY_ID", help="as `webhooks failed` lists them (default: all)"
    )
    redeliver.add_argument("--json", action="store_true", help="print the service's answer as JSON")
    redeliver.set_defaults(run=webhooks_redeliver)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    if getattr(args, "dynamodb_endpoint", None):
        settings = replace(settings, dynamodb_endpoint=args.dynamodb_endpoint)
    if getattr(args, "table_prefix", None) is not None:
        settings = replace(settings, table_prefix=args.table_prefix)
    try:
        status: int = args.run(args, settings)
        return status
    except CommandFailed as failure:
        sys.stdout.flush()
        print(f"rewardsctl: {failure}", file=sys.stderr)
        return failure.status
    except KeyboardInterrupt:
        print("rewardsctl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader left early (`rewardsctl ... | head`): not an error of ours.
        # Python would complain again while flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
