"""The flat public API: every exported name resolves, and nothing else is advertised."""

import pytest

import keras_memguard

EXPECTED = {
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
    "MemoryLimitExceededError",
    "MemorySnapshot",
    "PipelinePlan",
    "ReleaseResult",
    "Size",
    "__version__",
    "configure_gpus",
    "dataset_from_tfds",
    "find_batch_size",
    "format_bytes",
    "isolate_trials",
    "parse_size",
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
