"""Probes: read memory where it lives (process tree, machine, cgroup, NVML) into a snapshot.

Nothing here imports an ML framework; device figures from a framework's allocator come
from :mod:`keras_memguard.backends` and only once that framework has set up its GPUs.
"""
