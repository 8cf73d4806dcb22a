"""WHERE clauses built from optional filters, every value a bound parameter.

Names are matched literally: a session prefix is a range on the indexed column
(``session_id >= 'a_b' AND session_id < 'a_c'``), never a LIKE pattern, so ``%`` and ``_``
mean themselves and ``a_b`` cannot match ``axb``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Where"]


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``."""
    for i in range(len(prefix) - 1, -1, -1):
        code = ord(prefix[i])
        if code < 0x10FFFF:
            return prefix[:i] + chr(code + 1)
    return None


class Where:
    """Accumulates conditions and their parameters."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.params: list[Any] = []

    def add(self, condition: str, *params: Any) -> Where:
        self.conditions.append(condition)
        self.params.extend(params)
        return self

    def equals(self, column: str, value: Any) -> Where:
        if value is not None:
            self.add(f"{column} = ?", value)
        return self

    def prefix(self, column: str, prefix: str | None) -> Where:
        if prefix:
            upper = prefix_upper_bound(prefix)
            if upper is None:
                self.add(f"{column} >= ?", prefix)
            else:
                self.add(f"{column} >= ? AND {column} < ?", prefix, upper)
        return self

    def sql(self) -> str:
        return " WHERE " + " AND ".join(self.conditions) if self.conditions else ""
