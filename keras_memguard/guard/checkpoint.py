"""The halt's checkpoint: its path checked at construction, the model saved at a halt.

A bad path found only at a halt would lose the model, so ``check_checkpoint_path`` runs
in ``MemGuardCallback.__init__``; ``save_checkpoint`` never raises (a halt must happen
even when saving fails) and says loudly when it could not save. ``save_reserve`` sizes
that save at each fit's start: the guard keeps room for it (issue #23).

Example:
    >>> path = check_checkpoint_path("checkpoints/guard.keras")
    >>> save_checkpoint(model, path, WorkerContext())
    'checkpoints/guard.keras'
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import warnings
from typing import Any

from keras_memguard.backends.base import tensorflow_kept_out
from keras_memguard.errors import MemGuardWarning, invalid_argument, warn_once
from keras_memguard.guard.distributed import WorkerContext
from keras_memguard.guard.headroom import save_headroom, temporary_path

__all__ = ["check_checkpoint_path", "save_checkpoint", "save_reserve"]


def check_checkpoint_path(path: str | os.PathLike[str] | None) -> str | None:
    """What a halt will write, checked now: a bad path found only at a halt loses the model.

    A plain ``.h5`` is refused although ``model.save`` accepts it: that legacy HDF5
    format cannot save a subclassed model, which would surface only at halt time.
    """
    if path is None:
        return None
    path = os.fspath(path)
    if not path.endswith((".keras", ".weights.h5")):
        why = ""
        if path.endswith(".h5"):
            why = (
                "a plain '.h5' is Keras's legacy whole-model format, which cannot save "
                "subclassed models; use 'name.keras' for the model or 'name.weights.h5' "
                "for its weights"
            )
        raise invalid_argument(
            "checkpoint_path",
            path,
            "a file path ending in '.keras' (whole model) or '.weights.h5' (weights only)",
            why,
        )
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise invalid_argument(
            "checkpoint_path",
            path,
            f"a path whose directory can be created and written ({parent!r} is not a "
            "writable directory)",
        )
    return path


def save_checkpoint(model: Any, path: str | None, workers: WorkerContext) -> str | None:
    """Saves ``model`` to ``path``; the path kept (the chief's), or ``None``.

    Where saving runs collective ops (TensorFlow's multi-worker strategies) every worker
    saves and only the chief keeps the file; where the workers' context can save alone
    (``WorkerContext.every_worker_saves`` false: JAX processes) only the chief saves.
    A failure prints and warns, and returns ``None``: the halt goes on.
    """
    if path is None:
        return None
    why = workers.cannot_save(model)
    if why is not None:  # the same answer on every worker: none enters the save
        message = f"keras-memguard: COULD NOT SAVE the checkpoint to {path}: {why}."
        print(message, file=sys.stderr, flush=True)
        warnings.warn(message, MemGuardWarning, stacklevel=3)
        return None
    if not workers.is_chief:
        if not workers.every_worker_saves:
            return None
        scratch = tempfile.mkdtemp(prefix=f"memguard_worker{workers.index}_")
        path = os.path.join(scratch, os.path.basename(path))
    # Written beside the checkpoint, then renamed over it (issue #23): a save that fails
    # (for lack of memory, say) leaves the previous good checkpoint as it was.
    scratch_file = temporary_path(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with workers.save_scope():
            if path.endswith(".weights.h5"):
                model.save_weights(scratch_file)
            else:
                with tensorflow_kept_out():  # Keras's save imports TF when installed
                    model.save(scratch_file)
        os.replace(scratch_file, path)
        if not workers.is_chief:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
            return None
        return path
    except Exception as err:  # a halt must happen even when saving fails
        with contextlib.suppress(OSError):
            os.remove(scratch_file)
        kept = " (the previous checkpoint there is kept)" if os.path.exists(path) else ""
        message = (
            f"keras-memguard: COULD NOT SAVE the checkpoint to {path}{kept}: {err}. Training "
            "halts anyway; the model is still in memory: save it from your script."
        )
        print(message, file=sys.stderr, flush=True)
        warnings.warn(message, MemGuardWarning, stacklevel=3)
        return None


def save_reserve(model: Any, path: str | None) -> int:
    """Bytes a save of ``model`` to ``path`` needs at its peak (``headroom.save_headroom``).

    The saved state is the variables and the optimizer's state (``estimate.static``);
    an optimizer that is not built yet is predicted from its class.
    """
    if path is None:
        return 0
    try:
        from keras_memguard.estimate.static import model_parts, variables_bytes

        state = sum(part.bytes or 0 for part in model_parts(model)[:2])
        optimizer = getattr(model, "optimizer", None)
        variables = [*model.weights, *(getattr(optimizer, "variables", None) or ())]
        largest = max((variables_bytes([v])[0] for v in variables), default=0)
    except Exception as err:  # an estimate must never stop training
        warn_once("save-reserve", f"keras-memguard cannot size the checkpoint's save: {err}")
        return 0
    return save_headroom(path, state, largest)
