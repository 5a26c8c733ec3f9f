"""keras-memguard: make Keras 3 / TensorFlow training memory visible, bounded and safe."""

from keras_memguard.errors import MemGuardError, MemGuardWarning, MemoryLimitExceededError
from keras_memguard.memory_snapshot import GpuSnapshot, MemorySnapshot, snapshot
from keras_memguard.sizes import Size, format_bytes, parse_size

__version__ = "0.1.0"

__all__ = [
    "GpuSnapshot",
    "MemGuardError",
    "MemGuardWarning",
    "MemoryLimitExceededError",
    "MemorySnapshot",
    "Size",
    "__version__",
    "format_bytes",
    "parse_size",
    "snapshot",
]
