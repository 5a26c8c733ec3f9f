"""The bounds a user relies on, each in a real fit(): the available-memory floor, the
default emergency halt, the 10% warning, the GPU bound on the allocator's peak, and
release_memory()'s figures.

Container memory comes from a cgroup v2 tree under a temporary directory whose usage a
callback raises batch by batch; the GPU from a fake backend adapter at its one
boundary (`current_backend()` in keras_memguard/memory_snapshot.py). Everything else is real.
"""

import warnings

import keras
import pytest
from training import tiny_data, tiny_model

from keras_memguard import MemGuardCallback, release_memory
from keras_memguard import memory_snapshot as snapshot_module
from keras_memguard.backends.base import DeviceMemory
from keras_memguard.errors import MemGuardWarning
from keras_memguard.probes import cgroup

pytestmark = pytest.mark.backends  # TensorFlow, JAX and PyTorch (issue #23)

MIB, GIB = 2**20, 2**30
LIMIT = GIB


def fit(model, callbacks, epochs=2, batch_size=16):
    x, y = tiny_data(samples=256)  # 16 batches of 16
    return model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=callbacks)


class Container:
    """A cgroup v2 with a 1 GiB limit whose usage the test sets."""

    def __init__(self, root):
        self.root = root
        (root / "cgroup.controllers").write_text("memory\n")
        (root / "memory.max").write_text(f"{LIMIT}\n")
        (root / "memory.stat").write_text("anon 0\ninactive_file 0\n")
        (root / "memory.events").write_text("oom_kill 0\n")
        self.set_usage(0)

    def set_usage(self, usage):
        (self.root / "memory.current").write_text(f"{usage}\n")


class GrowUsage(keras.callbacks.Callback):
    """The container's usage grows by `step` per training batch from `start`."""

    def __init__(self, container, start, step):
        super().__init__()
        self.container, self.usage, self.step = container, start, step

    def on_train_batch_begin(self, batch, logs=None):
        self.usage += self.step
        self.container.set_usage(self.usage)


@pytest.fixture
def container(tmp_path, monkeypatch):
    root = tmp_path / "cgroup"
    root.mkdir()
    (tmp_path / "proc_cgroup").write_text("0::/\n")
    monkeypatch.setattr(
        cgroup, "_default_reader", cgroup.CgroupReader(str(root), str(tmp_path / "proc_cgroup"))
    )
    return Container(root)


def test_min_available_memory_halts_when_the_container_fills(container):
    container.set_usage(600 * MIB)
    guard = MemGuardCallback(min_available_memory="300MiB", check_every_n_batches=1, verbose=0)
    history = fit(tiny_model(), [GrowUsage(container, 600 * MIB, 20 * MIB), guard], epochs=3)
    halt = guard.summary.halts[0]
    assert halt.metric == "effective_available" and halt.bound == 300 * MIB
    # Issue #23: halted while the floor, plus the growth of the next batch and of the
    # batch Keras still runs after a stop (2 x 20 MiB), were still available.
    assert halt.reserve == 40 * MIB
    assert halt.bound <= halt.value < halt.bound + halt.reserve
    assert (halt.epoch, halt.batch) == (0, 4)  # 600 + 5 x 20 = 700 MiB used: 324 left
    assert guard.summary.min_effective_available >= 300 * MIB  # never below the floor
    assert "would have fallen below the bound 300.0 MiB" in halt.describe()
    assert len(history.history["loss"]) == 1


