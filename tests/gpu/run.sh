#!/usr/bin/env bash
# GPU verification (issue #18), run from the repository root on the lent GPU machine:
#   bash tests/gpu/run.sh
# It installs Keras (and what the machine lacks) from the wheels brought in .whl/ without
# network access, then runs the gpu-marked tests under KERAS_BACKEND=jax and torch, and the
# overhead check; everything goes to $OUT/gpu-run.log (OUT defaults to /tmp/gpu-out).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
LOG="$OUT/gpu-run.log"
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }

# Only the wheels for modules this Python lacks: never shadow the machine's own numpy,
# ml_dtypes or JAX dependencies.
wheels=()
for pair in keras:keras namex:namex optree:optree rich:rich markdown_it:markdown_it_py \
    mdurl:mdurl pygments:pygments h5py:h5py absl:absl_py ml_dtypes:ml_dtypes \
    pytest:pytest pluggy:pluggy iniconfig:iniconfig packaging:packaging; do
  module=${pair%%:*}; wheel=${pair##*:}
  if ! python3 -c "import $module" 2>/dev/null; then
    wheels+=(.whl/"$wheel"-*.whl)
  fi
done
if ((${#wheels[@]})); then
  python3 -m pip install -q --no-index --no-deps --target .site "${wheels[@]}" 2>&1 | tee -a "$LOG"
fi
export PYTHONPATH="$PWD/.site:$PWD"
export TF_CPP_MIN_LOG_LEVEL=2
export KERAS_BACKEND=${KERAS_BACKEND:-jax}  # no TensorFlow on the GPU machine

say "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 | tee -a "$LOG"
python3 - <<'PY' 2>&1 | tee -a "$LOG"
import importlib, platform
print("python", platform.python_version())
for name in ("keras", "jax", "jaxlib", "torch", "numpy", "tensorboard", "psutil", "pynvml"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as err:
        print(name, "missing:", err)
PY
say "== memguard doctor (no framework imported)"
python3 -m keras_memguard doctor 2>&1 | tee -a "$LOG"

say "== gpu-marked tests"
timeout 380 python3 -m pytest tests/test_gpu_backends.py tests/test_leaks.py -m gpu -v -s -p no:cacheprovider \
  -o addopts="" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}

say "== overhead on the GPU (epoch medians, guard against none, interleaved)"
for backend in jax torch; do
  KERAS_BACKEND=$backend timeout 75 python3 tests/gpu_checks.py overhead 2>&1 | tail -1 \
    | sed "s/^/$backend /" | tee -a "$LOG"
done
say "== pytest exit status: $status"
exit "$status"
