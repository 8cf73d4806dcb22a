"""_payload: floats written as serde_json (Rust's ryu) writes them, at every boundary.

ryu writes a finite float positionally when 1e-5 <= |x| < 1e16 and in exponent form
otherwise; Python's ``repr`` switches at 1e-4 instead, so 1e-5 <= |x| < 1e-4 is where a
layout copied from ``repr`` goes wrong, and the boundaries are where an off-by-one does.
"""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpr_store._payload import canonical_json

#: serde_json's own output for these (ryu's ``format64``: positional while the decimal
#: point sits within 5 places left of the first digit, up to 16 places right of it).
SERDE: list[tuple[float, str]] = [
    (1e-5, "0.00001"),
    (-1e-5, "-0.00001"),
    (1.5e-5, "0.000015"),
    (1.23456789e-5, "0.0000123456789"),
    (9.999999999999999e-5, "0.00009999999999999999"),
    (1e-4, "0.0001"),
    (0.00012, "0.00012"),
    (0.001, "0.001"),
    (9.99e-6, "9.99e-6"),
    (1e-6, "1e-6"),
    (-1e-6, "-1e-6"),
    (1.5e-6, "1.5e-6"),
    (1.234e-6, "1.234e-6"),
    (1e-7, "1e-7"),
    (5e-324, "5e-324"),
    (0.5, "0.5"),
    (1.0, "1.0"),
    (123.456, "123.456"),
    (1e15, "1000000000000000.0"),
    (9999999999999998.0, "9999999999999998.0"),
    (1e16, "1e16"),
    (1.5e16, "1.5e16"),
    (1e22, "1e22"),
    (1.7976931348623157e308, "1.7976931348623157e308"),
]


@pytest.mark.parametrize(("number", "text"), SERDE)
def test_float__written_as_serde_json_writes_it(number: float, text: str) -> None:
    assert canonical_json(number) == text


_LAYOUT = re.compile(r"-?(?:[1-9]\d*|0)\.\d+|-?[1-9](?:\.\d*[1-9])?e-?[1-9]\d*")


@settings(max_examples=2000, deadline=None, derandomize=True)
@given(st.floats(allow_nan=False, allow_infinity=False)
       | st.floats(min_value=1e-7, max_value=1e-3)
       | st.floats(min_value=1e14, max_value=1e18))
def test_float__round_trips_shortest_with_ryus_layout(number: float) -> None:
    text = canonical_json(number)
    assert float(text) == number and math.copysign(1, float(text)) == math.copysign(1, number)
    assert _LAYOUT.fullmatch(text), text  # no "+", no leading zero in an exponent
    positional = number == 0 or 1e-5 <= abs(number) < 1e16
    assert ("e" not in text) == positional, text
    digits = re.sub(r"e.*|[-.]", "", text).strip("0") or "0"
    shortest = re.sub(r"e.*|[-.]", "", repr(abs(number))).strip("0") or "0"
    assert digits == shortest, text
