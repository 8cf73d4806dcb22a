"""The producer side: the handle a proxy holds, in every process that records.

- ``_store``: ``Store``: ``open``, the non-blocking ``record()``, ``flush``, ``stats``,
  ``shutdown``; the hand-off to forked and spawned children,
- ``_producer``: one process's buffers and its sender thread, which alone touches the queue,
- ``_lifecycle``: one handle's life (open, closing, stop sent, writer done, settled), one
  actor per step, and what every writer epoch is owed,
- ``_supervisor``: the owner's watch over the writer process: start (through ``_launch``,
  the hand-over both sides share), replace, stop.

Nothing is imported here (``mcpr_store.Store`` is the public name); the writer process never
imports this package.
"""
