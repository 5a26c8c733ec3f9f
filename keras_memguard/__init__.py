"""keras-memguard: make Keras 3 / TensorFlow training memory visible, bounded and safe.

The probes, ``snapshot()``, ``configure_gpus()`` and ``release_memory()`` import without
TensorFlow; the names that need it (``MemGuardCallback``, ``dataset_from_tfds``) load it
on first use, so ``memguard doctor`` and ``configure_gpus`` stay quick and early.

Example:
    >>> import keras_memguard as mg
    >>> mg.configure_gpus(memory_growth=True)
    >>> model.fit(train, callbacks=[mg.MemGuardCallback(log_dir="logs")])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from keras_memguard.backends.configure import GpuConfigError, GpuConfigReport, configure_gpus
from keras_memguard.data import tfds_registration as _tfds_registration
from keras_memguard.errors import MemGuardError, MemGuardWarning, MemoryLimitExceededError
from keras_memguard.estimate.parts import MemoryEstimate
from keras_memguard.guard.release import ReleaseResult, release_memory
from keras_memguard.isolation.batch_predict import BatchPrediction, predict_batch_size
from keras_memguard.isolation.batch_size import (
    BatchSizeResult,
    BatchSizeSearchError,
    find_batch_size,
)
from keras_memguard.isolation.run import (
    ChildExit,
    ChildFailedError,
    ChildKilledError,
    ChildMemoryLimitError,
    ChildSystemExit,
    ChildTimeoutError,
    IsolatedError,
    run_isolated,
    shutdown_spares,
)
from keras_memguard.isolation.tuner import isolate_trials
from keras_memguard.memory_snapshot import GpuSnapshot, MemorySnapshot, snapshot
from keras_memguard.sizes import Size, format_bytes, parse_size

if TYPE_CHECKING:
    from keras_memguard.cli.report import ReportError
    from keras_memguard.data.pipeline import (
        DatasetUnavailableError,
        PipelinePlan,
        dataset_from_tfds,
    )
    from keras_memguard.estimate.fit import estimate_fit_memory
    from keras_memguard.guard.callback import Halt, MemGuardCallback, MemGuardSummary
    from keras_memguard.isolation.calibrate import calibrate_estimate

__version__ = "0.1.0"

_LAZY = {
    "MemGuardCallback": "keras_memguard.guard.callback",
    "MemGuardSummary": "keras_memguard.guard.callback",
    "Halt": "keras_memguard.guard.callback",
    "dataset_from_tfds": "keras_memguard.data.pipeline",
    "estimate_fit_memory": "keras_memguard.estimate.fit",
    "calibrate_estimate": "keras_memguard.isolation.calibrate",
    "PipelinePlan": "keras_memguard.data.pipeline",
    "DatasetUnavailableError": "keras_memguard.data.pipeline",
    "ReportError": "keras_memguard.cli.report",
}

__all__ = [
    "BatchPrediction",
    "BatchSizeResult",
    "BatchSizeSearchError",
    "ChildExit",
    "ChildFailedError",
    "ChildKilledError",
    "ChildMemoryLimitError",
    "ChildSystemExit",
    "ChildTimeoutError",
    "DatasetUnavailableError",
    "GpuConfigError",
    "GpuConfigReport",
    "GpuSnapshot",
    "Halt",
    "IsolatedError",
    "MemGuardCallback",
    "MemGuardError",
    "MemGuardSummary",
    "MemGuardWarning",
    "MemoryEstimate",
    "MemoryLimitExceededError",
    "MemorySnapshot",
    "PipelinePlan",
    "ReleaseResult",
    "ReportError",
    "Size",
    "__version__",
    "calibrate_estimate",
    "configure_gpus",
    "dataset_from_tfds",
    "estimate_fit_memory",
    "find_batch_size",
    "format_bytes",
    "isolate_trials",
    "parse_size",
    "predict_batch_size",
    "release_memory",
    "run_isolated",
    "shutdown_spares",
    "snapshot",
]


# `tfds.load("memguard_shapes")` works after `import keras_memguard`.
_tfds_registration.install()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_memguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
