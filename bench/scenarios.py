"""The measurements, each one function run the same way against every design.

Each scenario opens a fresh instance of the design on a fresh database, drives it with the
same synthetic traffic (``bench.traffic``), closes it and returns plain numbers. Accounting
is checked against the database itself: what reached it is counted in the file
(``sink.stored_events``), what was dropped is the design's own count, and whatever is
neither is reported as ``unaccounted``, never computed away.

What the harness itself costs, and so may distort:
- the ``for`` loop and the call around ``record()``: design 1's ``record()`` does nothing,
  so its producer cost is exactly that overhead, included in every other design's figure;
- timing each ``record()`` (overload) adds two ``perf_counter_ns()`` calls, about 0.1 µs,
  and the ``sleep`` between ticks lets the OS preempt a call: on a shared machine a single
  long call may be the scheduler, hence p99.9 beside the maximum;
- latency is seen by a reader process (``bench.reader``) polling the database every
  millisecond, so every latency carries up to 1 ms of polling and the reader takes a
  little CPU;
- the sustained scenario asks the design for its counts every 500 events to keep its
  backlog under half the smallest buffer (for mcpr-store that is ``stats()``, some 50-100
  µs, spent in the producer thread);
- the backlog scenario asks for the counts every few milliseconds while it waits for the
  last commit (and nudges ``flush``, which only matters to design 6), and its events are
  built in the recording loop as a proxy builds them, about 1.5 µs each.

A scenario never decides whether a number is good: it has no thresholds.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import faster_fifo
import psutil

from mcpr_store import RequestEvent

from . import sink
from .designs import Design, NoStore
from .traffic import Traffic

__all__ = ["Params", "handle_request", "percentile", "run_scenarios"]

#: Where ``bench`` can be imported from, for the helper processes started with ``-m``.
_PACKAGE_ROOT: Final = Path(__file__).resolve().parent.parent
#: Sustained scenario: the producer pauses while this many events are in flight, half of the
#: smallest bounded buffer (10,000 events), so a design is kept busy but never drops.
_BACKLOG: Final = 5_000
_SETTLE_TIMEOUT: Final = 120.0
_SHUTDOWN_TIMEOUT: Final = 120.0
_MIB: Final = 1024 * 1024

Result = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Params:
    """Sizes and durations of one benchmark run (``--quick`` shrinks them)."""

    producer_events: int = 50_000
    producer_burst: int = 5_000
    latency_rate: int = 1_000  # events/s, the original's design point
    latency_seconds: float = 3.0
    latency_warmup: float = 0.3  # traffic before the measured window
    latency_tail: float = 0.5  # traffic after it: longer than any design's batch interval
    idle_samples: int = 3
    idle_gap: float = 0.5  # quiet time before each idle event
    idle_wait: float = 1.0  # after this an idle event counts as "not committed while idle"
    sustained_seconds: float = 2.0
    overload_seconds: float = 2.0
    overload_factor: float = 2.0
    pending_events: int = 10_000
    backlog_events: int = 100_000
    backlog_record_limit: float = 20.0  # seconds; a design whose record() commits stops here
    capacity_seconds: float = 2.0  # per offered rate tried
    capacity_steps: int = 8
    gil_seconds: float = 2.0
    gil_threads: int = 4
    work_iterations: int = 0  # calibrated by the runner: see ``handle_request``
    work_us: float = 0.0  # what the calibration measured for ``work_iterations``


def handle_request(iterations: int) -> int:
    """Pure-Python work standing for a request handler: arithmetic that holds the GIL."""
    acc = 0
    for i in range(iterations):
        acc = (acc + i * i) % 1_000_003
    return acc


# --- helpers ----------------------------------------------------------------------------------


def percentile(ordered: list[float] | array.array[int], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of already sorted values."""
    if not ordered:
        raise ValueError("no values")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def _threads_cpu() -> dict[int, float]:
    """CPU seconds of every thread of this process except the caller's, by thread id."""
    me = threading.get_ident()
    cpu: dict[int, float] = {}
    for thread in threading.enumerate():
        if thread.ident is None or thread.ident == me:
            continue
        with contextlib.suppress(OSError):  # it ended meanwhile
            cpu[thread.ident] = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return cpu