def test_default_guard_warns_at_10_percent_and_halts_before_its_floor(container, capsys):
    container.set_usage(880 * MIB)
    guard = MemGuardCallback(check_every_n_batches=1, verbose=0)  # no bound given
    with pytest.warns(MemGuardWarning, match=r"only .* of 1\.0 GiB is available") as record:
        history = fit(tiny_model(), [GrowUsage(container, 880 * MIB, 10 * MIB), guard], epochs=3)
    assert len([w for w in record if "is available" in str(w.message)]) == 1
    halt = guard.summary.halts[0]
    # The default floor: 4% of the limit (41 MiB), with the growth reserved on top.
    assert halt.metric == "effective_available" and halt.bound == int(0.04 * LIMIT)
    assert halt.reserve == 20 * MIB  # two batches of 10 MiB: to the next check, and Keras's
    assert halt.bound <= halt.value < halt.bound + halt.reserve
    assert (halt.epoch, halt.batch) == (0, 8)  # 970 MiB used: 54 left, 34 after two batches
    assert guard.summary.min_effective_available >= int(0.04 * LIMIT)
    assert "(emergency_available_memory)" in capsys.readouterr().err
    assert len(history.history["loss"]) == 1


def test_low_memory_warning_alone_never_halts(container):
    container.set_usage(950 * MIB)  # 74 MiB left: below 10%, above the 41 MiB floor
    guard = MemGuardCallback(check_every_n_batches=1, verbose=0)
    with pytest.warns(MemGuardWarning, match="is available") as record:
        history = fit(tiny_model(), [guard], epochs=2)
    assert len([w for w in record if "is available" in str(w.message)]) == 1
    assert len(history.history["loss"]) == 2 and guard.summary.halts == []


def test_release_memory_reports_what_the_collector_freed():
    class Cycle:
        pass

    block = Cycle()
    block.self, block.data = block, b"x" * (300 * MIB)  # freed only by the collector
    del block
    result = release_memory()
    assert result.collected >= 1
    assert result.rss_before - result.rss_after >= 250 * MIB
    assert result.freed == result.rss_before - result.rss_after
    assert result.cleared_session is False


class FakeFramework:
    """A framework's allocator for one GPU: live bytes at batch end, an in-step peak."""

    name = "fake"

    def __init__(self, resettable=True, limit=16 * GIB, initialized=True):
        self.resettable, self.limit, self.initialized = resettable, limit, initialized
        self.allocated, self.peak, self.resets = GIB, GIB, 0

    def step(self, activations):
        self.peak = max(self.peak, self.allocated + activations)

    def is_gpu_initialized(self):
        return self.initialized

    def device_memory(self):
        if not self.initialized:
            return None
        figures = DeviceMemory(
            0, self.allocated, self.peak, limit=self.limit, peak_resettable=self.resettable
        )
        return [figures]

    def reset_peaks(self):
        if not self.resettable:
            return False
        self.peak, self.resets = self.allocated, self.resets + 1
        return True


class Steps(keras.callbacks.Callback):
    def __init__(self, framework, activations):
        super().__init__()
        self.framework, self.activations = framework, activations

    def on_train_batch_begin(self, batch, logs=None):
        self.framework.step(self.activations(self.model.optimizer.iterations.numpy()))


@pytest.fixture
def framework(monkeypatch, no_nvml):
    fake = FakeFramework()
    monkeypatch.setattr(snapshot_module, "current_backend", lambda: fake)
    return fake


def test_gpu_bound_is_compared_with_the_in_step_peak(framework, capsys):
    # Live bytes stay at 1 GiB; from step 5 each step peaks 3 GiB higher.
    guard = MemGuardCallback(max_gpu_memory="2GiB", check_every_n_batches=1, verbose=0)
    steps = Steps(framework, lambda i: 3 * GIB if i >= 5 else 0)
    history = fit(tiny_model(), [steps, guard], epochs=2)
    halt = guard.summary.halts[0]
    assert halt.metric == "gpu0_allocated_peak" and halt.value == 4 * GIB
    assert (halt.epoch, halt.batch) == (0, 5)
    assert "gpu0_allocated_peak 4.0 GiB crossed the bound 2.0 GiB" in capsys.readouterr().err
    assert len(history.history["loss"]) == 1
    assert framework.resets >= 6  # peak since the previous check: reset after each one
    assert history.history["memory/gpu0_allocated_peak_mib"] == [4096.0]


