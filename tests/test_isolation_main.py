"""run_isolated with functions from the user's ``__main__``, and a child's start-up.

Each script here is a real file run as ``__main__`` by a fresh ``python``, as users run
theirs: guarded, unguarded, and functions defined by ``exec`` the way notebooks define
them. The phase maps a function of that ``__main__`` over a pool, an executor or
``PyDataset`` workers, started with fork, spawn (and forkserver).
"""

import importlib.util
import os
import subprocess
import sys
import textwrap
import time

import isolated_tasks as tasks
import numpy as np
import pytest

import keras_memguard
from keras_memguard.backends.base import backend_name
from keras_memguard.isolation.run import ChildKilledError, ChildTimeoutError, run_isolated

pytestmark = pytest.mark.backends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(keras_memguard.__file__)))
MIB = 2**20

_PHASE = """
import concurrent.futures
import multiprocessing
import sys

sys.path[:0] = {paths!r}
from keras_memguard import find_batch_size, run_isolated


def square(v):
    return v * v


def phase(method, kind):
    if kind == "nested":  # a phase that isolates a phase of its own
        return run_isolated(phase, method, "pool", timeout=120)
    context = multiprocessing.get_context(method)
    if kind == "pool":
        with context.Pool(2) as pool:
            return sum(pool.map(square, range(10)))
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as executor:
        return sum(executor.map(square, range(10)))


def train(batch_size):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        return batch_size, sum(pool.map(square, range(batch_size)))
"""

_GUARDED = """
if __name__ == "__main__":
    if sys.argv[1] == "find_batch_size":
        print("result", find_batch_size(train, 4, timeout=120).result)
    else:
        print("result", run_isolated(phase, sys.argv[1], sys.argv[2], timeout=120))
"""

_UNGUARDED = """
print("result", run_isolated(phase, sys.argv[1], sys.argv[2], timeout=120))
"""

# A notebook runs each cell with exec() in __main__'s namespace.
_NOTEBOOK = """
import sys

sys.path[:0] = {paths!r}
CALL = "print('result', run_isolated(phase, sys.argv[1], sys.argv[2], timeout=120))"
CELLS = [{phase!r}, CALL]
for number, cell in enumerate(CELLS):
    exec(compile(cell, f"<cell-{{number}}>", "exec"), sys.modules["__main__"].__dict__)
"""

# An import blocker: cloudpickle is missing here (and in the child, which gets sys.path).
_NO_CLOUDPICKLE = "raise ImportError('cloudpickle is blocked for this test')\n"


def _run_script(tmp_path, source, *args, block_cloudpickle=False, timeout=300):
    """Runs ``source`` as a script file, with its own temporary directory."""
    paths = [ROOT]
    if block_cloudpickle:
        blocker = tmp_path / "blocker"
        blocker.mkdir(exist_ok=True)
        (blocker / "cloudpickle.py").write_text(_NO_CLOUDPICKLE)
        paths.insert(0, str(blocker))
    script = tmp_path / "train_script.py"
    script.write_text(textwrap.dedent(source).format(paths=paths, phase=_PHASE.format(paths=[])))
    temporary = tmp_path / "tmp"
    temporary.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(temporary)},
    )


def _result(done):
    assert done.returncode == 0, done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if line.startswith("result")]


@pytest.mark.parametrize(
    "method, kind",
    [
        ("spawn", "pool"),
        ("spawn", "executor"),
        ("fork", "pool"),
        ("fork", "executor"),
        ("spawn", "nested"),
    ],
)
def test_a_guarded_script_maps_its_own_function_over_a_pool(tmp_path, method, kind):
    done = _run_script(tmp_path, _PHASE + _GUARDED, method, kind)
    assert _result(done) == ["result 285"]


