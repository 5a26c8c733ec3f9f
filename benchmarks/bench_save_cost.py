"""What saving a checkpoint costs in memory, per format (the figures behind SAVE_COST).

Run: python benchmarks/bench_save_cost.py [--units 4096]   (any KERAS_BACKEND)

A dense model of three ``units x units`` layers with Adam, trained one step; each save
(``.weights.h5`` and ``.keras``, twice each) is timed by a thread sampling this
process's RSS every 0.5 ms. Printed: the variables, the optimizer's state, the peak RSS
above the RSS before the save, and the file's size. ``guard/headroom.save_headroom``
reserves the state once plus two largest variables for ``.keras``, two largest
variables for ``.weights.h5`` (docs/callback.md, "Room for the save").
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import keras
import numpy as np

from keras_memguard.estimate.static import model_parts

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 2**20


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_during(save, path: str) -> int:
    """Peak RSS while ``save(path)`` runs, above the RSS before it, in bytes."""
    peak, stop = [rss()], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample)
    thread.start()
    base = rss()
    save(path)
    stop.set()
    thread.join()
    return peak[0] - base


def main(units: int) -> None:
    dense = [keras.layers.Dense(units) for _ in range(3)]
    model = keras.Sequential([keras.Input((units,)), *dense, keras.layers.Dense(10)])
    model.compile("adam", "mse")
    x, y = np.zeros((64, units), "float32"), np.zeros((64, 10), "float32")
    model.fit(x, y, epochs=1, verbose=0)
    parts = {p.name: p.bytes or 0 for p in model_parts(model)}
    folder = tempfile.mkdtemp()
    for name in ["a.weights.h5", "b.keras", "c.weights.h5", "d.keras"]:
        save = model.save_weights if name.endswith(".weights.h5") else model.save
        path = os.path.join(folder, name)
        extra = peak_during(save, path)
        print(
            f"{keras.backend.backend()} {name}: variables {parts['variables'] / MIB:.1f} MiB, "
            f"optimizer {parts['optimizer state'] / MIB:.1f} MiB, save +{extra / MIB:.1f} MiB "
            f"RSS, file {os.path.getsize(path) / MIB:.1f} MiB",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=4096)
    main(parser.parse_args().units)