def test_gpu_epoch_peak_in_logs_survives_the_per_check_resets(framework):
    guard = MemGuardCallback(check_every_n_batches=1, verbose=0)
    steps = Steps(framework, lambda i: GIB if i == 3 else 0)  # one 2 GiB step, then calm
    history = fit(tiny_model(), [steps, guard], epochs=2)
    assert history.history["memory/gpu0_allocated_peak_mib"] == [2048.0, 1024.0]


def test_a_peak_that_cannot_be_reset_counts_only_when_it_rises(framework):
    framework.resettable = False
    framework.peak = 5 * GIB  # reached before this fit (say, a bigger model earlier)
    guard = MemGuardCallback(max_gpu_memory="3GiB", check_every_n_batches=1, verbose=0)
    calm = fit(tiny_model(), [Steps(framework, lambda i: GIB), guard], epochs=2)
    assert len(calm.history["loss"]) == 2 and guard.summary.halts == []
    steps = Steps(framework, lambda i: 5 * GIB if i >= 20 else GIB)  # 6 GiB > old peak
    fit(tiny_model(), [steps, guard], epochs=2)
    halt = guard.summary.halts[0]
    assert halt.metric == "gpu0_allocated_peak" and halt.value == 6 * GIB


@pytest.fixture(scope="module")
def estimated():
    """A model and its full pre-flight's step temporaries (a real estimate, computed
    once per model and input: the guards below find it cached)."""
    model = tiny_model()
    guard = MemGuardCallback(preflight="full", verbose=0)
    fit(model, [guard], epochs=1)
    part = guard.estimate.part("step temporaries")
    assert part is not None and part.bytes > 0, guard.estimate
    return model, part.bytes


def test_a_peak_that_cannot_be_reset_reads_live_bytes_plus_the_step_temporaries(
    framework, estimated
):
    # Issue #23 (JAX's peak_bytes_in_use): every step peaks at the live bytes plus its
    # temporaries. The epoch peaks read [peak, live, live] with the rise-only rule
    # ([3072, 1024, 1024] MiB in the issue); with the step's temporaries known they
    # read the step's peak in every epoch.
    framework.resettable = False
    model, temporaries = estimated
    guard = MemGuardCallback(preflight="full", check_every_n_batches=1, verbose=0)
    framework.peak = framework.allocated  # the high before is the live bytes
    history = fit(model, [Steps(framework, lambda i: temporaries), guard], epochs=3)
    step_peak = (framework.allocated + temporaries) / MIB
    assert history.history["memory/gpu0_allocated_peak_mib"] == [pytest.approx(step_peak)] * 3


