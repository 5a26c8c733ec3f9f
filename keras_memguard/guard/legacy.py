"""tf_keras (Keras 2) support: ``LegacyMemGuardCallback``, the only compatibility layer.

Keras 3.15 on TensorFlow 2.21 cannot yet ``fit`` under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585, tensorflow/tensorflow#72388). tf_keras can: set
``TF_USE_LEGACY_KERAS=1`` before importing TensorFlow, build the model with ``tf.keras``
and pass this callback instead of ``MemGuardCallback``. It is the same guard, with the
attributes tf_keras's callback machinery expects.

Example:
    >>> os.environ["TF_USE_LEGACY_KERAS"] = "1"
    >>> from keras_memguard.guard.legacy import LegacyMemGuardCallback
    >>> model.fit(ds, callbacks=[LegacyMemGuardCallback(max_process_memory="80%")])
"""

from __future__ import annotations

from typing import Any

try:
    import tf_keras
except ImportError:  # pragma: no cover - exercised where tf_keras is absent
    raise ImportError(
        "LegacyMemGuardCallback needs tf_keras: pip install 'keras-memguard[legacy]'"
    ) from None

from keras_memguard.guard.callback import MemGuardCallback

__all__ = ["LegacyMemGuardCallback"]


class LegacyMemGuardCallback(MemGuardCallback, tf_keras.callbacks.Callback):
    """``MemGuardCallback`` for tf_keras models (same arguments, same behaviour)."""

    _callback_list_type = tf_keras.callbacks.CallbackList  # tells validation from nested

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What tf_keras's Callback.__init__ sets; it cannot run here because Keras 3's
        # `model` is a read-only property. None: the guard runs on every worker.
        self.validation_data = None
        self._chief_worker_only = None
        self._supports_tf_logs = False
