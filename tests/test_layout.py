"""The package's layout follows the data flow, and no module imports upward.

probes (process, system, cgroup, NVML) -> backends (one folder per framework) ->
memory_snapshot (one reading of both) -> estimate (the pre-flight) -> guard -> data ->
isolation -> cli. errors.py and sizes.py sit below everything, compat/ (other projects'
private names) just above them. A module may import its own layer or lower ones.

Frameworks are imported only in their folder under backends/ (tf.data in data/ and
tf_keras in guard/legacy.py excepted), every framework folder has the same modules, and
other projects' private names appear only in the compat modules.
"""

import ast
import importlib
import pathlib
import re

import keras_memguard
from keras_memguard.backends.base import BACKENDS, MODULES

PACKAGE = pathlib.Path(keras_memguard.__file__).parent
LAYERS = [
    {"errors", "sizes"},
    {"compat"},
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


# Where each framework (top-level package) may be imported, as paths under the package.
FRAMEWORK_HOMES = {
    "tensorflow": ("backends/tensorflow/", "data/"),
    "jax": ("backends/jax/",),
    "jaxlib": ("backends/jax/",),
    "torch": ("backends/torch/",),
    "tf_keras": ("guard/legacy.py",),
    "keras_tuner": ("isolation/tuner.py", "compat/keras_tuner.py"),
}


def _imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def _modules() -> list[tuple[str, ast.AST]]:
    return [
        (path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text()))
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


def test_frameworks_are_imported_only_in_their_folders():
    misplaced = []
    for relative, tree in _modules():
        for name in _imported_modules(tree):
            homes = FRAMEWORK_HOMES.get(name.split(".")[0])
            if homes is not None and not relative.startswith(homes):
                misplaced.append(f"{relative} imports {name}")
    assert misplaced == []


def test_every_framework_folder_has_the_same_modules():
    for name in BACKENDS:
        folder = PACKAGE / "backends" / name
        found = {p.stem for p in folder.glob("*.py")} - {"__init__"}
        assert found == set(MODULES), f"backends/{name}/ has {sorted(found)}"


def _compat_modules() -> list[str]:
    names = ["keras_memguard.compat.keras", "keras_memguard.compat.keras_tuner"]
    names.append("keras_memguard.compat.cpython")
    return names + [f"keras_memguard.backends.{name}.compat" for name in BACKENDS]


def _private_names() -> set[str]:
    """Every private part of a name the compat modules list (``_src``, ``_backends``...)."""
    names = set()
    for module in _compat_modules():
        for symbol in importlib.import_module(module).SYMBOLS:
            parts = [*symbol.module.split("."), *symbol.attribute.split(".")]
            names.update(p for p in parts if p.startswith("_"))
            if symbol.source_mentions:
                names.add(symbol.source_mentions)
    return names


PRIVATE_PATH = re.compile(r"^(jax\._src|keras\.src|keras_tuner\.src|tensorflow\.python|torch\._)")


def _is_compat(relative: str) -> bool:
    return relative.startswith("compat/") or relative.endswith("/compat.py")


def test_private_names_of_other_projects_appear_only_in_the_compat_modules():
    private = _private_names()
    assert {"_src", "_backends", "_jax_state", "_cuda_hasPrimaryContext"} <= private
    found = []
    for relative, tree in _modules():
        if _is_compat(relative):
            continue
        for name in _imported_modules(tree):
            if PRIVATE_PATH.match(name):
                found.append(f"{relative} imports {name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private:
                found.append(f"{relative}:{node.lineno} uses .{node.attr}")
            text = node.value if isinstance(node, ast.Constant) else None
            names_one = isinstance(text, str) and " " not in text  # not a docstring
            if names_one and (text in private or PRIVATE_PATH.match(text)):
                found.append(f"{relative}:{node.lineno} names {text!r}")
    assert found == []


def test_the_private_name_check_catches_a_use_outside_compat():
    tree = ast.parse("import jax._src.array\nx = bridge._backends\n")
    assert [n for n in _imported_modules(tree) if PRIVATE_PATH.match(n)] == ["jax._src.array"]
    attributes = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    assert "_backends" in set(attributes) & _private_names()
