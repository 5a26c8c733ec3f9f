"""The pre-flight estimate of a ``fit``'s peak memory, in parts a user can act on.

A stage of its own between ``memory_snapshot`` and ``guard`` (the guard's pre-flight
uses it); the per-framework pieces live in ``backends/<framework>/estimate.py``.
"""
