"""Checks on a real NVIDIA GPU, one per fresh process: ``python tests/gpu_checks.py NAME``.

Each check prints one JSON line with what it measured; ``tests/test_gpu_backends.py`` runs
them under ``KERAS_BACKEND=jax`` and ``KERAS_BACKEND=torch`` and asserts on the figures.
A fresh process matters: JAX fixes its GPU pool and PyTorch its CUDA context the first
time they touch the device, so every configuration is tried from a clean start.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

GIB = 2**30
MIB = 2**20
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")


def emit(**values: object) -> None:
    print(json.dumps(values, default=str), flush=True)


def nvidia_smi_gpu() -> dict[str, int]:
    """Device 0's total and used memory as nvidia-smi reports them, in bytes."""
    out = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=memory.total,memory.used",
            "--format=csv,noheader,nounits",
            "-i",
            "0",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    total, used = (int(v) * MIB for v in out.split(","))
    return {"total": total, "used": used}


def nvidia_smi_apps() -> dict[int, int]:
    """``{pid: bytes}`` of the compute processes nvidia-smi lists (may be empty in containers)."""
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    apps = {}
    for line in out.splitlines():
        if "," in line:
            pid, used = line.split(",")
            apps[int(pid)] = int(used.strip()) * MIB
    return apps


def nvml_process_used() -> int | None:
    from keras_memguard.probes import nvml

    gpus = nvml.read_gpu_memory() or []
    return gpus[0].process_used if gpus else None


