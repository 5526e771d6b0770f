"""The one place that speaks DynamoDB, split by job: `client` (the services'
lean async client and its retries), `tables` (the table definitions, table
management and the boto3 client of the tooling), `items` (the item codec and
page tokens), `transactions` (transactions and conflict retries), `reads`
(catalog tables and the reads several services share) and `ledger` (the XP
ledger's items, which XP and Achievements write)."""

from common.dynamodb.client import (
    RETRYABLE_ERROR_CODES,
    CancellationReason,
    ConditionalCheckFailed,
    DynamoDBClient,
    DynamoDBError,
    TransactionCancelled,
)
from common.dynamodb.items import attr, decode_page_token, encode_page_token, from_item, to_item
from common.dynamodb.ledger import ledger_entry_from, ledger_put, mark_level_check_deferred, mark_unlocks_deferred
from common.dynamodb.level_table import LevelTableCache, version_bump, version_check
from common.dynamodb.reads import (
    CatalogCopies,
    CatalogTable,
    level_reached_from,
    read_levels_reached,
    read_progress,
    rewards_from,
)
from common.dynamodb.tables import (
    ACHIEVEMENT_STATS,
    ACHIEVEMENTS,
    ACTIVITIES,
    ACTIVITY_COUNTS,
    ALL_TABLES,
    LEVEL_CHECKS,
    LEVEL_REWARDS,
    LEVEL_TABLE_VERSION_KEY,
    LEVELS,
    STREAKS,
    USER_ACHIEVEMENTS,
    USER_PROGRESS,
    XP_LEDGER,
    TableDefinition,
    create_dynamodb_client,
    ensure_tables,
    error_code,
)
from common.dynamodb.transactions import (
    batch_get_consistent,
    retry_on_transaction_conflict,
    storage_error_as_domain_error,
    transact_get,
    transact_write,
    update_item_once,
)

__all__ = [
    "ACHIEVEMENT_STATS",
    "ACHIEVEMENTS",
    "ACTIVITY_COUNTS",
    "ACTIVITIES",
    "ALL_TABLES",
    "LEVELS",
    "LEVEL_CHECKS",
    "LEVEL_REWARDS",
    "LEVEL_TABLE_VERSION_KEY",
    "RETRYABLE_ERROR_CODES",
    "STREAKS",
    "USER_ACHIEVEMENTS",
    "USER_PROGRESS",
    "XP_LEDGER",
    "CancellationReason",
    "CatalogCopies",
    "CatalogTable",
    "LevelTableCache",
    "version_bump",
    "version_check",
    "ConditionalCheckFailed",
    "DynamoDBClient",
    "DynamoDBError",
    "TableDefinition",
    "TransactionCancelled",
    "attr",
    "batch_get_consistent",
    "create_dynamodb_client",
    "decode_page_token",
    "encode_page_token",
    "ensure_tables",
    "error_code",
    "from_item",
    "ledger_entry_from",
    "ledger_put",
    "mark_level_check_deferred",
    "mark_unlocks_deferred",
    "level_reached_from",
    "read_levels_reached",
    "read_progress",
    "retry_on_transaction_conflict",
    "rewards_from",
    "storage_error_as_domain_error",
    "to_item",
    "transact_get",
    "transact_write",
    "update_item_once",
]
