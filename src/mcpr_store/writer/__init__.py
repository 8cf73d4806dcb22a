"""The writer process: the only writer of the database, fed by the queue.

``_launch`` starts it as ``from mcpr_store.writer import main; main()``. Its parts, each
with its contract in its docstring:

- ``_reader``: takes messages off the queue into memory (``Pending``), never waiting inside
  the queue, within the memory bounds, reading ahead only when the queue fills up;
- ``_committer``: commits what is pending, batch by batch, retries a failed transaction
  with backoff, answers flushes, and keeps the books of what was committed and refused;
- ``_registry``: the producers' rows in the shared books, claimed on a first message and
  retired when a producer detaches or dies;
- ``_loop``: the loop that drives them, the stop, the orphan's bounds, the watchdog thread
  and the process's entry.

This process imports the wire, the books, the batch SQL and the database layer, nothing of
the proxy side (``tests/faults/test_books.py`` checks).
"""

from ._loop import Writer, main

__all__ = ["Writer", "main"]
