"""The watchdog: memory while the training thread cannot reach a check (issue #24).

The guard checks in batch hooks, on the training thread. While that thread waits (a
``tf.data`` shuffle buffer filling before the first batch, a generator building a huge
batch) no hook runs, and nothing public interrupts a blocked ``tf.data`` ``GetNext``
from another thread (``os._exit`` works).

So a daemon thread watches the time since the training thread's last check:

- healthy (a check less than ``max(1 s, 10 x the typical time between checks)`` ago):
  it sleeps ``POLL_S``, reads no memory, and rewrites the heartbeat file (guard/
  heartbeat.py) from the training thread's latest reading about once a second;
- stuck: it reads memory itself every ``STUCK_POLL_S`` (host memory only, no GPU), and
  :func:`decide` says what to do from those readings.

"Before the kernel would kill" is judged on the *effective available* memory (the
container's limit less its working set, or the machine's available memory, whichever is
smaller), against the guard's own last-resort floor (``min_available_memory``, else
``emergency_available_memory``: 2% of the limit by default, else 0), projected at the
rate memory is growing while the training thread waits:

- ``"exit"`` when memory is growing and available memory is below the floor, or will
  reach it within ``LEAD_S`` at the current rate (time for one more reading, the
  flushes and the exit, with some margin for a rate that speeds up);
- ``"warn"`` when it will reach the floor within ``WARN_HORIZON_S``, or the process
  tree is over ``max_process_memory``;
- otherwise nothing. "Growing" needs both the available memory to fall and this process
  tree to grow (by ``NOISE`` at least), so another process filling the machine, or a
  stable reading below the floor, never ends this one.

A fit that raised (Keras then calls no hook): once no check came for ``STUCK_MIN_S``
and that ``fit`` is no longer on the training thread's stack (``sys._current_frames``),
the watchdog ends itself and calls ``on_fit_gone``: the guard stops its tracing and
closes its files there (issue #23).

On ``"exit"`` (``on_stuck="exit"``, one worker, the training thread not inside the
guard itself) it prints one line, flushes the figures and that line to TensorBoard and
the heartbeat, and calls ``os._exit(WATCHDOG_EXIT_CODE)``; otherwise it only prints.

Example:
    >>> dog = Watchdog(bounds, on_stuck="exit", writer=writer, heartbeat=beat,
    ...                where=lambda: ("train", 0, 0))
    >>> dog.start(snapshot())      # in on_train_begin
    >>> dog.checked(snap)          # at each check, on the training thread
    >>> dog.stop("ended")          # in on_train_end
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from keras_memguard.errors import WATCHDOG_EXIT_CODE, warn_once
from keras_memguard.guard.heartbeat import Heartbeat, heartbeat_header, limit_source
from keras_memguard.guard.policy import Bounds, available_floor
from keras_memguard.memory_snapshot import MIB, MemorySnapshot, snapshot
from keras_memguard.sizes import format_bytes

__all__ = [
    "LEAD_S",
    "ON_STUCK",
    "Reading",
    "StuckDecision",
    "Watchdog",
    "decide",
    "start_watchdog",
    "waiting_for",
]

ON_STUCK = ("exit", "warn")
POLL_S = 0.5  # the healthy loop's sleep
STUCK_POLL_S = 0.1  # between readings while the training thread is stuck
STUCK_MIN_S = 1.0  # never stuck sooner than this after a check
STUCK_FACTOR = 10.0  # ... nor sooner than this many typical gaps between checks
RATE_WINDOW_S = 0.5  # the recent growth rate is measured over this long
LEAD_S = 0.5  # end when the floor is this close at the current rate
WARN_HORIZON_S = 30.0  # warn when the floor is this close
NOISE = 8 * MIB  # less growth than this is no growth
TENSORBOARD_EVERY_S = 1.0  # watchdog figures go to TensorBoard at most this often
_KEEP = 600  # readings kept in one stuck episode (a minute at STUCK_POLL_S)
# Where a stuck training thread waits, told from the files on its stack.
_INPUT_PATHS = (
    "/tensorflow/python/data/",
    "/keras/src/trainers/data_adapters/",
    "/keras/src/trainers/epoch_iterator",
    "/torch/utils/data/",
)
# The guard's own modules (not the rest of the package: run_isolated's child is on the
# stack of every isolated fit).
_GUARD_PATH = "/keras_memguard/guard/"


@dataclass(frozen=True)
class Reading:
    """One watchdog reading: monotonic seconds, bytes available, the limit, the tree."""

    t: float
    available: int
    limit: int | None
    tree: int | None

    @classmethod
    def of(cls, snap: MemorySnapshot, t: float) -> Reading | None:
        available = snap.effective_available
        if available is None:
            return None
        return cls(t, available, snap.effective_limit, snap.process_tree)


@dataclass(frozen=True)
class StuckDecision:
    """What the watchdog does now: ``"none"``, ``"warn"`` or ``"exit"``, and why.

    ``rate`` is how fast available memory falls (bytes/s, 0 when not growing);
    ``seconds_left`` how long until it reaches ``floor`` at that rate (``None`` when
    not growing).
    """

    action: str
    rate: float = 0.0
    seconds_left: float | None = None
    floor: int = 0


def _growth(first: Reading, last: Reading) -> float | None:
    """Bytes/s available memory fell from ``first`` to ``last``, if this tree grew too."""
    span = last.t - first.t
    fall = first.available - last.available
    own = fall if first.tree is None or last.tree is None else last.tree - first.tree
    if span <= 0 or fall < NOISE or own < NOISE:
        return None
    return fall / span


def decide(
    readings: Sequence[Reading],
    floor: int,
    *,
    process_bound: int | None = None,
    lead_s: float = LEAD_S,
    warn_horizon_s: float = WARN_HORIZON_S,
    window_s: float = RATE_WINDOW_S,
) -> StuckDecision:
    """The watchdog's decision from one stuck episode's readings, oldest first.

    The rate is the recent one (the last ``window_s``) where memory moved by ``NOISE``
    in it, else the one since the episode began (slow, steady growth).

    Example:
        >>> r = [Reading(0.0, 900 * MIB, 3072 * MIB, 2000 * MIB),
        ...      Reading(0.5, 700 * MIB, 3072 * MIB, 2200 * MIB)]
        >>> decide(r, floor=61 * MIB).action     # 400 MiB/s, 1.6 s from the floor
        'warn'
    """
    if len(readings) < 2:
        return StuckDecision("none", floor=floor)
    last = readings[-1]
    recent = next((r for r in readings if r.t >= last.t - window_s), readings[-2])
    if recent is last:
        recent = readings[-2]
    rate = _growth(recent, last) or _growth(readings[0], last)
    over_bound = process_bound is not None and last.tree is not None and last.tree > process_bound
    if rate is None:
        return StuckDecision("warn" if over_bound else "none", floor=floor)
    seconds_left = max(0.0, (last.available - floor) / rate)
    if seconds_left <= lead_s:
        action = "exit"
    elif seconds_left <= warn_horizon_s or over_bound:
        action = "warn"
    else:
        action = "none"
    return StuckDecision(action, rate, seconds_left, floor)


def waiting_for(files: Sequence[str]) -> str:
    """What a stuck training thread waits for, from the files on its stack (innermost last).

    ``"input"`` (a data pipeline, a generator, ``PyDataset``), ``"guard"`` (the guard
    itself: saving a checkpoint, releasing memory) or ``"unknown"`` (inside a step, or
    in ``tf.data`` ops that a compiled step runs: no Python frame shows them).

    Example:
        >>> waiting_for(["/x/keras/src/trainers/data_adapters/py_dataset_adapter.py"])
        'input'
    """
    for path in reversed(files):
        normalized = path.replace(os.sep, "/")
        if any(part in normalized for part in _INPUT_PATHS):
            return "input"
        if _GUARD_PATH in normalized:
            return "guard"
    return "unknown"


_WAITS = {
    "input": "while training waits for its input",
    "guard": "while the guard saves or releases memory",
    "unknown": "while the training thread waits (for its input, or inside one step)",
}


def describe(
    decision: StuckDecision, reading: Reading, waited_s: float, where: str, limit_source: str
) -> str:
    """The one line a stuck episode prints (without its leading action)."""
    used = None if reading.limit is None else reading.limit - reading.available
    line = (
        f"memory is growing {_WAITS[where]}: {format_bytes(used)} of "
        f"{format_bytes(reading.limit)} ({limit_source}), "
        f"+{decision.rate / MIB:,.0f} MiB/s, no check for {waited_s:.1f} s"
    )
    if decision.seconds_left is not None:
        line += (
            f"; it reaches the guard's last-resort floor ({format_bytes(decision.floor)} "
            f"available) in about {decision.seconds_left:.1f} s"
        )
    return line


class Watchdog:
    """The thread that watches memory while the training thread cannot check it.

    Args:
        bounds: the guard's bounds (the floor and ``max_process_memory``).
        on_stuck: ``"exit"`` or ``"warn"``.
        multi_worker: several workers train together: only warn.
        writer: the guard's ``EventWriter`` or ``None``.
        heartbeat: the fit's ``Heartbeat`` or ``None``.
        where: returns ``(phase, epoch, global batch)``; read on this thread.
        exit: what ends the process (``os._exit``; tests pass their own).
        on_fit_gone: called on the watchdog's thread, with the watchdog, once the fit
            raised (it left the stack without ``stop``); ``None``: nothing.
    """

    def __init__(
        self,
        bounds: Bounds,
        on_stuck: str,
        multi_worker: bool = False,
        writer: Any = None,
        heartbeat: Heartbeat | None = None,
        where: Callable[[], tuple[str, int | None, int]] = lambda: ("train", None, 0),
        exit: Callable[[int], Any] = os._exit,
        on_fit_gone: Callable[[Watchdog], Any] | None = None,
    ) -> None:
        self.bounds = bounds
        self.on_fit_gone = on_fit_gone
        self.multi_worker = multi_worker
        self.on_stuck = "warn" if multi_worker else on_stuck
        self.writer = writer
        self.heartbeat = heartbeat
        self.where = where
        self.exit = exit
        self.line: str | None = None  # the last line the watchdog printed
        self._last_tick = time.monotonic()
        self._typical_gap = 0.0
        self._snap: MemorySnapshot | None = None
        self._ticks = 0
        self._beat_ticks = -1
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._training_thread = threading.get_ident()
        self._fit_frame: tuple[int, Any] | None = None
        self._readings: deque[Reading] = deque(maxlen=_KEEP)
        self._said: set[str] = set()
        self._written_at = float("-inf")

    # ------------------------------------------------------ the training thread
    def start(self, snap: MemorySnapshot) -> None:
        """Starts the thread; called on the training thread (whose stack it will read)."""
        self._training_thread = threading.get_ident()
        self._started = time.monotonic()
        frame: Any = sys._getframe(1)
        while frame is not None and frame.f_code.co_name != "fit":
            frame = frame.f_back
        # the innermost `fit` (Keras's trainer), by identity: no reference that keeps it alive
        self._fit_frame = None if frame is None else (id(frame), frame.f_code)
        del frame
        self.checked(snap)
        self._write_heartbeat(snap, None, force=True)
        self._thread = threading.Thread(target=self._run, name="memguard-watchdog", daemon=True)
        self._thread.start()

    def checked(self, snap: MemorySnapshot) -> None:
        """The training thread reached a check: a few attribute writes, no I/O."""
        now = time.monotonic()
        self._typical_gap += 0.2 * (min(now - self._last_tick, 10.0) - self._typical_gap)
        self._last_tick = now
        self._snap = snap
        self._ticks += 1

    def stop(self, state: str) -> None:
        """Ends the thread and closes the heartbeat with ``state`` (``"ended"``...)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        if self.heartbeat is not None:
            fields = self._fields(self._snap) if self._snap is not None else {}
            self.heartbeat.write(fields)
            self.heartbeat.close(state)

    @property
    def stuck_after(self) -> float:
        """Seconds without a check after which the training thread counts as stuck."""
        return max(STUCK_MIN_S, STUCK_FACTOR * self._typical_gap)

    # ---------------------------------------------------------- its own thread
    def _run(self) -> None:
        poll = POLL_S
        while not self._stop.wait(poll):
            try:
                poll = self._step()
            except Exception as err:  # the watchdog must never break training
                warn_once("watchdog", f"keras-memguard's watchdog stopped: {err}")
                return

    def _step(self) -> float:
        """One wake-up; returns how long to sleep."""
        waited = time.monotonic() - self._last_tick
        if waited > STUCK_MIN_S and not self._fit_on_stack():
            # fit raised (Keras then skips on_train_end): the watchdog has nothing to watch
            self._stop.set()
            if self.on_fit_gone is not None:
                self.on_fit_gone(self)  # the guard closes its files, and the heartbeat
            elif self.heartbeat is not None:
                self.heartbeat.close("raised")
            return POLL_S
        if waited <= self.stuck_after:
            if self._readings:  # an episode is over: the training thread checked
                self._readings.clear()
                self._said.clear()
            if self._snap is not None and self._ticks != self._beat_ticks:
                self._beat_ticks = self._ticks
                self._write_heartbeat(self._snap, None)
            return POLL_S
        snap = snapshot(gpus=False)
        now = time.monotonic()
        reading = Reading.of(snap, now)
        if reading is None:
            return POLL_S  # no figure of available memory: nothing to judge
        if not self._readings and self._snap is not None:
            before = Reading.of(self._snap, self._last_tick)  # the last check's reading
            if before is not None and before.t < now:
                self._readings.append(before)
        self._readings.append(reading)
        floor = available_floor(self.bounds, snap)
        bound = self.bounds.max_process_memory
        decision = decide(
            list(self._readings),
            floor[1] if floor else 0,
            process_bound=bound.resolve(snap.effective_limit) if bound else None,
        )
        self._write_heartbeat(snap, waited)
        if decision.action == "none":
            return STUCK_POLL_S
        self._write_figures(snap, decision, waited)
        where = waiting_for([f.f_code.co_filename for f in self._training_stack()])
        line = describe(decision, reading, waited, where, limit_source(snap))
        if decision.action == "exit" and self.on_stuck == "exit" and where != "guard":
            self._end(snap, waited, line)
        elif decision.action not in self._said:  # one line per level and episode
            self._said.add(decision.action)
            if decision.action == "exit":
                why = self._why_not_ending(where)
                line += f"; it would end the process now, but it goes on ({why})"
            self._say(f"keras-memguard: {line}.", snap, waited)
        return STUCK_POLL_S

    def _why_not_ending(self, where: str) -> str:
        if where == "guard":
            return "the training thread is inside the guard, saving or releasing memory"
        if self.multi_worker:
            return "several workers: ending one would hang the others"
        return "on_stuck='warn'"

    def _end(self, snap: MemorySnapshot, waited: float, line: str) -> None:
        text = (
            f"keras-memguard: ending the process (exit code {WATCHDOG_EXIT_CODE}) before the "
            f"kernel's OOM killer does: {line}. The training thread cannot be interrupted "
            "while it waits, so nothing was saved since the last checkpoint"
        )
        if self.writer is not None:
            text += f"; figures in {self.writer.run_dir} (`memguard report`)"
        self._say(text + ".", snap, waited, state="watchdog")
        self.exit(WATCHDOG_EXIT_CODE)

    def _say(self, line: str, snap: MemorySnapshot, waited: float, state: str = "") -> None:
        self.line = line
        print(line, file=sys.stderr, flush=True)
        if self.writer is not None:
            try:
                self.writer.text("memory/watchdog", line, self._seconds())
                self.writer.flush()
            except Exception as err:
                warn_once("tensorboard-write", f"keras-memguard cannot write TensorBoard: {err}")
        if self.heartbeat is not None:
            self.heartbeat.write({"watchdog": line, **({"state": state} if state else {})})
            self._write_heartbeat(snap, waited, force=True)

    def _write_figures(self, snap: MemorySnapshot, decision: StuckDecision, waited: float) -> None:
        """The stuck episode's figures: ``memory_watchdog/<key>`` at step = seconds of the run."""
        now = time.monotonic()
        if self.writer is None or now - self._written_at < TENSORBOARD_EVERY_S:
            return
        self._written_at = now
        values = snap.metrics()
        values["growth_mib_per_s"] = round(decision.rate / MIB, 3)
        values["seconds_without_check"] = round(waited, 3)
        try:
            step = self._seconds()
            for key, value in values.items():
                self.writer.scalar("memory_watchdog/" + key, value, step)
            self.writer.flush()
        except Exception as err:
            warn_once("tensorboard-write", f"keras-memguard cannot write TensorBoard: {err}")

    def _seconds(self) -> int:
        """The step: seconds since the run began (its first fit), else since this fit."""
        origin = getattr(self.writer, "clock_origin", None)
        return int(time.monotonic() - (self._started if origin is None else origin))

    def _training_stack(self) -> list[Any]:
        """The training thread's frames, outermost first, innermost last."""
        frame: Any = sys._current_frames().get(self._training_thread)
        frames = []
        while frame is not None:
            frames.append(frame)
            frame = frame.f_back
        return frames[::-1]

    def _fit_on_stack(self) -> bool:
        """Whether the ``fit`` that started this watchdog is still running."""
        if self._fit_frame is None:
            return True  # started outside a fit (tests): nothing to tell
        key = self._fit_frame
        return any(id(f) == key[0] and f.f_code is key[1] for f in self._training_stack())

    def _fields(self, snap: MemorySnapshot) -> dict[str, Any]:
        phase, epoch, batch = self.where()
        return {"phase": phase, "epoch": epoch, "batches": batch, "figures": snap.metrics()}

    def _write_heartbeat(
        self, snap: MemorySnapshot, waited: float | None, force: bool = False
    ) -> None:
        if self.heartbeat is None:
            return
        fields = self._fields(snap)
        fields["seconds_without_check"] = None if waited is None else round(waited, 3)
        self.heartbeat.write(fields, force=force)


def start_watchdog(
    snap: MemorySnapshot,
    bounds: Bounds,
    on_stuck: str,
    *,
    multi_worker: bool,
    writer: Any,
    where: Callable[[], tuple[str, int | None, int]],
    on_fit_gone: Callable[[Watchdog], Any] | None = None,
) -> Watchdog:
    """Starts a fit's watchdog, with a heartbeat file in the writer's run (if any).

    Example:
        >>> dog = start_watchdog(snap, guard.bounds, "exit", multi_worker=False,
        ...                      writer=writer, where=lambda: ("train", 0, 0))
    """
    heartbeat = None
    if writer is not None:
        on_stuck_now = "warn" if multi_worker else on_stuck
        heartbeat = Heartbeat(writer.run_dir, heartbeat_header(snap, bounds, on_stuck_now))
    dog = Watchdog(
        bounds,
        on_stuck,
        multi_worker=multi_worker,
        writer=writer,
        heartbeat=heartbeat,
        where=where,
        on_fit_gone=on_fit_gone,
    )
    dog.start(snap)
    return dog