def _settle(design: Design, offered: int, timeout: float = _SETTLE_TIMEOUT) -> None:
    """Wait until every offered event is committed or dropped (nudging ``flush``)."""
    if not design.stores:
        return
    deadline = time.monotonic() + timeout
    while True:
        design.flush()
        counts = design.counts()
        if counts.committed + counts.dropped + counts.lost >= offered:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{design.key}: {offered - counts.committed - counts.dropped} "
                               f"events neither committed nor dropped after {timeout} s")
        time.sleep(0.005)


def _wait_committed(design: Design, target: int, timeout: float) -> bool:
    """Wait without nudging until ``target`` events are committed; False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while design.counts().committed < target:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
    return True


def _rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return float(psutil.Process(pid).memory_info().rss) / _MIB
    except psutil.Error:
        return None


def _reset_peak_rss(pid: int | None) -> bool:
    """Reset the process's peak RSS (``VmHWM``) to its current RSS (Linux 4.0+)."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _peak_rss_mib(pid: int | None) -> float | None:
    """The process's peak RSS since ``_reset_peak_rss`` (``VmHWM``)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _process_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) a process has used so far."""
    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def _books(design: Design, path: Path, offered: int) -> Result:
    """After shutdown: the design's books checked against the rows in the file."""
    counts = design.counts()
    stored = sink.stored_events(path)
    return {"offered": offered, "committed": stored, "dropped": counts.dropped,
            "reported_committed": counts.committed,
            "unaccounted": offered - stored - counts.dropped}


class _Opened:
    """A fresh database and a fresh instance of the design on it."""

    def __init__(self, cls: type[Design], tmp: Path, name: str) -> None:
        self.path = tmp / f"{cls.key}-{name}.db"
        sink.create(self.path)
        self.design = cls()
        self.design.open(self.path)


# --- scenarios --------------------------------------------------------------------------------


def producer_cost(cls: type[Design], p: Params, tmp: Path) -> Result:
    """CPU per ``record()`` in a tight loop, and with the CPU of the design's other threads.

    Events are built before each burst, so only ``record()`` is timed. Bursts fit every
    design's buffer; after each the harness waits until all is committed (its own waiting
    is not counted), so the second figure holds everything the proxy process spent to hand
    the events over: a sender or feeder thread, or an in-process writer.
    """
    opened = _Opened(cls, tmp, "producer")
    design = opened.design
    traffic = Traffic(1)
    warm = traffic.take(500)  # starts lazy threads and warms caches; not measured
    for event in warm:
        design.record(event)
    offered = len(warm)
    _settle(design, offered)
    call = 0.0
    threads_before = _threads_cpu()
    for _ in range(0, p.producer_events, p.producer_burst):
        burst = traffic.take(p.producer_burst)
        record = design.record
        t0 = time.thread_time()
        for event in burst:
            record(event)
        call += time.thread_time() - t0
        offered += len(burst)
        _settle(design, offered)
    threads_after = _threads_cpu()
    helpers = sum(cpu - threads_before.get(ident, 0.0) for ident, cpu in threads_after.items())
    n = offered - len(warm)
    dropped = design.counts().dropped
    design.shutdown(_SHUTDOWN_TIMEOUT)
    result: Result = {"producer_call_us": call / n * 1e6,
                      "producer_total_us": (call + helpers) / n * 1e6,
                      "producer_dropped": dropped}
    if not cls.stores:  # the harness's own footprint, for the memory table
        result["proxy_rss_mib"] = _rss_mib(os.getpid())
    return result


