"""_sse.SSEData: the data of each event of a stream read chunk by chunk."""

from __future__ import annotations

from mcpr_store._sse import SSEData

STREAM = (b": a comment\r\nevent: message\r\nid: 7\r\ndata: {\"a\":1}\r\n\r\n"
          b"data: line one\ndata:line two\n\n"
          b"retry: 10\rdata: cr\r\r"
          b"data\r\n\r\n")
EVENTS = [b'{"a":1}', b"line one\nline two", b"cr", b""]


def test_sse__events_are_the_same_however_the_stream_is_cut():
    whole = SSEData(1024).feed(STREAM)
    assert whole == EVENTS
    for size in (1, 2, 3, 7):
        parser = SSEData(1024)
        events = []
        for start in range(0, len(STREAM), size):
            events += parser.feed(STREAM[start:start + size])
        assert events == EVENTS, size


def test_sse__an_event_over_the_limit_is_dropped_and_counted():
    parser = SSEData(8)
    assert parser.feed(b"data: 0123456789\n\ndata: ok\n\n") == [b"ok"]
    assert parser.oversized == 1
