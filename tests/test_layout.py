"""The package's layout follows the data flow, and no module imports upward.

probes (process, system, cgroup, NVML) -> backends (one adapter per framework) ->
memory_snapshot (one reading of both) -> estimate (the pre-flight) -> guard -> data ->
isolation -> cli. errors.py and sizes.py sit below everything. A module may import its
own layer or lower ones.
"""

import ast
import pathlib

import keras_memguard

PACKAGE = pathlib.Path(keras_memguard.__file__).parent
LAYERS = [
    {"errors", "sizes"},
    {"probes"},
    {"backends"},
    {"memory_snapshot"},
    {"estimate"},
    {"guard"},
    {"data"},
    {"isolation"},
    {"cli"},
]


def layer_of(part: str) -> int | None:
    for index, names in enumerate(LAYERS):
        if part in names:
            return index
    return None


def imported_parts(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    parts = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
            if node.module == "keras_memguard":
                names = [f"keras_memguard.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "keras_memguard" and len(pieces) > 1:
                parts.add(pieces[1])
    return parts


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ("__init__.py", "__main__.py"):
            continue  # the public surface imports from every layer
        own = layer_of(relative.parts[0].removesuffix(".py"))
        assert own is not None, f"{relative} is in no layer: add it to LAYERS"
        for part in imported_parts(path):
            other = layer_of(part)
            assert other is not None, f"{relative} imports keras_memguard.{part}, in no layer"
            if other > own:
                upward.append(f"{relative} imports keras_memguard.{part}")
    assert upward == []


def test_errors_know_nothing_else_of_the_package():
    assert imported_parts(PACKAGE / "errors.py") == set()