def test_a_bound_between_live_bytes_and_the_step_peak_halts_after_an_earlier_high(
    framework, estimated
):
    # Issue #23: after an earlier 5 GiB high, max_gpu_memory="2.5GiB" with 3 GiB per-step
    # peaks never halted (JAX's peak does not rise again). Here the step's temporaries
    # are the real estimate's, the bound half of them above the live bytes.
    framework.resettable = False
    model, temporaries = estimated
    guard = MemGuardCallback(preflight="full", check_every_n_batches=1, verbose=0)
    framework.peak = 5 * GIB  # reached before this fit
    guard.bounds = MemGuardCallback(max_gpu_memory=GIB + temporaries // 2).bounds
    history = fit(model, [Steps(framework, lambda i: temporaries), guard], epochs=2)
    halt = guard.summary.halts[0]
    assert halt.metric == "gpu0_allocated_peak"
    assert halt.value == GIB + temporaries and (halt.epoch, halt.batch) == (0, 0)
    assert len(history.history["loss"]) == 1


def test_gpu_fraction_fails_in_init_when_no_total_can_be_known(framework):
    framework.limit = None  # GPUs set up, no NVML, the framework reports no limit
    with pytest.raises(ValueError, match=r"`max_gpu_memory`.*needs each GPU.s total"):
        MemGuardCallback(max_gpu_memory=0.8)
    MemGuardCallback(max_gpu_memory="12GiB")  # bytes need no total


def test_gpu_fraction_resolves_against_the_framework_limit_without_nvml(framework):
    guard = MemGuardCallback(max_gpu_memory=0.1, check_every_n_batches=1, verbose=0)
    fit(tiny_model(), [Steps(framework, lambda i: GIB), guard], epochs=1)
    assert guard.summary.halts[0].bound == int(16 * GIB * 0.1)


def test_gpu_fraction_unknowable_until_fit_warns_loudly_once(framework):
    framework.initialized, framework.limit = False, None  # GPUs not set up yet
    guard = MemGuardCallback(max_gpu_memory=0.8, verbose=0)  # cannot know yet: accepted
    framework.initialized = True
    with pytest.warns(MemGuardWarning, match=r"max_gpu_memory=80% is DISABLED .*'12GiB'") as rec:
        history = fit(tiny_model(), [guard], epochs=2)
    assert len([w for w in rec if "DISABLED" in str(w.message)]) == 1
    assert len(history.history["loss"]) == 2


def test_no_warning_without_a_gpu_bound(framework):
    with warnings.catch_warnings():
        warnings.simplefilter("error", MemGuardWarning)
        fit(tiny_model(), [MemGuardCallback(verbose=0)], epochs=1)


def test_a_halt_just_past_its_bound_shows_the_difference():
    # Seen on an H200: "gpu0_allocated_peak 4.0 GiB crossed the bound 4.0 GiB".
    from keras_memguard.guard.policy import Halt

    halt = Halt("gpu0_allocated_peak", 4 * GIB + 45 * 1024, 4 * GIB, 0, 15, "stop", None)
    assert "gpu0_allocated_peak crossed the bound 4.0 GiB by 45.0 KiB at" in halt.describe()
    far = Halt("process_tree", 9 * GIB, 8 * GIB, 0, 3, "stop", None)
    assert "9.0 GiB crossed the bound 8.0 GiB" in far.describe()


class GrowLive(keras.callbacks.Callback):
    """Each training step holds `step` more live bytes on the fake GPU."""

    def __init__(self, framework, step):
        super().__init__()
        self.framework, self.step = framework, step

    def on_train_batch_begin(self, batch, logs=None):
        self.framework.allocated += self.step
        self.framework.peak = max(self.framework.peak, self.framework.allocated)


def test_no_argument_guard_halts_before_the_gpu_allocator_runs_out(framework, tmp_path, capsys):
    # Issue #23: the framework's pool is 4 GiB; live bytes grow 256 MiB per step. With no
    # bound given, the default guard stops before the allocator would run out.
    framework.limit = 4 * GIB
    guard = MemGuardCallback(checkpoint_path=tmp_path / "g.keras")
    history = fit(tiny_model(), [GrowLive(framework, 256 * MIB), guard], epochs=3)
    halt = guard.summary.halts[0]
    assert halt.metric == "gpu0_allocated_peak" and halt.bound < 4 * GIB
    assert halt.value + halt.reserve > halt.bound >= halt.value
    assert "(the GPU's limit)" in capsys.readouterr().err
    assert framework.allocated <= 4 * GIB  # the batch Keras still ran fitted too
    assert len(history.history["loss"]) == 1
    assert keras.saving.load_model(halt.checkpoint).count_params() > 0


def test_without_a_floor_no_gpu_bound_is_made_up(framework):
    framework.limit = 4 * GIB
    guard = MemGuardCallback(emergency_available_memory=None)
    history = fit(tiny_model(), [GrowLive(framework, 64 * MIB), guard], epochs=2)
    assert guard.summary.halts == [] and len(history.history["loss"]) == 2
