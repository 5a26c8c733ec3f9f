"""The ``__main__`` of a process that a ``run_isolated`` child spawns.

The child's ``__main__`` names this module as its ``__spec__``; multiprocessing's spawn
(``Pool``, ``ProcessPoolExecutor``, ``PyDataset`` workers started with spawn) then runs
it in the new process as ``__mp_main__``, and it rebuilds the child's ``__main__`` from
``MEMGUARD_ISOLATED_MAIN``: the user's guarded script run as ``__mp_main__``, and the
functions that came by value. Imported under its own name, it does nothing.

Example:
    >>> import runpy; runpy.run_module(__name__, run_name="__mp_main__")["train"]
"""

if __name__ == "__mp_main__":
    from keras_memguard.isolation._transfer import rebuilt_main as _rebuilt_main

    globals().update(_rebuilt_main())
    del _rebuilt_main
