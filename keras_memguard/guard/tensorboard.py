"""TensorBoard event files written and read without TensorFlow.

``tensorboard``'s own ``EventFileWriter`` and event readers import TensorFlow through
``tensorboard.compat`` whenever it is installed, which costs a JAX or PyTorch user
hundreds of MiB (and, on a GPU machine, TensorFlow's own GPU memory). So the guard writes
the record framing itself: each record is ``length (uint64 LE)``, ``masked CRC32C of
the length``, ``data``, ``masked CRC32C of the data``, and each datum is an ``Event``
proto from ``tensorboard.compat.proto``, which imports only protobuf.

Scalars are written as TensorFlow 2's ``tf.summary.scalar`` writes them (a float tensor
under the ``scalars`` plugin), text as ``tf.summary.text`` does, so TensorBoard shows
both the same way whichever backend trained.

Example:
    >>> writer = EventWriter("logs/memory")
    >>> writer.scalar("memory/process_rss_mib", 412.5, step=0)
    >>> writer.close()
    >>> [(e.step, e.summary.value[0].tag) for e in read_events(writer.path)][1:]
    [(0, 'memory/process_rss_mib')]
"""

from __future__ import annotations

import glob
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2

from keras_memguard.errors import warn_once

__all__ = [
    "EventWriter",
    "MemoryRunWriter",
    "crc32c",
    "event_files",
    "masked_crc32c",
    "memory_layout",
    "read_events",
]

_CRC_TABLE: list[int] = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)
_counter = 0
_counter_lock = threading.Lock()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, the checksum TFRecord framing uses."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC TFRecord stores: rotate right by 15 bits, add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def _metadata(plugin: str, content: bytes = b"") -> summary_pb2.SummaryMetadata:
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin, content=content)
    )


