"""``isolate_trials``: KerasTuner searches whose driver memory stays flat.

KerasTuner builds and fits every trial's model in the searching process. Even with its
``clear_session()`` and ``gc.collect()`` before each trial the process grows a few MiB a
trial (keras-tuner issues #395 and #873), and GPU memory is never handed back.
``isolate_trials(tuner)`` changes one method of the tuner object: each trial's
build-and-fit (``Tuner._build_and_fit_model``) runs in a fresh process through
:func:`run_isolated`. Everything else stays in the driver: the oracle, the trial records,
``search()``'s arguments, ``executions_per_trial``, Hyperband's epochs per bracket. The
child writes the checkpoints where KerasTuner always does (the trial's directory), so
Hyperband resumes from earlier trials and ``get_best_models()`` loads them.

A trial that crosses ``max_memory``, runs out of memory, times out or dies is reported
to the oracle as failed (``FailedTrialError``) and the search goes on. NumPy arrays of
``share_arrays_over`` bytes or more passed to ``search()`` are written once to a
temporary ``.npy`` file per search and memory-mapped by each trial, instead of being
pickled through a pipe once per trial.

Example:
    >>> import keras_tuner
    >>> tuner = isolate_trials(keras_tuner.RandomSearch(build, "val_loss", max_trials=50),
    ...                        max_memory="8GiB", keep_warm=True)
    >>> tuner.search(x, y, epochs=5, validation_split=0.2)
    >>> best = tuner.get_best_models()[0]
"""

from __future__ import annotations

import atexit
import copy
import shutil
import tempfile
import threading
import types
from collections.abc import Mapping
from typing import Any

from keras_memguard.backends.base import backend_name
from keras_memguard.compat import resolve
from keras_memguard.compat.keras_tuner import BUILD_AND_FIT, BUILD_AND_FIT_METHOD, TUNER_UTILS
from keras_memguard.errors import invalid_argument
from keras_memguard.isolation.batch_size import is_out_of_memory
from keras_memguard.isolation.run import (
    IsolatedError,
    default_preload,
    run_isolated,
    shutdown_spares,
)
from keras_memguard.sizes import format_bytes

__all__ = ["isolate_trials"]

_DEFAULT_SHARE_OVER = 2**20


class SharedArray:
    """A NumPy array written once to a ``.npy`` file; a trial memory-maps it read-only.

    Example:
        >>> SharedArray("/tmp/x.npy", 80_000_000).load().shape
    """

    def __init__(self, path: str, nbytes: int) -> None:
        self.path = path
        self.nbytes = nbytes

    def load(self) -> Any:
        import numpy as np

        # Copy-on-write: shared pages until a trial writes (`x -= mean` works as in the
        # plain search), and a trial's writes never reach the file or other trials.
        return np.load(self.path, mmap_mode="c")

    def __repr__(self) -> str:
        return f"SharedArray({self.path!r}, {format_bytes(self.nbytes)})"


