"""The one small interface the rest of the package calls, and how a framework is picked.

Each framework has a folder, ``backends/<framework>/``, with modules of the same names
and the same functions inside (the way Keras lays out ``keras/src/backend/``):

- ``memory``: ``ADAPTER``, the :class:`Backend` (device figures, peaks, release, the wait
  for dispatched steps), and ``is_initialized()``.
- ``configure``: ``configure(request, devices)`` and ``current_configuration(devices)``,
  its part of ``configure_gpus``.
- ``oom``: ``is_out_of_memory(error, type_name, message)``.
- ``distributed``: ``supports_vote()`` and ``worker_context(model)``, the workers' vote.
- ``introspect``: ``tensor_types()``, ``describe(obj)`` and ``cannot_travel(value)``.
- ``compat``: its private names (``SYMBOLS``, see :mod:`keras_memguard.compat`).
- ``estimate``: the pre-flight's figures of the compiled or traced step.
- ``evidence``: what a halt keeps of the device's memory, in the framework's own
  formats (``start_recording``, ``stop_recording``, ``attach_oom_observer``,
  ``write_evidence``; see ``guard/evidence.py``).

Where a framework lacks a feature, its module says so (``supports_vote()`` is
``False``). Nothing outside ``backends/`` imports a framework (``data/`` for tf.data and
``guard/legacy.py`` for tf_keras excepted); it calls the functions here.

An adapter reads its framework's device memory, resets peaks, releases memory and
recognises the framework's out-of-memory errors. Reading must never take memory: an
adapter reports figures only once its framework has initialised its GPUs by itself
(``device_memory()`` returns ``None`` before), because asking earlier would initialise
them (JAX preallocates 75% of every GPU; PyTorch creates a CUDA context per device).

Example:
    >>> backend = current_backend()        # from KERAS_BACKEND, never imports a framework
    >>> backend.name
    'tensorflow'
    >>> backend.device_memory()            # None until the framework has set up its GPUs
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

from keras_memguard.compat import keras as keras_compat
from keras_memguard.compat import resolve

__all__ = [
    "BACKENDS",
    "MODULES",
    "Backend",
    "DeviceMemory",
    "EvidenceFile",
    "NullBackend",
    "WorkerContext",
    "backend_module",
    "backend_name",
    "cannot_travel",
    "current_backend",
    "describe_tensor",
    "tensor_types",
    "tensorflow_kept_out",
    "worker_context",
]

BACKENDS = ("tensorflow", "jax", "torch")
"""The frameworks with a folder here; each is also the name of its Python package."""
MODULES = (
    "compat",
    "configure",
    "distributed",
    "estimate",
    "evidence",
    "input_pipeline",
    "introspect",
    "memory",
    "oom",
)
"""The modules every framework folder has, with the same functions inside."""


@dataclass(frozen=True)
class DeviceMemory:
    """One device's figures from its framework's allocator, in bytes.

    Attributes:
        index: the framework's device index (CUDA order: ``/GPU:0``, ``cuda:0``).
        allocated: bytes of live arrays/tensors now.
        peak: the allocator's peak (since the last reset where ``peak_resettable``,
            else since the process started); ``None`` if not reported.
        reserved: bytes the framework's pool holds from the device (>= allocated);
            ``None`` if not reported.
        limit: the framework's own cap on its pool; ``None`` if none or unknown.
        peak_resettable: whether :meth:`Backend.reset_peaks` can reset ``peak``.
        uuid: the device's UUID (``GPU-...``) where the framework says, for NVML mapping.
    """

    index: int
    allocated: int
    peak: int | None = None
    reserved: int | None = None
    limit: int | None = None
    peak_resettable: bool = False
    uuid: str | None = None


@dataclass(frozen=True)
class EvidenceFile:
    """One file a framework's ``evidence.write_evidence`` wrote into a halt's bundle.

    Attributes:
        name: the file's name inside the bundle directory.
        what: what it holds, in a few words.
        opens_with: the command or viewer that opens it.

    Example:
        >>> EvidenceFile("device_memory.prof", "JAX's live buffers (pprof)", "pprof -http=: ...")
    """

    name: str
    what: str
    opens_with: str


class Backend(Protocol):
    """What the guard, ``snapshot()`` and ``release_memory`` need from a framework."""

    name: str

    def is_gpu_initialized(self) -> bool:
        """Whether the framework has set up its GPU devices (never initialises them)."""
        ...

    def device_memory(self) -> list[DeviceMemory] | None:
        """Each GPU's allocator figures; ``None`` before initialisation or on failure."""
        ...

    def reset_peaks(self) -> bool:
        """Resets the allocator peaks where the framework allows; returns whether it did."""
        ...

    def is_out_of_memory(self, error: BaseException | None, type_name: str, message: str) -> bool:
        """Whether an error (or its type name and message, from a child) is a device OOM."""
        ...

    def empty_cache(self) -> bool:
        """Returns the allocator's unused cached blocks to the device; whether it did."""
        ...

    def clear_caches(self) -> bool:
        """Drops the framework's compilation caches (the next call recompiles)."""
        ...

    def wait_for_steps(self, model: Any, marker: Any, all_of_them: bool) -> Any:
        """Waits for training steps dispatched but not run yet; returns the next marker.

        ``marker`` is what the previous call returned (``None`` at first): waiting for it
        waits for the steps dispatched up to that call; ``all_of_them`` waits for every
        step. Frameworks that run each step before returning return ``marker`` as is.
        """
        ...


