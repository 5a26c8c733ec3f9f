"""The flat public API: every exported name resolves, and nothing else is advertised."""

import pytest

import keras_memguard

EXPECTED = {
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
}


@pytest.mark.tensorflow
def test_exported_names():
    assert set(keras_memguard.__all__) == EXPECTED
    for name in keras_memguard.__all__:
        assert getattr(keras_memguard, name) is not None
    assert issubclass(keras_memguard.MemoryLimitExceededError, keras_memguard.MemGuardError)
    assert issubclass(keras_memguard.IsolatedError, keras_memguard.MemGuardError)
    assert issubclass(keras_memguard.DatasetUnavailableError, keras_memguard.MemGuardError)


def test_unknown_attribute_is_an_attribute_error():
    try:
        keras_memguard.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("expected AttributeError")


def test_every_error_the_package_raises_is_a_memguard_error():
    """`except MemGuardError` catches all of the package's own errors."""
    import importlib
    import inspect
    import pkgutil

    own = {}
    for info in pkgutil.walk_packages(keras_memguard.__path__, "keras_memguard."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # a module for a framework that is not installed here
            continue
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, Exception)
                and not issubclass(value, Warning)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                own[name] = value
    # The child's traceback, attached as __cause__ of the error raised, never raised alone.
    own.pop("RemoteTraceback")
    assert {"ReportError", "IsolatedError", "MemoryLimitExceededError"} <= set(own)
    assert [n for n, c in own.items() if not issubclass(c, keras_memguard.MemGuardError)] == []
    assert keras_memguard.ReportError is own["ReportError"]
    assert callable(keras_memguard.shutdown_spares)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("keras_memguard.backends.tensorflow.TensorFlowDevices", "tensorflow.configure"),
        ("keras_memguard.backends.tensorflow.is_initialized", "tensorflow.memory"),
        ("keras_memguard.backends.jax.gpu_backend", "jax.memory"),
        ("keras_memguard.backends.torch.TorchDevices", "torch.configure"),
    ],
)
def test_the_old_adapter_paths_still_work_and_warn(old, new):
    import importlib

    package, name = old.rsplit(".", 1)
    module = importlib.import_module(package)
    with pytest.warns(DeprecationWarning, match=rf"moved to keras_memguard\.backends\.{new}"):
        found = getattr(module, name)
    assert found is getattr(importlib.import_module(f"keras_memguard.backends.{new}"), name)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_configure_keeps_its_public_names():
    from keras_memguard.backends import configure

    for name in configure.__all__:
        assert getattr(configure, name) is not None
    assert set(configure.__all__) >= {"GpuSetting", "configure_gpus", "current_gpu_configuration"}