@pytest.mark.parametrize(
    "method, kind",
    [("spawn", "pool"), ("fork", "pool"), ("forkserver", "pool"), ("spawn", "nested")],
)
def test_an_unguarded_script_maps_its_own_function_over_a_pool(tmp_path, method, kind):
    done = _run_script(tmp_path, _PHASE + _UNGUARDED, method, kind)
    assert _result(done) == ["result 285"]  # and the script body ran once
    assert list((tmp_path / "tmp").iterdir()) == []  # what came by value is removed


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_functions_defined_by_exec_map_over_a_pool(tmp_path, method):
    done = _run_script(tmp_path, _NOTEBOOK, method, "executor")
    assert _result(done) == ["result 285"]


def test_a_guarded_script_needs_no_cloudpickle(tmp_path):
    done = _run_script(tmp_path, _PHASE + _GUARDED, "spawn", "pool", block_cloudpickle=True)
    assert _result(done) == ["result 285"]


def test_find_batch_size_of_a_guarded_script_needs_no_cloudpickle(tmp_path):
    done = _run_script(tmp_path, _PHASE + _GUARDED, "find_batch_size", block_cloudpickle=True)
    assert _result(done) == ["result (4, 14)"]


def test_an_unguarded_script_without_cloudpickle_is_told_what_to_do(tmp_path):
    done = _run_script(tmp_path, _PHASE + _UNGUARDED, "fork", "pool", block_cloudpickle=True)
    assert done.returncode != 0
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("ValueError: Invalid value for argument `fn`")
    assert "phase is defined in __main__" in error
    assert 'if __name__ == "__main__":' in error and "pip install cloudpickle" in error


_INSIDE_THE_GUARD = """
import multiprocessing
import sys

sys.path[:0] = {paths!r}
from keras_memguard import run_isolated


def square(v):
    return v * v


if __name__ == "__main__":

    def cube(v):
        return v * v * v

    def phase(method):
        with multiprocessing.get_context(method).Pool(2) as pool:
            return sum(pool.map(cube, range(4))) + sum(pool.map(square, range(4)))

    print("result", run_isolated(phase, sys.argv[1], timeout=120))
"""


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_functions_defined_inside_the_guard_map_over_a_pool(tmp_path, method):
    # cube and phase travel by value, square by reference: the child (and each spawned
    # worker) runs the script as __mp_main__, then adds what came by value.
    done = _run_script(tmp_path, _INSIDE_THE_GUARD, method)
    assert _result(done) == ["result 50"]


_RESULT = """
import dataclasses
import enum
import sys

sys.path[:0] = {paths!r}
from keras_memguard import run_isolated


class Unit(enum.Enum):
    MIB = 2**20


@dataclasses.dataclass
class Size:
    value: int
    unit: Unit


class Refused(Exception):
    pass


def make(value, unit):
    if value < 0:
        raise Refused(value)
    return Size(value, unit)


def main():
    size = run_isolated(make, 3, Unit.MIB)
    try:
        run_isolated(make, -1, Unit.MIB)
    except Refused:
        print("result", type(size) is Size, size.value, size.unit is Unit.MIB, "caught")
"""


@pytest.mark.parametrize(
    "guarded, block_cloudpickle",
    [(True, False), (True, True), (False, False)],
    ids=["guarded", "guarded-without-cloudpickle", "unguarded"],
)
def test_results_and_errors_of_main_classes_come_back_as_those_classes(
    tmp_path, guarded, block_cloudpickle
):
    call = 'if __name__ == "__main__":\n    main()\n' if guarded else "main()\n"
    done = _run_script(tmp_path, _RESULT + call, block_cloudpickle=block_cloudpickle)
    assert _result(done) == ["result True 3 True caught"]


def test_a_call_outside_the_guard_is_refused_where_the_script_runs_again(tmp_path):
    source = _PHASE + "\nprint('top', run_isolated(square, 3))\n" + _GUARDED
    done = _run_script(tmp_path, source, "fork", "pool")
    assert done.returncode != 0
    assert done.stdout.splitlines() == ["top 9"]  # the unguarded call runs in the driver
    assert "RebuildingMainError: run_isolated was called while your script ran again" in done.stderr
    assert 'Put it under `if __name__ == "__main__":`' in done.stderr