def backend_name() -> str:
    """The Keras backend in use or configured, without importing Keras or a framework.

    Keras's own choice when Keras is imported, else ``KERAS_BACKEND``, else
    ``~/.keras/keras.json`` (``$KERAS_HOME``), else ``"tensorflow"``.
    """
    keras = sys.modules.get("keras")
    config = getattr(keras, "config", None)
    if config is not None and hasattr(config, "backend"):
        return str(config.backend())
    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    path = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "keras.json")
    try:
        with open(path) as f:
            return str(json.load(f).get("backend", "tensorflow"))
    except (OSError, ValueError):
        return "tensorflow"


class NullBackend:
    """A backend without device figures (Keras's ``numpy`` and ``openvino`` backends)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def is_gpu_initialized(self) -> bool:
        return False

    def device_memory(self) -> list[DeviceMemory] | None:
        return None

    def reset_peaks(self) -> bool:
        return False

    def is_out_of_memory(self, error: BaseException | None, type_name: str, message: str) -> bool:
        return isinstance(error, MemoryError) or type_name.rsplit(".", 1)[-1] == "MemoryError"

    def empty_cache(self) -> bool:
        return False

    def clear_caches(self) -> bool:
        return False

    def wait_for_steps(self, model: Any, marker: Any, all_of_them: bool) -> Any:
        return marker


_adapters: dict[str, Backend] = {}


def current_backend(name: str | None = None) -> Backend:
    """The adapter for ``name`` (default: :func:`backend_name`); importing it is cheap.

    Example:
        >>> current_backend("jax").name
        'jax'
    """
    name = name or backend_name()
    adapter = _adapters.get(name)
    if adapter is None:
        if name in BACKENDS:
            adapter = importlib.import_module(f"keras_memguard.backends.{name}").ADAPTER
        else:
            adapter = NullBackend(name)
        _adapters[name] = adapter
    return adapter


def backend_module(name: str, module: str) -> Any:
    """``keras_memguard.backends.<name>.<module>`` (one of :data:`MODULES`), imported.

    Importing it imports no framework. Example:
        >>> backend_module("jax", "distributed").supports_vote()
        False
    """
    if name not in BACKENDS or module not in MODULES:
        raise ValueError(
            f"Invalid backend module. Received: name={name!r}, module={module!r}. "
            f"Expected a name in {BACKENDS} and a module in {MODULES}."
        )
    return importlib.import_module(f"keras_memguard.backends.{name}.{module}")


def moved_name(package: str, name: str) -> Any:
    """A name of an old module ``backends/<framework>.py``, now in the folder's modules.

    For the module ``__getattr__`` of ``backends/<framework>/__init__.py``: the old paths
    (``keras_memguard.backends.tensorflow.TensorFlowDevices``) keep working and warn.
    """
    for module in ("memory", "configure"):
        found = importlib.import_module(f"{package}.{module}")
        if name in getattr(found, "__all__", ()):
            warnings.warn(
                f"{package}.{name} moved to {package}.{module}.{name}; the old path "
                "will be removed in a future release.",
                DeprecationWarning,
                stacklevel=3,
            )
            return getattr(found, name)
    raise AttributeError(f"module {package!r} has no attribute {name!r}")


@dataclass(frozen=True)
class WorkerContext:
    """This process's place in a distributed run (one worker unless a framework says).

    Attributes:
        strategy: the model's ``tf.distribute`` strategy, if any.
        num_workers: worker processes in the cluster (1 without multi-worker).
        index: this worker's index (the chief is 0).
        is_chief: whether this worker writes the checkpoint and the main TensorBoard run.

    Example:
        >>> WorkerContext().any_worker(True)
        True
    """

    strategy: Any = None
    num_workers: int = 1
    index: int = 0
    is_chief: bool = True

    @property
    def multi_worker(self) -> bool:
        return self.num_workers > 1

    def any_worker(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any worker (here: this one; frameworks that vote
        override it with a collective every worker must join)."""
        return flag

    def any_workers(self, flags: tuple[bool, ...]) -> tuple[bool, ...]:
        """Each of ``flags``, set on any worker: one collective for them all together.

        Example:
            >>> must_stop, check_every_batch = ctx.any_workers((crossed, near))
        """
        return tuple(self.any_worker(flag) for flag in flags) if self.multi_worker else flags

    def all_rows(self, row: list[int]) -> list[tuple[int, ...]] | None:
        """Every worker's ``row`` of small ints, in worker order (a collective every
        worker must join); ``None`` where the framework gathers none (only flags)."""
        return None if self.multi_worker else [tuple(row)]

    @property
    def run_name(self) -> str:
        """This worker's TensorBoard run: ``memory`` on the chief."""
        return "memory" if self.is_chief else f"memory_worker{self.index}"

    @property
    def chief_name(self) -> str:
        """The worker that keeps the checkpoint, in words."""
        return "the chief worker"

    def worker_name(self, index: int) -> str:
        """Worker ``index`` in words, for the halt line."""
        return f"worker {index}"

    def cannot_save(self, model: Any) -> str | None:
        """Why ``model`` cannot be saved in this run (``None``: it can)."""
        return None

    @property
    def every_worker_saves(self) -> bool:
        """Whether every worker must join the save (its collective ops), the chief's kept."""
        return True

    def save_scope(self) -> AbstractContextManager[None]:
        """Where a checkpoint is saved (nothing special unless a framework says)."""
        return nullcontext()