class _Isolation:
    """The options ``isolate_trials`` was given and the arrays shared for this search."""

    def __init__(self, options: dict[str, Any], share_over: int | None) -> None:
        self.options = options
        self.share_over = share_over
        self._dir: str | None = None
        self._shared: dict[int, tuple[Any, SharedArray]] = {}
        self._lock = threading.Lock()
        self.sent_bytes = 0  # the pickled trial payloads, for the benchmark

    def share(self, value: Any) -> Any:
        """``value`` with its large NumPy arrays replaced by :class:`SharedArray`."""
        if isinstance(value, (list, tuple)):
            items = [self.share(item) for item in value]
            return type(value)(items) if isinstance(value, list) else tuple(items)
        if isinstance(value, dict):
            return {key: self.share(item) for key, item in value.items()}
        if self.share_over is None or type(value).__module__ != "numpy":
            return value
        import numpy as np

        if not isinstance(value, np.ndarray) or value.dtype.hasobject:
            return value
        if value.nbytes < self.share_over:
            return value
        with self._lock:
            known = self._shared.get(id(value))
            if known is not None and known[0] is value:
                return known[1]
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="memguard-trials-")
            path = f"{self._dir}/array{len(self._shared)}.npy"
            np.save(path, value, allow_pickle=False)
            shared = SharedArray(path, int(value.nbytes))
            self._shared[id(value)] = (value, shared)  # keeps value alive: its id stays
            return shared

    def release(self) -> None:
        """Deletes the shared files (at the end of a search, and at exit)."""
        with self._lock:
            folder, self._dir = self._dir, None
            self._shared.clear()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _restore(value: Any) -> Any:
    if isinstance(value, SharedArray):
        return value.load()
    if isinstance(value, (list, tuple)):
        items = [_restore(item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {key: _restore(item) for key, item in value.items()}
    return value


def _portable(results: Any) -> Any:
    """Trial results that can travel back: a ``History`` without its model."""
    if isinstance(results, list):
        return [_portable(item) for item in results]
    import keras

    if isinstance(results, keras.callbacks.History):
        history = keras.callbacks.History()
        history.history = {k: [float(v) for v in vs] for k, vs in results.history.items()}
        history.epoch = list(results.epoch)
        history.params = dict(results.params or {})
        return history
    return results


class _OracleView:
    """What a trial's code may read of the oracle in the child: its objective."""

    def __init__(self, objective: Any) -> None:
        self.objective = objective


def _best_values(callbacks: Any) -> list[float]:
    """The best objective value each ``SaveBestEpoch`` callback has seen."""
    tuner_utils = resolve(TUNER_UTILS)
    return [c.best_value for c in callbacks or [] if isinstance(c, tuner_utils.SaveBestEpoch)]


def _build_and_fit_in_child(
    tuner_class: Any, tuner: Any, trial: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, list[float]]:
    """Runs the tuner class's own ``_build_and_fit_model`` in the trial's process.

    Returns the results and the checkpoint callbacks' best values: with
    ``executions_per_trial > 1`` the next execution must only beat the best so far.
    """
    from keras_memguard.guard import fits

    fits.set_trial(str(trial.trial_id))  # a guard's run is named after the trial
    build_and_fit = getattr(tuner_class, BUILD_AND_FIT_METHOD)
    results = build_and_fit(tuner, trial, *_restore(args), **_restore(kwargs))
    return _portable(results), _best_values(kwargs.get("callbacks"))


def _child_view(tuner: Any) -> Any:
    """A shallow copy of the tuner for the child: no oracle, and none of the methods set
    on the instance (isolate_trials's hooks, a user's wrapper of ``on_trial_end``): they
    belong to the driver."""
    view = copy.copy(tuner)
    view.__dict__.pop("_memguard_isolation", None)
    for name, value in list(view.__dict__.items()):
        if isinstance(value, (types.MethodType, types.FunctionType)):
            del view.__dict__[name]
    view.oracle = _OracleView(tuner.oracle.objective)
    view.logger = None
    return view


def _isolated_build_and_fit(self: Any, trial: Any, *args: Any, **kwargs: Any) -> Any:
    from keras_tuner import errors

    tuner_utils = resolve(TUNER_UTILS)

    state: _Isolation = self._memguard_isolation
    view = _child_view(self)
    callbacks = [
        tuner_utils.TunerCallback(view, trial)
        if isinstance(callback, tuner_utils.TunerCallback)
        else callback
        for callback in kwargs.get("callbacks") or []
    ]
    if "callbacks" in kwargs:
        kwargs = {**kwargs, "callbacks": callbacks}
    shared_args, shared_kwargs = state.share(args), state.share(kwargs)
    try:
        results, best_values = run_isolated(
            _build_and_fit_in_child,
            type(self),
            view,
            trial,
            shared_args,
            shared_kwargs,
            **state.options,
        )
    except IsolatedError as err:
        raise errors.FailedTrialError(f"trial {trial.trial_id}: {err}") from err
    except errors.FatalError:
        raise
    except Exception as err:
        backend = (state.options.get("env") or {}).get("KERAS_BACKEND")
        if is_out_of_memory(err, backend):
            raise errors.FailedTrialError(
                f"trial {trial.trial_id} ran out of memory: {type(err).__name__}: {err}"
            ) from err
        raise
    checkpoints = [c for c in callbacks if isinstance(c, tuner_utils.SaveBestEpoch)]
    for checkpoint, best in zip(checkpoints, best_values, strict=False):
        checkpoint.best_value = best  # the driver's copy carries over to the next execution
    return results


def isolate_trials(
    tuner: Any,
    *,
    timeout: float | None = None,
    max_memory: int | float | str | None = None,
    env: Mapping[str, str] | None = None,
    gpu_config: Mapping[str, Any] | None = None,
    keep_warm: bool = False,
    preload: tuple[str, ...] | None = None,
    share_arrays_over: int | None = _DEFAULT_SHARE_OVER,
) -> Any:
    """Makes each KerasTuner trial build and fit its model in a fresh process.

    Returns the same tuner object; call `search()`, `get_best_models()`,
    `get_best_hyperparameters()` and `results_summary()` as before. The build function
    (or `HyperModel`) may live in a script's `__main__` or a notebook: it travels by value.

    Args:
        tuner: a `keras_tuner.Tuner` (`RandomSearch`, `BayesianOptimization`,
            `Hyperband`, `GridSearch` or a subclass).
        timeout, max_memory, env, gpu_config, keep_warm, preload: passed to
            :func:`run_isolated` for each trial. A trial stopped by `timeout` or
            `max_memory`, out of memory, or killed is reported to the oracle as failed.
            With `keep_warm=True` the next trial's process starts (and imports the
            backend's framework, Keras and KerasTuner: the default `preload`) while the
            current trial runs; the spare ends when the search does. `env` gets the
            driver's `KERAS_BACKEND` unless it names one.
        share_arrays_over: NumPy arrays passed to `search()` of at least this many bytes
            are written once per search to a temporary `.npy` file that each trial
            memory-maps, instead of being copied through a pipe per trial. `None`
            sends them by value. Defaults to 1 MiB.

    Returns:
        `tuner`, changed in place.

    Raises:
        ImportError: keras-tuner is not installed (`pip install keras-memguard[tuner]`).
        ValueError: `tuner` is not a KerasTuner `Tuner`.

    Example:
        >>> tuner = isolate_trials(keras_tuner.Hyperband(build, "val_accuracy", 9))
        >>> tuner.search(x, y, validation_split=0.2, callbacks=[MemGuardCallback()])
    """
    try:
        from keras_tuner import Tuner
    except ImportError as err:
        raise ImportError(
            "isolate_trials needs keras-tuner: pip install 'keras-memguard[tuner]'"
        ) from err
    if resolve(TUNER_UTILS) is None or resolve(BUILD_AND_FIT) is None:
        raise ImportError(
            "isolate_trials does not know this keras-tuner's internals (checked on "
            f"{TUNER_UTILS.checked}): pip install 'keras-tuner<1.5'"
        )
    if not isinstance(tuner, Tuner):
        raise invalid_argument(
            "tuner",
            tuner,
            "a keras_tuner Tuner (RandomSearch, BayesianOptimization, Hyperband, ...)",
        )
    if share_arrays_over is not None and (
        isinstance(share_arrays_over, bool)
        or not isinstance(share_arrays_over, int)
        or share_arrays_over < 0
    ):
        raise invalid_argument("share_arrays_over", share_arrays_over, "bytes as an int, or None")
    # Trials run on the driver's Keras backend, and a spare readies Keras and the tuner.
    child_env = {"KERAS_BACKEND": backend_name(), **(env or {})}
    if preload is None:
        preload = (*default_preload(), "keras", "keras_tuner")
    options = {
        "timeout": timeout,
        "max_memory": max_memory,
        "env": child_env,
        "gpu_config": dict(gpu_config) if gpu_config is not None else None,
        "keep_warm": keep_warm,
        "preload": preload,
    }
    previous = tuner.__dict__.get("_memguard_isolation")
    if previous is not None:
        previous.release()
    state = _Isolation(options, share_arrays_over)
    tuner._memguard_isolation = state
    setattr(tuner, BUILD_AND_FIT_METHOD, types.MethodType(_isolated_build_and_fit, tuner))
    on_search_end = type(tuner).on_search_end

    def search_ended(self: Any) -> None:
        try:
            on_search_end(self)
        finally:
            self._memguard_isolation.release()
            if keep_warm:  # the search is over: no trial needs the spare
                shutdown_spares()

    tuner.on_search_end = types.MethodType(search_ended, tuner)
    atexit.register(state.release)
    return tuner
