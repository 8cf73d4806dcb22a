"""Server schema payloads as the original writes them: serde_json's text, byte for byte.

The original proxy parses an MCP server's ``result`` into a ``serde_json::Value`` (objects are
sorted maps) and stores ``to_string`` of it; ``schema_hash`` is the SHA-256 of those bytes.
For a store of ours and the original to agree on ``payload`` and on the hash (and so not log a
spurious ``updated`` change when both write one database), a payload given as a Python value
is serialised the same way: compact, object keys sorted, non-ASCII written raw, only ``"``,
``\\`` and control characters escaped, floats in Rust's shortest round-trip form (``1e-7``,
``1e22``, ``0.5``, ``1.0``), non-finite floats as ``null`` (serde_json cannot hold them),
integers beyond 64 bits as the float serde_json would have parsed them into.

``json.dumps`` differs on the floats and on ``ensure_ascii``, so this is our own writer;
strings go through the stdlib's C escaper. Never used on the hot path: schemas are captured
a few times per session.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Final

__all__ = ["MAX_DEPTH", "canonical_json", "payload_hash"]

#: serde_json refuses to parse JSON nested deeper than 128 levels, so no payload the
#: original stores is deeper; we allow twice that and refuse deeper with a clear error.
MAX_DEPTH: Final = 256
_I64_MIN: Final = -(2**63)
_U64_MAX: Final = 2**64 - 1
# ensure_ascii=False escaping: '"', '\\' and U+0000-U+001F only, like serde_json.
_escape = json.encoder.encode_basestring


def payload_hash(text: str) -> str:
    """SHA-256 hex of the payload's UTF-8 bytes, as stored in ``schema_hash``.

    A lone surrogate (which no JSON parser of the original could have produced) is hashed as
    the UTF-8 encoder's ``surrogatepass`` bytes rather than failing.
    """
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def canonical_json(value: Any) -> str:
    """``value`` (dicts, lists, tuples, str, int, float, bool, None) as serde_json writes it.

    Raises ``ValueError`` naming the problem for anything else: another type, a non-string
    object key, or nesting deeper than ``MAX_DEPTH``.
    """
    parts: list[str] = []
    try:
        _write(value, parts, 0)
    except RecursionError:  # the caller was already deep in its own stack
        raise ValueError("payload is nested deeper than this thread's stack allows") from None
    return "".join(parts)


def _write(value: Any, out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"payload is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        out.append(_string(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(int(value)) if _I64_MIN <= value <= _U64_MAX else _float(float(value)))
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value, key=_key)):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out, depth + 1)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    else:
        raise ValueError(f"a {type(value).__name__} cannot be written as JSON")


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise ValueError(f"object keys must be strings, not {type(key).__name__}")
    return key


def _string(text: str) -> str:
    escaped: str = _escape(str(text))
    try:
        escaped.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate cannot be written raw: keep it as the JSON escape it came from.
        escaped = "".join(f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c
                          for c in escaped)
    return escaped


def _float(number: float) -> str:
    """Rust's ryu ``format_finite`` of ``number``; ``null`` when it is not finite."""
    if not math.isfinite(number):
        return "null"
    if number == 0:
        return "-0.0" if math.copysign(1.0, number) < 0 else "0.0"
    sign = "-" if number < 0 else ""
    # repr() is the shortest round-trip form too; only its layout differs from ryu's.
    mantissa, _, exp = repr(abs(number)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # ``point``: where the decimal point sits relative to the first significant digit.
    point = len(whole.lstrip("0")) if whole.strip("0") else -(len(fraction) - len(
        fraction.lstrip("0")))
    point += int(exp or 0)
    digits = digits.rstrip("0") or "0"
    length = len(digits)
    if point - length >= 0 and point <= 16:  # an integer: digits, zeros, ".0"
        return f"{sign}{digits}{'0' * (point - length)}.0"
    if 0 < point <= 16:  # the point falls inside the digits
        return f"{sign}{digits[:point]}.{digits[point:]}"
    if -5 < point <= 0:  # a small number: "0.", zeros, digits
        return f"{sign}0.{'0' * -point}{digits}"
    exponent = point - 1
    if length == 1:
        return f"{sign}{digits}e{exponent}"
    return f"{sign}{digits[0]}.{digits[1:]}e{exponent}"
