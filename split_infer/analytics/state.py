"""Reading the analytics checkpoint back: plain JSON values, each checked as it is taken.

The checkpoint lives in Redis, which other programs can write, so nothing in it is trusted: every
value is checked for its type, every number for being finite and in range, every list and text
for its size, and anything else is one `StateError` that says where (docs/analytics.md,
"Checkpoint format"). Nothing here imports code by name or calls anything the data chooses.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from split_infer.analytics.scene_config import Units

MAX_ITEMS = 100_000  # any list or mapping in a checkpoint
MAX_TEXT = 1_000  # any name or session id
MAX_INT = 2**53  # integers stay exact in every JSON reader


class StateError(ValueError):
    """A checkpoint that is not a valid analytics state: the message says which value and why."""


class StateReader:
    """One JSON object of a checkpoint; `path` names it in errors (e.g. `analytics.lines[0]`)."""

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, dict):
            raise StateError(f"{path} is a {type(value).__name__}, not an object")
        self.obj, self.path = value, path

    def raw(self, key: str) -> Any:
        if key not in self.obj:
            raise StateError(f"{self.path} lacks {key!r}")
        return self.obj[key]

    def _at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def num(self, key: str) -> float:
        return number(self.raw(key), self._at(key))

    def opt_num(self, key: str) -> float | None:
        value = self.raw(key)
        return None if value is None else number(value, self._at(key))

    def whole(self, key: str, lo: int = -MAX_INT, hi: int = MAX_INT) -> int:
        return integer(self.raw(key), self._at(key), lo, hi)

    def text(self, key: str) -> str:
        return text(self.raw(key), self._at(key))

    def opt_text(self, key: str) -> str | None:
        value = self.raw(key)
        return None if value is None else text(value, self._at(key))

    def flag(self, key: str) -> bool:
        value = self.raw(key)
        if not isinstance(value, bool):
            raise StateError(f"{self._at(key)} is not true or false")
        return value

    def array(self, key: str, max_items: int = MAX_ITEMS) -> list[Any]:
        return items(self.raw(key), self._at(key), max_items)

    def objects(self, key: str, max_items: int = MAX_ITEMS) -> list[StateReader]:
        path = self._at(key)
        return [StateReader(v, f"{path}[{i}]") for i, v in enumerate(items(self.raw(key), path, max_items))]

    def obj_at(self, key: str) -> StateReader:
        return StateReader(self.raw(key), self._at(key))

    def point(self, key: str) -> tuple[float, float]:
        return point(self.raw(key), self._at(key))

    def opt_point(self, key: str) -> tuple[float, float] | None:
        value = self.raw(key)
        return None if value is None else point(value, self._at(key))

    def units(self) -> Units:
        """A shape's `units` (absent in checkpoints written before units existed: pixels)."""
        value = self.obj.get("units", Units.pixels.value)
        if value not in {u.value for u in Units}:
            raise StateError(f"{self._at('units')} is not one of {[u.value for u in Units]}")
        return Units(value)

    def size(self, key: str) -> tuple[int, int] | None:
        """An optional [width, height] of positive whole numbers (absent: None)."""
        value = self.obj.get(key)
        if value is None:
            return None
        w, h = pair_of(value, self._at(key))
        return integer(w, f"{self._at(key)}[0]", 1), integer(h, f"{self._at(key)}[1]", 1)

    def texts(self, key: str, max_items: int = MAX_ITEMS) -> list[str]:
        path = self._at(key)
        return [text(v, f"{path}[{i}]") for i, v in enumerate(items(self.raw(key), path, max_items))]

    def names(self, key: str) -> frozenset[str]:
        return frozenset(self.texts(key))

    def tally(self, key: str, whole: bool = True) -> Counter[Any]:
        """A [[name, number], ...] list (kept in order: ties go to the first) -> Counter."""
        path = self._at(key)
        out: Any = Counter()  # whole numbers, or seconds and scores (floats)
        for i, pair in enumerate(items(self.raw(key), path)):
            name, value = pair_of(pair, f"{path}[{i}]")
            amount: float = integer(value, f"{path}[{i}][1]", 0) if whole else number(value, f"{path}[{i}][1]")
            out[text(name, f"{path}[{i}][0]")] = amount
        return out

    def matrix(self, key: str, shape: tuple[int, int]) -> np.ndarray:
        """A float64 matrix of exactly `shape`, stored as a list of rows."""
        path = self._at(key)
        rows = items(self.raw(key), path, shape[0])
        if len(rows) != shape[0]:
            raise StateError(f"{path} has {len(rows)} rows, not {shape[0]}")
        out = np.empty(shape, dtype=np.float64)
        for i, row in enumerate(rows):
            cells = items(row, f"{path}[{i}]", shape[1])
            if len(cells) != shape[1]:
                raise StateError(f"{path}[{i}] has {len(cells)} values, not {shape[1]}")
            out[i] = [number(c, f"{path}[{i}][{j}]") for j, c in enumerate(cells)]
        return out


def number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StateError(f"{path} is not a number")
    try:
        out = float(value)
    except OverflowError:
        raise StateError(f"{path} is out of range") from None
    if not math.isfinite(out):
        raise StateError(f"{path} is not a finite number")
    return out


def integer(value: object, path: str, lo: int = -MAX_INT, hi: int = MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StateError(f"{path} is not a whole number")
    if not lo <= value <= hi:
        raise StateError(f"{path} is {value}, outside [{lo}, {hi}]")
    return value


def text(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise StateError(f"{path} is not text")
    if len(value) > MAX_TEXT:
        raise StateError(f"{path} is longer than {MAX_TEXT} characters")
    return value


def items(value: object, path: str, max_items: int = MAX_ITEMS) -> list[Any]:
    if not isinstance(value, list):
        raise StateError(f"{path} is not a list")
    if len(value) > max_items:
        raise StateError(f"{path} has {len(value)} items, more than {max_items}")
    return value


def pair_of(value: object, path: str) -> tuple[Any, Any]:
    pair = items(value, path, 2)
    if len(pair) != 2:
        raise StateError(f"{path} is not a pair")
    return pair[0], pair[1]


def point(value: object, path: str) -> tuple[float, float]:
    x, y = pair_of(value, path)
    return number(x, f"{path}[0]"), number(y, f"{path}[1]")


def matrix_json(m: np.ndarray) -> list[list[float]]:
    """A float matrix as rows of Python floats (JSON keeps a float exactly: it writes its repr)."""
    return [[float(v) for v in row] for row in np.asarray(m, dtype=np.float64)]
