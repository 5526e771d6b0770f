"""Field rules shared by every servicer. Each check raises InvalidField naming
the field, so the edge can answer INVALID_ARGUMENT before anything is written."""

from __future__ import annotations

import unicodedata

from common.errors import InvalidField

MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 2000
MAX_XP = 1_000_000_000
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50


def _has_control_character(value: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value)


def _first_format_character(value: str) -> str | None:
    return next((ch for ch in value if unicodedata.category(ch) == "Cf"), None)


def _code_point(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}" + (f" ({name})" if name else "")


def require_id(field: str, value: str, *, max_length: int = MAX_ID_LENGTH) -> str:
    if not value:
        raise InvalidField(field, "is required")
    return optional_id(field, value, max_length=max_length)


def optional_id(field: str, value: str, *, max_length: int = MAX_ID_LENGTH) -> str:
    """An id is a key: one spelling per id. Invisible format characters (zero-width
    space and joiners, bidirectional controls, BOM) and other normalization forms
    would make ids that look alike, and print alike, name different users or entries."""
    if len(value) > max_length:
        raise InvalidField(field, f"must be at most {max_length} characters (got {len(value)})")
    if _has_control_character(value):
        raise InvalidField(field, "must not contain control characters")
    format_character = _first_format_character(value)
    if format_character is not None:
        raise InvalidField(field, f"must not contain format character {_code_point(format_character)}")
    if not unicodedata.is_normalized("NFC", value):
        raise InvalidField(field, "must be in Unicode NFC (normalization form C)")
    if value != value.strip():
        raise InvalidField(field, "must not start or end with white space")
    return value


def request_id(value: str, field: str = "request_id", *, max_length: int = MAX_ID_LENGTH) -> str:
    """Empty means 'not deduplicated'."""
    return optional_id(field, value, max_length=max_length)


def text(field: str, value: str, *, max_length: int, required: bool = False) -> str:
    if required and not value.strip():
        raise InvalidField(field, "is required")
    if len(value) > max_length:
        raise InvalidField(field, f"must be at most {max_length} characters (got {len(value)})")
    if _has_control_character(value.replace("\n", "").replace("\t", "")):
        raise InvalidField(field, "must not contain control characters")
    return value


def xp_amount(field: str, value: int) -> int:
    if value < 0:
        raise InvalidField(field, f"must not be negative (got {value})")
    if value > MAX_XP:
        raise InvalidField(field, f"must be at most {MAX_XP} (got {value})")
    return value


def page_size(value: int, field: str = "page_size") -> int:
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise InvalidField(field, f"must be between 1 and {MAX_PAGE_SIZE}, or 0 for {DEFAULT_PAGE_SIZE} (got {value})")
    return value


def present(field: str, has_field: bool) -> None:
    if not has_field:
        raise InvalidField(field, "is required")
