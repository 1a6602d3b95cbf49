"""How record fields are written and read: what every record of this package shares.

For the record modules of this package; the records themselves are the API.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

# What a record writes: redis-py's own field and value types (it turns numbers into text itself).
FieldValue = bytes | bytearray | memoryview | str | int | float
Fields = dict[FieldValue, FieldValue]
# What a record reads, field name -> value: what redis-py returns (bytes), what a record wrote,
# or what a test or a fixture holds (text and numbers; a number reads as its str()). Checked
# when read, so typed loosely here.
RawFields = Mapping[Any, Any]

T = TypeVar("T")


class RecordError(ValueError):
    """A record that cannot be read: a missing field, a bad number, bad JSON, text that is not UTF-8."""


# -- reading fields ------------------------------------------------------------------------------


def text_of(value: object, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            raise RecordError(f"{what} is not UTF-8 text") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RecordError(f"{what} is a {type(value).__name__}, not text")


def finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def whole_number(value: object) -> int:
    """A JSON number that is a whole number (2 or 2.0; not true, 2.5 or "2")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:  # json gives up on deep nesting this way
        raise ValueError("JSON nested too deeply") from None


def timings_json(text: str) -> dict[str, float]:
    value = parse_json(text)
    if not isinstance(value, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
        raise ValueError("not a JSON object of numbers")
    return value


class FieldReader:
    """One record's fields by name. `get` refuses a missing or unreadable field with a RecordError
    that names the record and the field; `optional` gives None for a missing one."""

    def __init__(self, record: str, raw: RawFields) -> None:
        if not isinstance(raw, Mapping):
            raise RecordError(f"{record}: fields are a {type(raw).__name__}, not a mapping")
        self.record = record
        self.fields = {text_of(k, f"a field name of the {record}"): v for k, v in raw.items()}

    def raw(self, name: str) -> object:
        if name not in self.fields:
            raise RecordError(f"{self.record} lacks field {name!r}")
        return self.fields[name]

    def get(self, name: str, parse: Callable[[str], T]) -> T:
        text = text_of(self.raw(name), f"field {name!r} of the {self.record}")
        try:
            return parse(text)
        except RecordError:
            raise  # already says what is wrong (e.g. which detection)
        except (ValueError, TypeError, OverflowError) as e:
            raise RecordError(f"{self.record} has a bad value in field {name!r}: {e}") from None

    def optional(self, name: str, parse: Callable[[str], T]) -> T | None:
        return self.get(name, parse) if name in self.fields else None

    def text(self, name: str) -> str:
        return self.get(name, str)

    def binary(self, name: str) -> bytes:
        value = self.raw(name)
        return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else text_of(value, name).encode()

    def seq(self) -> int:
        seq = self.get("seq", int)
        if seq < 0:
            raise RecordError(f"{self.record} has a bad value in field 'seq': {seq} is negative")
        return seq


def lenient(raw: RawFields) -> dict[str, str]:
    """Every field whose name and value are UTF-8 text; the others are left out."""
    if not isinstance(raw, Mapping):
        raise RecordError(f"fields are a {type(raw).__name__}, not a mapping")
    out = {}
    for k, v in raw.items():
        try:
            out[text_of(k, "")] = text_of(v, "")
        except RecordError:
            continue
    return out


def number_or_none(text: str | None) -> float | None:
    try:
        return finite(text) if text is not None else None
    except ValueError:
        return None


def count_or_none(text: str | None) -> int | None:
    value = number_or_none(text)
    return int(value) if value is not None else None


def compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