def latency(cls: type[Design], p: Params, tmp: Path) -> Result:
    """Time from ``record()`` to the row being visible, at a moderate rate and when idle.

    Requests are timed in a window after a warm-up and before a tail of more traffic, so
    no measured event waits for the end of the run. Idle events come after a quiet gap; one
    not committed within ``idle_wait`` counts as not committed while idle (a design that
    commits only when the next event arrives).
    """
    opened = _Opened(cls, tmp, "latency")
    design = opened.design
    reader = subprocess.Popen([sys.executable, "-m", "bench.reader", str(opened.path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=_PACKAGE_ROOT)
    assert reader.stdin is not None and reader.stdout is not None
    try:
        if reader.stdout.readline().strip() != "ready":
            raise RuntimeError("latency reader did not start")
        traffic = Traffic(2)
        warmup, tail = p.latency_warmup, p.latency_tail
        sent: dict[str, float] = {}
        offered = 0
        start = time.perf_counter()
        while True:
            due = start + offered / p.latency_rate
            if due - start >= warmup + p.latency_seconds + tail:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            event = traffic.next()
            t = time.perf_counter()
            design.record(event)
            offered += 1
            if type(event) is RequestEvent and warmup <= t - start < warmup + p.latency_seconds:
                sent[event.request_id] = t
        _settle(design, offered)
        idle_sent: dict[str, float] = {}
        idle_missed = 0
        for _ in range(p.idle_samples):
            time.sleep(p.idle_gap)
            committed = design.counts().committed
            events = traffic.next_request()
            t = time.perf_counter()
            for event in events:
                design.record(event)
            offered += len(events)
            if _wait_committed(design, committed + len(events), p.idle_wait):
                idle_sent[events[-1].request_id] = t  # type: ignore[union-attr]
            else:
                idle_missed += 1
            _settle(design, offered)
        out, _ = reader.communicate("stop\n", timeout=60)
        seen: dict[str, float] = dict(json.loads(out))
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    design.shutdown(_SHUTDOWN_TIMEOUT)
    latencies = sorted((seen[rid] - t) * 1e3 for rid, t in sent.items() if rid in seen)
    missing = sum(1 for rid in sent if rid not in seen)
    if missing:
        raise RuntimeError(f"{cls.key}: {missing} committed requests never seen by the reader")
    idle = [(seen[rid] - t) * 1e3 for rid, t in idle_sent.items() if rid in seen]
    step = max(1, len(latencies) // 2000)
    return {"latency_p50_ms": percentile(latencies, 50),
            "latency_p99_ms": percentile(latencies, 99),
            "latency_max_ms": latencies[-1],
            "idle_latency_ms": statistics.median(idle) if idle else None,
            "idle_missed": idle_missed,
            "latency_samples_ms": latencies[::step]}


def sustained(cls: type[Design], p: Params, tmp: Path) -> Result:
    """Committed events/s while the design always has work and never drops.

    The producer offers events as fast as it can while fewer than ``_BACKLOG`` are in
    flight; the rate is the commits counted over the run after a warm-up fifth. Also the
    RSS of the proxy process and of the writer process at the end, under this load.
    """
    opened = _Opened(cls, tmp, "sustained")
    design = opened.design
    traffic = Traffic(3)
    warm_until = p.sustained_seconds * 0.2
    offered = 0
    start = time.perf_counter()
    warm: tuple[float, int] | None = None  # (time, committed) when the warm-up ended
    while (now := time.perf_counter()) - start < p.sustained_seconds:
        counts = design.counts()
        if warm is None and now - start >= warm_until:
            warm = (now, counts.committed)
        if offered - counts.committed - counts.dropped > _BACKLOG:
            time.sleep(0.0005)
            continue
        for event in traffic.take(500):
            design.record(event)
        offered += 500
    end_counts = design.counts()
    t_end = time.perf_counter()
    t_warm, committed_at_warm = warm or (start, 0)  # a design slower than one chunk
    rss_proxy = _rss_mib(os.getpid())
    rss_writer = _rss_mib(design.writer_pid())
    design.shutdown(_SHUTDOWN_TIMEOUT)
    books = _books(design, opened.path, offered)
    return {"sustained_per_s": (end_counts.committed - committed_at_warm) / (t_end - t_warm),
            "sustained_dropped": books["dropped"], "sustained_unaccounted": books["unaccounted"],
            "proxy_rss_mib": rss_proxy, "writer_rss_mib": rss_writer}


def backlog(cls: type[Design], p: Params, tmp: Path) -> Result:
    """``backlog_events`` events recorded back to back, as fast as the proxy can, then
    committed events/s from the first ``record()`` until every event is committed or dropped:
    the writer's speed when it holds a backlog, which a busy proxy's bursts give it.

    Also the peak RSS of the proxy process and of the writer process over the scenario, and
    the books. A design whose ``record()`` commits (2a, 2b) is offered what it takes in
    ``backlog_record_limit`` seconds.
    """
    opened = _Opened(cls, tmp, "backlog")
    design = opened.design
    traffic = Traffic(9)
    writer = design.writer_pid()
    peaks = _reset_peak_rss(os.getpid()) and (writer is None or _reset_peak_rss(writer))
    writer_cpu = _process_cpu(writer)
    record = design.record
    offered = 0
    start = time.perf_counter()
    while offered < p.backlog_events:
        for event in traffic.take(min(1_000, p.backlog_events - offered)):
            record(event)
        offered = min(offered + 1_000, p.backlog_events)
        if time.perf_counter() - start >= p.backlog_record_limit:
            break
    recorded_s = time.perf_counter() - start
    _settle(design, offered, max(_SETTLE_TIMEOUT, offered / 2_000))  # 2a's speed, at worst
    elapsed = time.perf_counter() - start
    rss_proxy = _peak_rss_mib(os.getpid()) if peaks else None
    rss_writer = _peak_rss_mib(writer) if peaks else None
    writer_cpu_after = _process_cpu(writer)
    design.shutdown(_SHUTDOWN_TIMEOUT)
    books = _books(design, opened.path, offered)
    cpu_us = None
    if writer_cpu is not None and writer_cpu_after is not None and books["committed"]:
        cpu_us = (writer_cpu_after - writer_cpu) / books["committed"] * 1e6
    return {"backlog_per_s": books["committed"] / elapsed, "backlog_record_s": recorded_s,
            "backlog_writer_cpu_us": cpu_us,
            "backlog_offered": offered, "backlog_committed": books["committed"],
            "backlog_dropped": books["dropped"], "backlog_unaccounted": books["unaccounted"],
            "backlog_proxy_peak_mib": rss_proxy, "backlog_writer_peak_mib": rss_writer}


def capacity(cls: type[Design], p: Params, tmp: Path, reference: float) -> Result:
    """The highest offered rate (events/s) a design keeps up with, without a cap on what is in
    flight: its real capacity, where the sustained scenario stops offering at 5,000 events in
    flight.

    Each try offers a fixed rate to a fresh instance for ``capacity_seconds``; the design
    keeps up when it drops nothing and commits at least 0.9 of what was offered over the
    second half (a design that falls behind commits its capacity and lets the rest pile up,
    then drops once its buffers are full: with large buffers, not within the try). Rates go
    up from 0.6 of ``reference`` (the design's rate measured just before) by 1.25 at a time
    until a try fails, or down from there until one passes; at most ``capacity_steps``
    tries. A design whose ``record()`` cannot take the rate offered (2a, 2b) ends the search
    there: its capacity is what the proxy could offer.
    """
    rate = 0.6 * reference
    kept: float | None = None
    fail: Result | None = None
    going: int | None = None  # +1 up, -1 down, after the first try
    record_bound = False
    unaccounted = 0
    for step in range(p.capacity_steps):
        tried = _offer(cls, p, tmp, rate, f"capacity-{step}")
        unaccounted += tried["unaccounted"]
        offer_bound = tried["offered_per_s"] < 0.9 * rate
        if not tried["dropped"] and tried["committed_share"] >= 0.9:
            kept = max(kept or 0.0, tried["offered_per_s"])
            record_bound = offer_bound
            if offer_bound or going == -1:
                break
            going = 1
            rate *= 1.25
        else:
            fail = tried
            if going == 1 or offer_bound:
                break
            going = -1
            rate /= 1.25
    return {"capacity_per_s": kept, "capacity_record_bound": int(record_bound),
            "capacity_fail_offered_per_s": fail["offered_per_s"] if fail else None,
            "capacity_fail_committed_share": fail["committed_share"] if fail else None,
            "capacity_fail_dropped": fail["dropped"] if fail else None,
            "capacity_unaccounted": unaccounted}


def _offer(cls: type[Design], p: Params, tmp: Path, rate: float, name: str) -> Result:
    """Events offered at ``rate`` for ``capacity_seconds`` to a fresh instance: the offered
    rate achieved, the share of the second half's offer committed meanwhile, the books."""
    opened = _Opened(cls, tmp, name)
    design = opened.design
    traffic = Traffic(10)
    offered = 0
    half: tuple[int, int] | None = None  # (offered, committed) at half-time
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < p.capacity_seconds:
        if half is None and elapsed >= p.capacity_seconds / 2:
            half = (offered, design.counts().committed)
        due = int(rate * elapsed) + 1
        if offered < due:
            events = traffic.take(min(due - offered, 1_000))
            record = design.record
            for event in events:
                record(event)
            offered += len(events)
        else:
            time.sleep(0.0005)
    elapsed = time.perf_counter() - start
    committed = design.counts().committed
    design.shutdown(_SHUTDOWN_TIMEOUT)
    books = _books(design, opened.path, offered)
    offered_half, committed_half = half or (0, 0)
    second = max(1, offered - offered_half)
    return {"offered_per_s": offered / elapsed,
            "committed_share": (committed - committed_half) / second,
            "dropped": books["dropped"], "unaccounted": books["unaccounted"]}


def overload(cls: type[Design], p: Params, tmp: Path, capacity: float) -> Result:
    """Events offered at ``overload_factor`` times ``capacity`` (events/s): every
    ``record()`` timed, then the books after shutdown.

    ``capacity`` is the design's own sustained rate, measured just before by the same
    worker. A design whose ``record()`` is slower than the offered rate (the synchronous
    one) is offered what it can take; the achieved offered rate is reported.
    """
    opened = _Opened(cls, tmp, "overload")
    design = opened.design
    traffic = Traffic(4)
    rate = capacity * p.overload_factor
    durations = array.array("q")
    offered = 0
    clock = time.perf_counter_ns
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < p.overload_seconds:
        due = int(rate * elapsed) + 1
        if offered < due:
            events = traffic.take(min(due - offered, 1_000))
            record = design.record
            for event in events:
                t0 = clock()
                record(event)
                durations.append(clock() - t0)
            offered += len(events)
        else:
            time.sleep(0.0005)
    offered_per_s = offered / (time.perf_counter() - start)
    rss_proxy = _rss_mib(os.getpid())
    rss_writer = _rss_mib(design.writer_pid())
    t0_shutdown = time.perf_counter()
    design.shutdown(_SHUTDOWN_TIMEOUT)
    drain = time.perf_counter() - t0_shutdown
    books = _books(design, opened.path, offered)
    ordered = array.array("q", sorted(durations))
    return {"overload_offered_per_s": offered_per_s,
            "overload_max_record_us": ordered[-1] / 1e3,
            "overload_p999_record_us": percentile(ordered, 99.9) / 1e3,
            "overload_offered": books["offered"], "overload_committed": books["committed"],
            "overload_dropped": books["dropped"], "overload_unaccounted": books["unaccounted"],
            "overload_proxy_rss_mib": rss_proxy, "overload_writer_rss_mib": rss_writer,
            "overload_drain_s": drain}


def shutdown_pending(cls: type[Design], p: Params, tmp: Path) -> Result:
    """``shutdown()`` right after ``pending_events`` events recorded in a tight loop."""
    opened = _Opened(cls, tmp, "shutdown")
    design = opened.design
    events = Traffic(5).take(p.pending_events)
    for event in events:
        design.record(event)
    t0 = time.perf_counter()
    design.shutdown(_SHUTDOWN_TIMEOUT)
    elapsed = time.perf_counter() - t0
    books = _books(design, opened.path, len(events))
    return {"shutdown_s": elapsed, "shutdown_committed_share": books["committed"] / len(events),
            "shutdown_unaccounted": books["unaccounted"]}


def gil_proxy(cls: type[Design], p: Params, tmp: Path, busy_core: bool = False) -> Result:
    """Requests/s of ``gil_threads`` threads that each run ``handle_request`` and record one
    event per request, flat out; then the share of the events that reached the database.

    With ``busy_core`` a process spins on the other core meanwhile: the control for designs
    whose writer process takes that core.
    """
    opened = _Opened(cls, tmp, "gil-busy" if busy_core else "gil")
    design = opened.design
    stop = threading.Event()
    barrier = threading.Barrier(p.gil_threads + 1)
    served = [0] * p.gil_threads

    def serve(index: int) -> None:
        traffic = Traffic(100 + index)
        record, work, iterations = design.record, handle_request, p.work_iterations
        n = 0
        barrier.wait()
        while not stop.is_set():
            work(iterations)
            record(traffic.next())
            n += 1
        served[index] = n

    spinner = (subprocess.Popen([sys.executable, "-c", "while True: pass"])
               if busy_core else None)
    try:
        threads = [threading.Thread(target=serve, args=(i,), name=f"bench-handler-{i}")
                   for i in range(p.gil_threads)]
        for thread in threads:
            thread.start()
        barrier.wait()
        t0 = time.perf_counter()
        cpu0 = _cpu_profile(design, threads)
        time.sleep(p.gil_seconds)
        cpu1 = _cpu_profile(design, threads)
        stop.set()
        elapsed = time.perf_counter() - t0
        for thread in threads:
            thread.join()
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    offered = sum(served)
    design.shutdown(_SHUTDOWN_TIMEOUT)
    result: Result = {"gil_rps": offered / elapsed}
    result.update({f"gil_{part}_cores": (cpu1[part] - cpu0[part]) / elapsed
                   for part in cpu0 if part in cpu1})
    result["gil_others_us"] = (cpu1["others"] - cpu0["others"]) / max(1, offered) * 1e6
    if cls.stores:
        books = _books(design, opened.path, offered)
        result.update({"gil_committed_share": books["committed"] / offered,
                       "gil_dropped": books["dropped"], "gil_unaccounted": books["unaccounted"]})
    return result


def _cpu_profile(design: Design, handlers: list[threading.Thread]) -> dict[str, float]:
    """CPU seconds so far of the request threads, of the proxy's other threads (a sender,
    a feeder, an in-process writer) and of a writer process: where the proxy's time goes."""
    ids = {thread.native_id for thread in handlers}
    handler = other = 0.0
    for thread in psutil.Process().threads():
        if thread.id in ids:
            handler += thread.user_time + thread.system_time
        else:
            other += thread.user_time + thread.system_time
    profile = {"handlers": handler, "others": other}
    pid = design.writer_pid()
    if pid is not None:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            profile["writer"] = times.user + times.system
    return profile


# --- baselines, measured in every worker beside the design they judge -----------------------


def gil_baseline(p: Params, tmp: Path, *, busy_core: bool) -> Result:
    """The GIL-heavy proxy with no store: alone, or with the other core kept busy."""
    result = gil_proxy(NoStore, p, tmp, busy_core=busy_core)
    if busy_core:
        return {"base_gil_busy_rps": result["gil_rps"]}
    return {"base_gil_rps": result["gil_rps"],
            "base_gil_handlers_cores": result["gil_handlers_cores"]}


def put_baseline(p: Params) -> Result:
    """CPU per faster-fifo ``put_nowait`` of one event (pickled) in a tight loop: the unit of
    the producer-cost ratio."""
    fifo = faster_fifo.Queue(max_size_bytes=16 * _MIB)
    for event in Traffic(7).take(100):  # the first puts touch fresh shared memory
        fifo.put_nowait(event)
    events = Traffic(8).take(p.producer_burst)
    put = fifo.put_nowait
    t0 = time.thread_time()
    for event in events:
        put(event)
    return {"base_put_us": (time.thread_time() - t0) / len(events) * 1e6}


def executemany_ceiling(p: Params, tmp: Path) -> Result:
    """Request rows/s of a plain loop: ``executemany`` of 500 rows, one transaction each:
    the SQLite ceiling of the sustained scenario, on the same schema and pragmas."""
    path = tmp / "ceiling.db"
    sink.create(path)
    conn = sink.connect(path)
    traffic = Traffic(6)
    rows = 0
    spent = 0.0
    while spent < p.sustained_seconds:
        batch = [e for e in traffic.take(500) if type(e) is RequestEvent]
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sink.INSERT_REQUEST, batch)
        conn.execute("COMMIT")
        spent += time.perf_counter() - t0
        rows += len(batch)
    conn.close()
    return {"base_ceiling_per_s": rows / spent}


def backlog_ceiling(p: Params, tmp: Path) -> Result:
    """Request rows/s of a plain loop over the backlog scenario's request rows:
    ``executemany`` of 500 rows per transaction, nothing else (no session rows, no
    counters, no books), on the same schema and pragmas: what SQLite itself allows here.
    Only the database calls are timed, not building the rows; their CPU time per row is the
    unit of the writer's CPU per event, a ratio a busy machine disturbs less than rates."""
    path = Path(tempfile.mkdtemp(dir=tmp)) / "backlog-ceiling.db"
    sink.create(path)
    conn = sink.connect(path)
    traffic = Traffic(9)
    rows = 0
    spent = cpu = 0.0
    batch: list[Any] = []
    left = p.backlog_events
    while left > 0 or batch:
        while left > 0 and len(batch) < 500:
            event = traffic.next()
            left -= 1
            if type(event) is RequestEvent:
                batch.append(event)
        t0, cpu0 = time.perf_counter(), time.thread_time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sink.INSERT_REQUEST, batch)
        conn.execute("COMMIT")
        spent += time.perf_counter() - t0
        cpu += time.thread_time() - cpu0
        rows += len(batch)
        batch = []
    conn.close()
    return {"base_backlog_ceiling_per_s": rows / spent,
            "base_backlog_ceiling_cpu_us": cpu / rows * 1e6}


def run_scenarios(cls: type[Design], p: Params, tmp: Path,
                  progress: Callable[[str], None]) -> Result:
    """Every scenario that applies to ``cls``, in a fixed order; the merged results.

    Every worker also measures the baselines (``base_*``), each right before (or, for the
    busy-core control, right after) the scenario it judges: on a shared machine a baseline
    taken minutes earlier in another process would carry other load.
    """
    result: Result = {}
    steps: list[tuple[str, Callable[[], Result]]] = [
        ("producer", lambda: producer_cost(cls, p, tmp)),
        ("put_nowait baseline", lambda: put_baseline(p))]
    if cls.stores:
        steps += [("latency", lambda: latency(cls, p, tmp)),
                  ("executemany baseline", lambda: executemany_ceiling(p, tmp)),
                  ("sustained", lambda: sustained(cls, p, tmp)),
                  ("backlog ceiling", lambda: backlog_ceiling(p, tmp)),
                  ("backlog", lambda: backlog(cls, p, tmp)),
                  ("capacity", lambda: capacity(cls, p, tmp, max(
                      result["sustained_per_s"], result["backlog_per_s"]))),
                  ("overload", lambda: overload(cls, p, tmp, result["sustained_per_s"])),
                  ("shutdown", lambda: shutdown_pending(cls, p, tmp)),
                  ("no-store baseline", lambda: gil_baseline(p, tmp, busy_core=False)),
                  ("gil", lambda: gil_proxy(cls, p, tmp)),
                  ("busy-core baseline", lambda: gil_baseline(p, tmp, busy_core=True))]
    else:
        steps += [("no-store baseline", lambda: gil_baseline(p, tmp, busy_core=False)),
                  ("busy-core baseline", lambda: gil_baseline(p, tmp, busy_core=True)),
                  ("executemany baseline", lambda: executemany_ceiling(p, tmp))]
    for name, step in steps:
        progress(name)
        result.update(step())
    if not cls.stores:  # design 1 is its own baseline
        result["gil_rps"] = result["base_gil_rps"]
    return result
