"""The producer side: the handle a proxy holds, in every process that records.

- ``_store``: ``Store``: ``open``, the non-blocking ``record()``, ``flush``, ``stats``,
  ``shutdown``; the hand-off to forked and spawned children,
- ``_producer``: one process's buffers and its sender thread, which alone touches the queue,
- ``_lifecycle``: one handle's life (open, closing, stop sent, writer done, settled), one
  actor per step, and what every writer epoch is owed,
- ``_supervisor``: the owner's watch over the writer process: start, replace, stop,
- ``_launch``: how a writer process is started and handed the queue.

Nothing is imported here: the writer process reads its spec through ``_launch`` and must not
load the rest (``mcpr_store.Store`` is the public name).
"""
