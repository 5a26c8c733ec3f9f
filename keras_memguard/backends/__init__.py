"""Backends: one adapter per framework, the only modules that import one.

Each adapter reads device memory, configures GPUs, releases memory and recognises
out-of-memory errors for its framework.
"""
