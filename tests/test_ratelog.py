"""The one rate-limited logger (``_ratelog``) of the writer and the producer's sender."""

from __future__ import annotations

import logging

import pytest
from helpers import wait_for

from mcpr_store._ratelog import RateLimitedLog


def test_warn__one_line_per_reason_per_interval_saying_how_many_it_stands_for(
    caplog: pytest.LogCaptureFixture
) -> None:
    log = RateLimitedLog(logging.getLogger("mcpr_store.test"), every=0.2)
    caplog.set_level(logging.WARNING, "mcpr_store.test")
    assert log.warn("a", "first a") is True
    assert log.warn("a", "second a") is False
    assert log.warn("a", "third a") is False
    assert log.warn("b", "first b") is True  # reasons are apart
    assert log.due("a") is False
    wait_for(lambda: log.due("a"), timeout=5, what="the interval")
    assert log.warn("a", "fourth a") is True
    assert log.warn("a", "fifth a", force=True) is True  # at once, whatever the rate
    assert [r.getMessage() for r in caplog.records] == [
        "first a", "first b", "fourth a (and 2 more like it)", "fifth a"]
    assert {r.filename for r in caplog.records} == {"test_ratelog.py"}  # the caller's line