def single_worker(model: Any) -> WorkerContext:
    """The context of a process that decides alone (frameworks without a vote)."""
    return WorkerContext(strategy=getattr(model, "distribute_strategy", None))


def worker_context(model: Any) -> WorkerContext:
    """``model``'s place in a distributed run, from the Keras backend's ``distributed``.

    Example:
        >>> worker_context(model).multi_worker
        False
    """
    strategy = getattr(model, "distribute_strategy", None)
    # a tf.distribute strategy is TensorFlow's whatever the Keras backend (tf_keras too)
    name = "tensorflow" if strategy is not None else backend_name()
    if name not in BACKENDS:
        return single_worker(model)
    context: WorkerContext = backend_module(name, "distributed").worker_context(model)
    return context


def tensor_types() -> tuple[type, ...]:
    """The tensor/array types of every loaded framework whose buffers live outside
    ``tracemalloc`` (never imports a framework).

    Example:
        >>> tensor_types()      # with only TensorFlow loaded
        (<class 'EagerTensor'>, <class '...BaseResourceVariable'>)
    """
    types: list[type] = []
    for name in BACKENDS:
        if name in sys.modules:
            types += backend_module(name, "introspect").tensor_types()
    return tuple(types)


def describe_tensor(obj: Any) -> tuple[str, int]:
    """``("EagerTensor float32[32,8] on cpu:0", nbytes)`` for a framework tensor.

    ``(type name, 0)`` where its figures cannot be read.
    """
    name = type(obj).__name__
    try:
        if "torch" in type(obj).__module__ or hasattr(obj, "element_size"):
            framework = "torch"
        elif hasattr(obj, "nbytes") and hasattr(obj, "devices"):  # jax.Array
            framework = "jax"
        else:
            framework = "tensorflow"
        shape, dtype, nbytes, device = backend_module(framework, "introspect").describe(obj)
    except Exception:
        return name, 0
    dims = ",".join(str(d) for d in shape)
    return f"{name} {dtype}[{dims}] on {device}", nbytes


def cannot_travel(value: Any) -> str | None:
    """Why a framework object cannot be sent to another process (``None`` if it can).

    Read from its type's names, so it imports no framework. Example:
        >>> cannot_travel(tf.data.Dataset.range(3))
        'a tf.data.Dataset cannot be sent to another process'
    """
    for name in BACKENDS:
        why: str | None = backend_module(name, "introspect").cannot_travel(value)
        if why:
            return why
    return None


@contextmanager
def tensorflow_kept_out() -> Iterator[None]:
    """Keeps Keras from importing TensorFlow just to look for its types (non-TF backends).

    Keras's ``model.save()`` asks ``module_utils.tensorflow.available`` while it
    serializes, which imports TensorFlow whenever it is installed (seconds, hundreds of
    MiB, and GPU memory beside JAX's or torch's pool). Under another backend, with
    TensorFlow not imported, no object can be a TensorFlow type, so answering "not
    available" for the duration is exact. Nothing changes under TensorFlow.

    Example:
        >>> with tensorflow_kept_out():
        ...     model.save("guard.keras")
    """
    lazy: Any = None
    available = keras_compat.LAZY_AVAILABLE_ATTRIBUTE
    if backend_name() != "tensorflow" and "tensorflow" not in sys.modules:
        candidate = resolve(keras_compat.LAZY_TENSORFLOW, loaded_only=True)
        if getattr(candidate, available, True) is None:
            lazy = candidate
            setattr(lazy, available, False)
    try:
        yield
    finally:
        if lazy is not None and "tensorflow" not in sys.modules:
            setattr(lazy, available, None)