def allocate(n_bytes: int):
    """A device array of ``n_bytes`` (float32) in the current backend, materialized."""
    import keras

    x = keras.ops.ones((n_bytes // 4,), dtype="float32")
    sync(x)
    return x


def sync(x) -> None:
    if BACKEND == "jax":
        x.block_until_ready()
    elif BACKEND == "torch":
        import torch

        torch.cuda.synchronize()


def oom_types() -> tuple[type[BaseException], ...]:
    if BACKEND == "torch":
        import torch

        return (torch.OutOfMemoryError,)
    import jaxlib

    errors = [getattr(jaxlib, "xla_extension", None)]
    found: list[type[BaseException]] = []
    for module in errors:
        if module is not None and hasattr(module, "XlaRuntimeError"):
            found.append(module.XlaRuntimeError)
    import jax

    found.append(getattr(jax.errors, "JaxRuntimeError", RuntimeError))
    return tuple(found)


# --------------------------------------------------------------------------- checks
def check_doctor() -> None:
    """doctor's figures against nvidia-smi while this process holds a known allocation."""
    held = allocate(2 * GIB)
    time.sleep(0.5)
    from keras_memguard.cli.doctor import doctor_report

    report = doctor_report()
    smi = nvidia_smi_gpu()
    apps = nvidia_smi_apps()
    gpu = report["snapshot"]["gpus"][0]
    emit(
        check="doctor",
        doctor_total=gpu.get("total"),
        doctor_used=gpu.get("device_used"),
        doctor_process=gpu.get("process_used"),
        smi_total=smi["total"],
        smi_used=smi["used"],
        smi_apps={str(k): v for k, v in apps.items()},
        pid=os.getpid(),
        held=int(held.shape[0]) * 4,
        tensorflow_imported="tensorflow" in sys.modules,
    )


def check_default_preallocation() -> None:
    """What the framework takes at its first tiny op with no configuration."""
    allocate(4)
    time.sleep(0.5)
    smi = nvidia_smi_gpu()
    emit(check="default", process=nvml_process_used(), smi_used=smi["used"], total=smi["total"])


def _limit_check(report_text: str) -> None:
    six = allocate(6 * GIB)
    six_ok = int(six.shape[0]) * 4 == 6 * GIB
    del six
    if BACKEND == "torch":
        import torch

        torch.cuda.empty_cache()
    try:
        ten = allocate(10 * GIB)
        ten_ok, error = True, ""
        del ten
    except oom_types() as err:
        ten_ok, error = False, f"{type(err).__name__}: {str(err)[:200]}"
    from keras_memguard.backends.base import current_backend

    emit(
        check="limit",
        report=report_text,
        six_ok=six_ok,
        ten_ok=ten_ok,
        error=error,
        recognised=bool(error)
        and current_backend().is_out_of_memory(None, error.split(":")[0], error),
        process=nvml_process_used(),
    )


def check_limit() -> None:
    import keras_memguard as mg

    report = mg.configure_gpus(memory_limit="8GiB")
    _limit_check(str(report))


def check_growth() -> None:
    import keras_memguard as mg

    report = mg.configure_gpus(memory_growth=True)
    allocate(64 * MIB)
    time.sleep(0.5)
    smi = nvidia_smi_gpu()
    emit(
        check="growth",
        report=str(report),
        process=nvml_process_used(),
        smi_used=smi["used"],
        total=smi["total"],
    )


def check_figures() -> None:
    """Allocator figures against known allocations: current, then peak after a freed temp."""
    import keras_memguard as mg

    mg.configure_gpus(memory_growth=True)
    warm = allocate(4)
    base = mg.snapshot().metrics()
    one = allocate(GIB)
    after_one = mg.snapshot().metrics()
    temp = allocate(2 * GIB)
    del temp
    if BACKEND == "torch":
        import torch

        torch.cuda.synchronize()
    after_temp = mg.snapshot().metrics()
    start = time.perf_counter()
    for _ in range(100):
        mg.snapshot()
    snapshot_s = (time.perf_counter() - start) / 100
    from keras_memguard.backends.base import current_backend

    backend = current_backend()
    start = time.perf_counter()
    for _ in range(100):
        backend.device_memory()
    read_s = (time.perf_counter() - start) / 100
    emit(
        check="figures",
        base=base,
        after_one=after_one,
        after_temp=after_temp,
        snapshot_ms=snapshot_s * 1e3,
        device_read_ms=read_s * 1e3,
        keep=[int(warm.shape[0]), int(one.shape[0])],
    )


def _small_model(input_dim: int = 32):
    import keras

    model = keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="adam", loss="mse")
    return model


def check_guard_halt() -> None:
    """The guard stops a fit whose callback keeps 256 MiB of device arrays per batch."""
    import keras
    import numpy as np

    import keras_memguard as mg

    mg.configure_gpus(memory_growth=True)
    kept = []

    class Hoard(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            kept.append(allocate(256 * MIB))

    path = os.path.join(tempfile.mkdtemp(), "guard.keras")
    guard = mg.MemGuardCallback(
        max_gpu_memory="4GiB", checkpoint_path=path, check_every_n_batches=1, verbose=0
    )
    model = _small_model()
    x = np.random.rand(64 * 200, 32).astype("float32")
    y = np.random.rand(64 * 200, 1).astype("float32")
    history = model.fit(x, y, batch_size=64, epochs=1, callbacks=[Hoard(), guard], verbose=0)
    halts = guard.summary.halts
    loaded = keras.saving.load_model(path) if os.path.exists(path) else None
    emit(
        check="guard_halt",
        batches_kept=len(kept),
        halts=[h.describe() for h in halts],
        halt_value=halts[0].value if halts else None,
        halt_bound=halts[0].bound if halts else None,
        checkpoint_loads=loaded is not None,
        epochs=len(history.history.get("loss", [])),
        metrics=mg.snapshot().metrics(),
    )


def train_with_batch(batch_size: int) -> int:
    """A short fit that first needs ``batch_size`` x 4 MiB of device memory at once."""
    import numpy as np

    held = allocate(batch_size * 4 * MIB)  # a real device allocation: OOMs above the cap
    model = _small_model()
    x = np.random.rand(batch_size, 32).astype("float32")
    model.fit(x, x[:, :1], batch_size=64, epochs=1, verbose=0)
    del held
    return batch_size


def check_find_batch_size() -> None:
    import keras_memguard as mg

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gpu_checks

    found = mg.find_batch_size(
        gpu_checks.train_with_batch, 4096, gpu_config={"memory_limit": "8GiB"}, timeout=240
    )
    emit(
        check="find_batch_size",
        batch_size=found.batch_size,
        attempts=[(a.batch_size, a.outcome, a.detail[:160]) for a in found.attempts],
    )


def check_release() -> None:
    """release_memory() gives a PyTorch process's cached blocks back to the device."""
    import keras_memguard as mg

    held = allocate(4 * GIB)
    del held
    time.sleep(0.3)
    before = nvidia_smi_apps().get(os.getpid())
    nvml_before = nvml_process_used()
    result = mg.release_memory()
    time.sleep(0.3)
    after = nvidia_smi_apps().get(os.getpid())
    emit(
        check="release",
        smi_before=before,
        smi_after=after,
        nvml_before=nvml_before,
        nvml_after=nvml_process_used(),
        result=repr(result),
    )


def check_overhead() -> None:
    """The guard on a GPU-bound convnet: per-epoch throughput and fixed cost per fit.

    Epoch times come from inside one multi-epoch fit (the first epoch, which compiles,
    is left out), the two sides alternating fit by fit; the fixed cost per ``fit()`` is
    the difference of medians of short fits (two steps), also alternated.
    """
    import keras
    import numpy as np

    import keras_memguard as mg

    mg.configure_gpus(memory_growth=True)
    batches = int(os.environ.get("MEMGUARD_CHECK_BATCHES", "24"))  # 1 for a CPU smoke run
    x = np.random.rand(256 * batches, 64, 64, 3).astype("float32")
    y = np.random.randint(0, 10, size=(256 * batches,))
    model = keras.Sequential(
        [
            keras.Input((64, 64, 3)),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(128, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )

    class EpochTimes(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    model.fit(x, y, batch_size=256, epochs=1, verbose=0)  # compile and warm up
    log_dir = tempfile.mkdtemp()
    reused = mg.MemGuardCallback(log_dir=log_dir, verbose=0)
    epochs: dict[str, list[float]] = {"none": [], "guard": []}
    for _ in range(2):
        for side in ("none", "guard"):
            timer = EpochTimes()
            callbacks = [timer, reused] if side == "guard" else [timer]
            model.fit(x, y, batch_size=256, epochs=4, verbose=0, callbacks=callbacks)
            epochs[side] += timer.times[1:]
    fits: dict[str, list[float]] = {"none": [], "guard_fresh": [], "guard_reused": []}
    for _ in range(5):
        for side in fits:
            if side == "none":
                callbacks = []
            elif side == "guard_fresh":
                callbacks = [mg.MemGuardCallback(log_dir=log_dir, verbose=0)]
            else:
                callbacks = [reused]
            start = time.perf_counter()
            model.fit(x[:512], y[:512], batch_size=256, epochs=1, verbose=0, callbacks=callbacks)
            fits[side].append(time.perf_counter() - start)
    median = statistics.median
    emit(
        check="overhead",
        epoch_none_s=median(epochs["none"]),
        epoch_guard_s=median(epochs["guard"]),
        throughput_ratio=median(epochs["none"]) / median(epochs["guard"]),
        fit_none_ms=median(fits["none"]) * 1e3,
        fit_cost_fresh_ms=(median(fits["guard_fresh"]) - median(fits["none"])) * 1e3,
        fit_cost_reused_ms=(median(fits["guard_reused"]) - median(fits["none"])) * 1e3,
        epochs=epochs,
    )


CHECKS = {name[len("check_") :]: fn for name, fn in globals().items() if name.startswith("check_")}

if __name__ == "__main__":
    CHECKS[sys.argv[1]]()
