"""The lifecycle (``_lifecycle``): the stages of one handle's life, and what every writer is
owed, over real shared books (no processes: the writer's epoch is moved by hand)."""

from __future__ import annotations

from mcpr_store._books import G, SharedBooks
from mcpr_store.engine._lifecycle import Lifecycle, Stage


def _life(*, owner: bool = True, epoch: int = 1) -> tuple[SharedBooks, Lifecycle]:
    books = SharedBooks()
    books[G.WRITER_EPOCH] = epoch
    return books, Lifecycle(books, owner=owner)


def test_stages__owner_goes_open_closing_stop_sent_writer_done_settled() -> None:
    _, life = _life()
    assert life.stage is Stage.OPEN and not life.closing
    assert life.close(10.0)
    assert not life.close(20.0)  # closing already: the first deadline stands
    assert (life.stage, life.deadline) == (Stage.CLOSING, 10.0)
    life.sender_done = True
    assert life.stage is Stage.STOP_SENT and not life.done
    life.writer_done = True
    assert life.stage is Stage.WRITER_DONE and life.done
    life.retire()
    assert life.stage is Stage.SETTLED


def test_stages__a_worker_has_no_writer_to_wait_for() -> None:
    _, life = _life(owner=False)
    life.close(1.0)
    life.sender_done = True
    assert life.done and life.stage is Stage.WRITER_DONE


def test_stop__owed_to_every_writer_started_after_it_was_put_until_the_writer_is_done() -> None:
    books, life = _life()
    assert not life.stop_owed() and not life.final_sent  # nothing put yet
    life.stop_put(1)
    assert life.final_sent and not life.stop_owed()
    books[G.WRITER_EPOCH] = 2  # the writer that took it died; its replacement started
    assert life.stop_owed()
    life.stop_put(2)
    assert not life.stop_owed()
    books[G.WRITER_EPOCH] = 3
    life.writer_done = True  # (the supervisor saw the writer exit)
    assert not life.stop_owed()


def test_stop__a_workers_detach_is_never_put_twice() -> None:
    books, life = _life(owner=False)
    life.stop_put(1)
    books[G.WRITER_EPOCH] = 2
    assert not life.stop_owed()


def test_flush__owed_again_to_a_replacement_until_an_answer_covers_it() -> None:
    books, life = _life()
    row = books.claim(life.token, 1, 0)
    assert row is not None
    life.flush_put(5, 1)
    assert life.flush_owed() == 0  # the writer asked runs
    books[G.WRITER_EPOCH] = 2
    assert life.flush_owed() == 5
    life.flush_put(5, 2)
    assert life.flush_owed() == 0
    books[G.WRITER_EPOCH] = 3
    books.answer_flush(row, 5)
    assert life.flush_owed() == 0


def test_flush__owed_before_the_writer_has_claimed_a_row() -> None:
    books, life = _life()
    life.flush_put(1, 1)
    books[G.WRITER_EPOCH] = 2
    assert life.flush_owed() == 1


def test_flush_answer__carries_the_epoch_of_the_writer_that_answered() -> None:
    books, life = _life(epoch=3)
    row = books.claim(life.token, 1, 0)
    assert row is not None
    assert tuple(books.flush_answer(row)) == (0, 0)
    books.answer_flush(row, 7)
    assert tuple(books.flush_answer(row)) == (3, 7)
    books[G.WRITER_EPOCH] = 4
    books.answer_flush(row, 6)  # an older request answered late: the answer stands
    assert tuple(books.flush_answer(row)) == (3, 7)
    books.answer_flush(row, 2**39)
    assert tuple(books.flush_answer(row)) == (4, 2**39)