class EventWriter:
    """Appends summaries to one new event file in ``run_dir`` (created if missing).

    Args:
        run_dir: the run's directory (TensorBoard shows its name as the run).
        filename_suffix: added to the file name to tell writers apart.
            Defaults to `".memguard"`.
        path: an event file this process wrote before, to append to (a run continued
            across fits); a new file when it is gone. Defaults to `None` (a new file).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        filename_suffix: str = ".memguard",
        path: str | None = None,
    ):
        global _counter
        self.run_dir = os.fspath(run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        self._lock = threading.Lock()
        # time.monotonic() when the run began, set by MemoryRunWriter: the watchdog's
        # steps (seconds) count from it, across the fits that continue the run
        self.clock_origin: float | None = None
        if path is not None and os.path.isfile(path):
            self.path = path
            self._file: Any = open(path, "ab")  # noqa: SIM115  (closed in close())
            return
        with _counter_lock:
            _counter += 1
            serial = _counter
        name = (
            f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
            f"{os.getpid()}.{serial}{filename_suffix}"
        )
        self.path = os.path.join(self.run_dir, name)
        self._file = open(self.path, "ab")  # noqa: SIM115  (closed in close())
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def _write(self, event: event_pb2.Event) -> None:
        with self._lock:
            if self._file is None:
                raise ValueError(f"the event file {self.path} is closed")
            self._file.write(_record(event.SerializeToString()))

    def _value(self, step: int, value: summary_pb2.Summary.Value) -> None:
        self._write(
            event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=[value])
            )
        )

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Writes one float scalar, as ``tf.summary.scalar`` does."""
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, float_val=[float(value)], tensor_shape={}
        )
        self._value(
            step, summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=_metadata("scalars"))
        )

    def text(self, tag: str, text: str, step: int) -> None:
        """Writes one text summary (Markdown), as ``tf.summary.text`` does."""
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, string_val=[text.encode()], tensor_shape={}
        )
        self._value(
            step, summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=_metadata("text"))
        )

    def custom_scalars_layout(self, layout: Any) -> None:
        """Writes a custom-scalars ``Layout`` proto (the charts TensorBoard offers)."""
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, string_val=[layout.SerializeToString()], tensor_shape={}
        )
        value = summary_pb2.Summary.Value(
            tag="custom_scalars__config__", tensor=tensor, metadata=_metadata("custom_scalars")
        )
        self._value(0, value)

    def flush(self) -> None:
        """Hands what was written to the operating system."""
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        """Flushes and closes the file; later writes raise ``ValueError``."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_events(path: str | os.PathLike[str]) -> Iterator[event_pb2.Event]:
    """The events of one event file; stops quietly at a truncated or corrupt record."""
    with open(path, "rb") as f:
        data = f.read()
    offset = 0
    while offset + 12 <= len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        end = offset + 12 + length + 4
        if header_crc != masked_crc32c(header) or end > len(data):
            return
        body = data[offset + 12 : offset + 12 + length]
        (body_crc,) = struct.unpack("<I", data[end - 4 : end])
        if body_crc != masked_crc32c(body):
            return
        yield event_pb2.Event.FromString(body)
        offset = end


def event_files(run_dir: str | os.PathLike[str]) -> list[str]:
    """The event files directly in ``run_dir``, oldest name first."""
    return sorted(glob.glob(os.path.join(os.fspath(run_dir), "events.out.tfevents.*")))


def tensor_value(value: summary_pb2.Summary.Value) -> float | str | None:
    """A scalar's float or a text's string from one summary value (``None`` otherwise).

    Reads both forms TensorFlow writes: ``simple_value`` (TF1, Keras's TensorBoard on
    some paths) and a rank-0 tensor (TF2, this module).
    """
    if value.HasField("simple_value") or value.WhichOneof("value") == "simple_value":
        return float(value.simple_value)
    tensor = value.tensor
    if tensor.dtype == types_pb2.DT_FLOAT and tensor.float_val:
        return float(tensor.float_val[0])
    if tensor.dtype == types_pb2.DT_DOUBLE and tensor.double_val:
        return float(tensor.double_val[0])
    if tensor.dtype == types_pb2.DT_STRING and tensor.string_val:
        return tensor.string_val[0].decode("utf-8", "replace")
    if tensor.tensor_content and tensor.dtype == types_pb2.DT_FLOAT:
        return float(struct.unpack("<f", tensor.tensor_content[:4])[0])
    return None


class MemoryRunWriter:
    """The guard's run ``<log_dir>/memory``, continued by its fits; a failing write never stops it.

    The first fit claims the run (``memory``, or ``memory_run2``, ... in another process
    or for a copy of the guard; ``memory_trial_<id>`` in a tuner trial; see
    ``guard/fits.py``), and writes the custom-scalars layout. Later fits of the same
    guard in the same process append to the same event file: the step keeps counting
    (epoch-level tags, and the ``memory_batch/`` tags on their own axis) and
    ``memory/fit_index`` is written beside each epoch's figures. At a fit's end its point
    goes to the ``memory_fits`` summary run and the file closes until the next fit.
    Every failure warns once and training goes on. A copy (``copy.deepcopy``, a pickle
    sent to a child process) starts a run of its own.

    Example:
        >>> run = MemoryRunWriter()
        >>> run.open("logs", "memory", gpu_indices=[])
        >>> run.scalars("memory/", {"process_tree_mib": 412.5}, step=0)
        >>> run.end_fit(guard.summary)
    """

    def __init__(self) -> None:
        self.writer: EventWriter | None = None
        self.log_dir: str | None = None
        self.fit: Any = None  # this fit's point in the memory_fits run (a fits.Fit)
        self._last: Any = None  # the last fit's fits.Fit: its run continues
        self._path: str | None = None  # the run's event file, appended by each fit
        self._steps: Any = None  # fits.Steps of the run
        self._started = 0.0  # time.monotonic() when the run began (the watchdog's step)

    def __getstate__(self) -> dict[str, Any]:
        return MemoryRunWriter().__dict__  # a copy of the guard is a guard of its own

    def open(self, log_dir: str | None, run: str, gpu_indices: list[int]) -> None:
        """Opens the fit's run under ``log_dir`` (nothing when ``None`` or already open)."""
        # fits writes its summary with EventWriter: imported here, not at the top.
        from keras_memguard.guard import fits

        if log_dir is None or self.writer is not None:
            return
        try:
            last = self._last if self.log_dir == log_dir else None
            fit = fits.begin(log_dir, run, previous=last)
            if last is None or fit.run != last.run:  # a run of its own begins
                self._path, self._steps = None, fits.Steps()
                self._started = time.monotonic()
            self.writer = EventWriter(os.path.join(log_dir, fit.run), path=self._path)
            self.writer.clock_origin = self._started
            if self.writer.path != self._path:
                self.writer.custom_scalars_layout(memory_layout(gpu_indices))
            self._path, self.log_dir, self.fit, self._last = self.writer.path, log_dir, fit, fit
            self._steps.begin_fit()
        except Exception as err:
            self.writer = None
            warn_once(
                f"tensorboard-open:{log_dir}",
                f"keras-memguard cannot write TensorBoard logs to {log_dir!r}: {err}. "
                "Training continues without them.",
            )

    def end_fit(self, summary: Any) -> None:
        """The fit ended: its point in the ``memory_fits`` run, then the file closes."""
        from keras_memguard.guard import fits

        fit, self.fit = self.fit, None
        if fit is not None and self.log_dir is not None:
            fits.end(self.log_dir, fit, summary)
        self.close()

    def drop(self) -> None:
        """A fit that raised: no ``memory_fits`` point for it, and its file closes."""
        self.fit = None
        self.close()

    def close(self) -> None:
        """Closes the event file (the next fit appends to it)."""
        if self.writer is None:
            return
        try:
            self.writer.close()
        except Exception as err:
            warn_once(
                "tensorboard-write", f"keras-memguard could not flush TensorBoard logs: {err}"
            )
        self.writer = None

    def _step(self, prefix: str, step: int) -> int:
        """The run's step for the fit's epoch (or, for ``memory_batch/``, its batch)."""
        if prefix == "memory_batch/":
            return int(self._steps.batch(step))
        return int(self._steps.epoch(step))

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        """Writes ``prefix + key`` scalars at the fit's epoch (batch) ``step`` and flushes.

        Epoch-level ``memory/`` figures get ``memory/fit_index`` beside them.
        """
        if self.writer is None:
            return
        try:
            at = self._step(prefix, step)
            if prefix == "memory/" and self.fit is not None:
                values = {**values, "fit_index": float(self.fit.index)}
            for key, value in values.items():
                self.writer.scalar(prefix + key, value, at)
            self.writer.flush()
        except Exception as err:
            warn_once(
                "tensorboard-write",
                f"keras-memguard cannot write TensorBoard logs to {self.log_dir!r}: {err}. "
                "Training continues.",
            )

    def text(self, tag: str, text: str, step: int) -> None:
        """Writes one text summary at the fit's epoch ``step`` and flushes."""
        if self.writer is None:
            return
        try:
            self.writer.text(tag, text, self._step("memory/", step))
            self.writer.flush()
        except Exception as err:
            warn_once("tensorboard-write", f"keras-memguard cannot write TensorBoard logs: {err}")