_FAILS_IN_THE_CHILD = """
import os
import sys

sys.path[:0] = {paths!r}
import numpy as np

from keras_memguard import run_isolated

if os.environ.get("IMPORT_WHAT_IS_MISSING"):  # set for the child only
    import a_module_nobody_has


def total(values):
    return int(values.sum())


if __name__ == "__main__":
    big = np.ones(48 * 2**20, dtype=np.uint8)
    run_isolated(total, big, env={{"IMPORT_WHAT_IS_MISSING": "1"}}, timeout=60)
"""


def test_a_script_failing_at_import_in_the_child_reports_its_own_error(tmp_path):
    done = _run_script(tmp_path, _FAILS_IN_THE_CHILD)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()
    assert last[-2] == "ModuleNotFoundError: No module named 'a_module_nobody_has'"
    assert "ran your script again as __mp_main__" in last[-1]


_PYDATASET = """
import multiprocessing
import sys

sys.path[:0] = {paths!r}
import keras
import numpy as np

from keras_memguard import run_isolated


class Batches(keras.utils.PyDataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        x = np.full((8, 2), index, dtype="float32")
        return x, x.sum(axis=1, keepdims=True)


def fit(method):
    multiprocessing.set_start_method(method, force=True)
    data = Batches(workers=2, use_multiprocessing=True)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    return len(model.fit(data, epochs=2, verbose=0).history["loss"])


if __name__ == "__main__":
    print("result", run_isolated(fit, sys.argv[1], timeout=240))
"""


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_pydataset_workers_of_a_guarded_script(tmp_path, monkeypatch, method):
    # JAX where it is installed (quick to import in each worker); else this run's backend.
    backend = "jax" if importlib.util.find_spec("jax") else backend_name()
    monkeypatch.setenv("KERAS_BACKEND", backend)
    done = _run_script(tmp_path, _PYDATASET, method)
    assert _result(done) == ["result 2"]


# --- a child's start-up ----------------------------------------------------------


@pytest.fixture
def broken_install(tmp_path, monkeypatch):
    """The child imports this ``keras_memguard`` first (it gets this ``sys.path``)."""

    def install(body):
        package = tmp_path / "broken" / "keras_memguard"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(body)
        monkeypatch.setattr(sys, "path", [str(package.parent), *sys.path])

    return install


def test_a_child_failing_at_import_reports_its_own_error_whatever_the_payload(broken_install):
    broken_install("raise ImportError('this installation is broken')\n")
    big = np.ones(48 * MIB, dtype=np.uint8)
    with pytest.raises(ImportError, match="this installation is broken"):
        run_isolated(np.sum, big, timeout=60)


def test_a_child_failing_at_start_reports_its_own_error_whatever_the_payload():
    big = np.ones(48 * MIB, dtype=np.uint8)
    with pytest.raises(ValueError, match="memory_limit"):
        run_isolated(np.sum, big, gpu_config={"memory_limit": "lots"}, timeout=60)


def test_a_child_dying_at_start_is_reported_at_once(broken_install):
    broken_install("import os\nos._exit(7)\n")
    start = time.monotonic()
    with pytest.raises(ChildKilledError, match="exited with code 7"):
        run_isolated(np.sum, np.ones(48 * MIB, dtype=np.uint8), timeout=60)
    assert time.monotonic() - start < 10


def test_a_child_hanging_at_start_is_stopped_at_its_timeout(broken_install):
    broken_install("import time\ntime.sleep(60)\n")
    big = np.ones(48 * MIB, dtype=np.uint8)
    start = time.monotonic()
    with pytest.raises(ChildTimeoutError) as info:
        run_isolated(np.sum, big, timeout=2)
    elapsed = time.monotonic() - start
    assert 2 <= elapsed < 3, elapsed  # counted from the call, honoured within 1 s
    assert info.value.exit.timed_out


def test_a_child_dying_in_the_middle_of_its_reply_is_reported_at_once():
    start = time.monotonic()
    with pytest.raises(ChildKilledError, match="exited with code 9"):
        run_isolated(tasks.die_mid_reply, timeout=120)
    assert time.monotonic() - start < 15  # its forked process kept the connection open
