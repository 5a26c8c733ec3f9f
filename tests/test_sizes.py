import pytest

from keras_memguard.sizes import Size, format_bytes, parse_size


@pytest.mark.parametrize(
    "value, expected",
    [
        (1024, Size(bytes=1024)),
        ("512MB", Size(bytes=512 * 10**6)),
        ("512 MiB", Size(bytes=512 * 2**20)),
        ("12GiB", Size(bytes=12 * 2**30)),
        ("1.5gb", Size(bytes=1_500_000_000)),
        ("2048", Size(bytes=2048)),
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
        (1.5, "cannot exceed 1"),
        ("150%", "cannot exceed 1"),
        ("0%", "must be positive"),
        ("12XB", "unknown unit"),
        ("twelve GiB", ""),
        ("", ""),
        (True, ""),
        (None, ""),
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
    assert why in message


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