def memory_layout(gpu_indices: list[int]) -> Any:
    """The custom-scalars layout: one chart per bound, with the bound as a line.

    The total limit stays out of the process chart, where it would flatten the usage curve.
    """
    from tensorboard.plugins.custom_scalar import layout_pb2

    def chart(title: str, regex: str) -> Any:
        return layout_pb2.Chart(
            title=title, multiline=layout_pb2.MultilineChartContent(tag=[regex])
        )

    return layout_pb2.Layout(
        category=[
            layout_pb2.Category(
                title="keras-memguard",
                chart=[
                    chart(
                        "Process memory against its bound (MiB)",
                        r"memory/(process_tree_mib|process_tree_peak_mib|"
                        r"container_usage_mib|bound_process_mib)",
                    ),
                    chart(  # issue #25
                        "Predicted peak against the measured peak (MiB)",
                        r"memory/(predicted_peak_mib|process_tree_peak_mib)",
                    ),
                    chart(
                        "Available memory against its floor (MiB)",
                        r"memory/(effective_available_mib|effective_available_min_mib|"
                        r"bound_available_mib)",
                    ),
                    *(
                        chart(
                            f"GPU {i} memory against its bound (MiB)",
                            rf"memory/gpu{i}_(process|allocated|allocated_peak|reserved|bound)_mib",
                        )
                        for i in gpu_indices
                    ),
                ],
            )
        ]
    )
