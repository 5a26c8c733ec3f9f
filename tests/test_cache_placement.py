"""The cache-placement decision of dataset_from_tfds: pure, over sizes and budgets, no TF."""

import subprocess
import sys

import pytest

from keras_memguard.data.placement import (
    CACHE_MODES,
    MAX_SHUFFLE,
    buffer_budget,
    place_cache,
    shuffle_examples,
)

MIB, GIB = 2**20, 2**30
# The numbers: 6,000 / 50,000 images of 32×32×3 uint8 (+ an int64 label), and
# the same resized to 224×224×3 float32.
RAW_6K, PRE_6K = 6000 * 3080, 6000 * 602_120
RAW_50K, PRE_50K = 50_000 * 3080, 50_000 * 602_120
BUDGET = 11 * GIB  # the default budget on a 24 GiB machine: half the limit


def place(mode="auto", raw=RAW_6K, pre=PRE_6K, budget=BUDGET, preprocessing=True, disk=None):
    return place_cache(
        mode,
        raw_bytes=raw,
        preprocessed_bytes=pre,
        budget=budget,
        preprocessing=preprocessing,
        disk_free=disk,
    )


def test_auto_caches_the_preprocessed_examples_when_they_fit_half_the_budget():
    placed = place()
    assert placed.cache == "preprocessed"
    assert "preprocessed examples fit the cache share (5.5 GiB, half the 11.0 GiB" in placed.reason
    assert place(pre=BUDGET // 2).cache == "preprocessed"  # exactly the share still fits
    assert place(pre=BUDGET // 2 + 1).cache == "raw"


def test_auto_caches_raw_examples_when_only_they_fit():
    placed = place(raw=RAW_50K, pre=PRE_50K)
    assert placed.cache == "raw"
    assert "preprocessed examples (≈28.0 GiB) do not fit" in placed.reason
    assert "the raw ones do, so preprocessing re-runs every epoch" in placed.reason


def test_auto_with_an_unknown_preprocessed_size_caches_raw():
    placed = place(pre=None)
    assert placed.cache == "raw" and "an unknown size" in placed.reason


def test_auto_without_preprocessing_calls_the_cache_raw():
    placed = place(pre=RAW_6K, preprocessing=False)
    assert placed.cache == "raw" and "no preprocessing" in placed.reason


@pytest.mark.parametrize("preprocessing", [True, False])
def test_auto_goes_to_a_file_when_memory_is_short_and_the_disk_has_room(preprocessing):
    placed = place(budget=10 * MIB, preprocessing=preprocessing, disk=RAW_6K * 2)
    assert placed.cache == "file"
    assert "do not fit" in placed.reason and "the disk has room" in placed.reason


def test_auto_file_cache_with_an_unknown_raw_size():
    assert place(raw=None, pre=None, budget=10 * MIB, disk=GIB).cache == "file"


def test_auto_does_not_cache_without_a_directory_or_room():
    no_dir = place(budget=10 * MIB)
    assert no_dir.cache == "none" and "no cache_dir was given" in no_dir.reason
    assert "nor do the raw ones (≈17.6 MiB)" in no_dir.reason
    no_room = place(budget=10 * MIB, disk=int(RAW_6K * 1.1))  # needs 1.2× the estimate
    assert no_room.cache == "none" and "the disk lacks room" in no_room.reason
    unknown = place(raw=None, pre=None, preprocessing=False)
    assert unknown.cache == "none" and "an unknown size" in unknown.reason


@pytest.mark.parametrize("mode", ["preprocessed", "raw", "file", "none"])
def test_a_forced_placement_is_kept_even_when_auto_would_choose_otherwise(mode):
    # auto would say "preprocessed" here
    placed = place(mode, disk=GIB)
    assert placed.cache == mode
    assert "as asked" in placed.reason or "off" in placed.reason


def test_a_forced_memory_cache_past_the_whole_budget_is_an_error():
    # Over the share but within the budget: allowed when asked for.
    assert place("preprocessed", pre=int(BUDGET * 0.9)).cache == "preprocessed"
    with pytest.raises(ValueError, match=r"`cache`.*'preprocessed'.*≈28\.0 GiB.*11\.0 GiB"):
        place("preprocessed", pre=PRE_50K)
    with pytest.raises(ValueError, match=r"`cache`.*'raw'.*≈17\.6 MiB.*RAM budget of 1\.0 MiB"):
        place("raw", budget=MIB)


def test_a_forced_file_cache_needs_a_directory_with_room():
    with pytest.raises(ValueError, match="`cache_dir`"):
        place("file")
    with pytest.raises(ValueError, match=r"`cache_dir`.*17\.6 MiB"):
        place("file", disk=RAW_6K)


def test_an_unknown_mode_names_the_choices():
    with pytest.raises(ValueError, match=r"`cache`.*'auto', 'preprocessed', 'raw'"):
        place("memory")
    assert CACHE_MODES == ("auto", "preprocessed", "raw", "file", "none")


def test_shuffle_buffer_is_the_split_within_a_tenth_of_the_budget():
    assert shuffle_examples(None, 6000, 3080, BUDGET) == 6000
    assert shuffle_examples(None, 50_000, 3080, BUDGET) == MAX_SHUFFLE
    assert shuffle_examples(None, None, None, BUDGET) == MAX_SHUFFLE
    # 224×224 float32 examples: a tenth of 11 GiB holds 1,961 of them.
    assert shuffle_examples(None, 6000, 602_120, BUDGET) == int(BUDGET * 0.1) // 602_120 == 1961
    assert shuffle_examples(None, 6000, 602_120, MIB) == 1  # never 0
    assert shuffle_examples(500, 6000, 602_120, MIB) == 500  # asked for: kept


def test_tf_data_buffers_get_a_tenth_of_the_budget():
    assert buffer_budget(10 * GIB) == GIB
    assert buffer_budget(5) == 1


def test_the_decision_imports_without_tensorflow():
    code = (
        "import sys, keras_memguard.data.placement as p; "
        "p.place_cache('auto', raw_bytes=1, preprocessed_bytes=2, budget=10, "
        "preprocessing=True, disk_free=None); "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
