"""Benchmarks of mcpr-store, each against baselines measured beside it by the same process.

``python -m bench`` (the write side): the seven designs of issue 10, from no store at all
to mcpr-store, driven with the same synthetic MCP traffic into the same schema; it writes
``docs/benchmarks.md`` and charts. ``python -m bench.queries``: the read side's query times.
``python -m bench.scale_retention``: ``db vacuum`` beside a live writer (stall, failed
commits, memory); ``python -m bench.scale_ingest``: ingest per back end and owner count
against plain COPY and plain executemany (both also sections of ``python -m bench.scale``).

One module per concern: ``traffic`` (the events), ``sink`` (the SQL the alternatives share),
``designs`` (one class per design), ``scenarios`` (the measurements), ``worker`` (one design
in a fresh interpreter), ``reader`` (the latency probe), ``runner`` (runs and order),
``summary`` (medians and ratios), ``report`` and ``charts`` (the output). Importing this
package imports nothing else, so helper processes started with ``-m`` start fast.
"""
