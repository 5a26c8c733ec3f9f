import re

import pytest

from keras_memguard.sizes import Size, format_bytes, parse_size


@pytest.mark.parametrize(
    "value, expected",
    [
        (2**20, Size(bytes=2**20)),
        (3 * 2**30, Size(bytes=3 * 2**30)),
        ("512MB", Size(bytes=512 * 10**6)),
        ("512 MiB", Size(bytes=512 * 2**20)),
        ("12GiB", Size(bytes=12 * 2**30)),
        ("1.5gb", Size(bytes=1_500_000_000)),
        ("1048576", Size(bytes=2**20)),
        ("100B", Size(bytes=100)),
        (0.8, Size(fraction=0.8)),
        (1.0, Size(fraction=1.0)),
        ("0.25", Size(fraction=0.25)),
        ("80%", Size(fraction=0.8)),
        (" 12.5 % ", Size(fraction=0.125)),
    ],
)
def test_accepted_forms(value, expected):
    assert parse_size(value, name="max_process_memory") == expected


@pytest.mark.parametrize(
    "value, why",
    [
        (0, "must be positive"),
        (-5, "must be positive"),
        (0.0, "must be positive"),
        (1.5, "a fraction cannot exceed 1"),
        ("150%", "a fraction cannot exceed 1"),
        ("0%", "must be positive"),
        ("12XB", "unknown unit"),
        ([1], "unsupported type list"),
        (float("nan"), "must be positive"),
    ],
)
def test_bad_forms_name_the_parameter_and_list_accepted_forms(value, why):
    with pytest.raises(ValueError) as info:
        parse_size(value, name="min_available_memory")
    message = str(info.value)
    assert "`min_available_memory`" in message
    assert f"min_available_memory={value!r}" in message
    assert "'12GiB'" in message and "'80%'" in message
    assert f"({why}" in message


@pytest.mark.parametrize("value", ["twelve GiB", "", True, None])
def test_unreadable_values_list_the_accepted_forms(value):
    with pytest.raises(ValueError) as info:
        parse_size(value, name="min_available_memory")
    message = str(info.value)
    assert f"Received: min_available_memory={value!r}. Expected bytes" in message
    assert "'12GiB'" in message and "'80%'" in message


@pytest.mark.parametrize(
    "name, value, suggestion",
    [
        ("max_process_memory", 8, "did you mean '8GiB'?"),
        ("min_available_memory", 2, "did you mean '2GiB'?"),
        ("max_gpu_memory", 16, "did you mean '16GiB'?"),
        ("max_gpu_memory", "16", "did you mean '16GiB'?"),
        ("memory_limit", 5120, "did you mean '5120MiB'?"),
        ("max_process_memory", 1, "did you mean 1.0 (100%) or '1GiB'?"),
        ("max_process_memory", 2**20 - 1, "did you mean '1048575MiB'?"),
    ],
)
def test_a_bare_int_below_one_mib_is_a_unit_slip(name, value, suggestion):
    with pytest.raises(ValueError) as info:
        parse_size(value, name=name)
    message = str(info.value)
    assert f"`{name}`" in message and suggestion in message


def test_a_small_size_with_a_unit_is_taken_at_its_word():
    assert parse_size("100B", name="x") == Size(bytes=100)
    assert parse_size("8KiB", name="x") == Size(bytes=8192)


def test_unit_slips_in_every_public_entry_point():
    from keras_memguard import MemGuardCallback
    from keras_memguard.backends.configure import configure_gpus

    for kwargs, suggestion in [
        ({"max_process_memory": 8}, "'8GiB'"),
        ({"min_available_memory": 2}, "'2GiB'"),
        ({"max_gpu_memory": 16}, "'16GiB'"),
        ({"emergency_available_memory": 1}, "1.0 (100%)"),
    ]:
        with pytest.raises(ValueError, match=f"did you mean {re.escape(suggestion)}"):
            MemGuardCallback(**kwargs)
    for limit, suggestion in [(5120, "'5120MiB'"), (5, "'5GiB'")]:
        with pytest.raises(ValueError, match=f"`memory_limit`.*did you mean {suggestion}"):
            configure_gpus(memory_limit=limit)


def test_fractions_can_be_refused():
    with pytest.raises(ValueError, match="fractions are not accepted") as info:
        parse_size(0.5, name="cache_budget", allow_fraction=False)
    assert "'80%'" not in str(info.value)
    with pytest.raises(ValueError, match="percentages are not accepted"):
        parse_size("50%", name="cache_budget", allow_fraction=False)


def test_resolve_against_a_total():
    assert parse_size("80%", name="x").resolve(1000) == 800
    assert parse_size("80%", name="x").resolve(None) is None
    assert parse_size("1KiB", name="x").resolve(None) == 1024
    assert str(parse_size("50%", name="x")) == "50%"
    assert str(parse_size("3GiB", name="x")) == "3.0 GiB"


def test_format_bytes():
    assert format_bytes(None) == "n/a"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(28 * 2**30) == "28.0 GiB"


def test_numpy_integers_are_bytes_and_a_large_float_says_what_to_pass():
    import numpy as np

    assert parse_size(np.int64(8 * 2**30), name="max_process_memory").bytes == 8 * 2**30
    with pytest.raises(ValueError, match=r"max_process_memory.*did you mean 8000000000\?"):
        parse_size(8e9, name="max_process_memory")
    assert parse_size(np.float32(0.5), name="max_process_memory").fraction == 0.5
