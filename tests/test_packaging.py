"""What pip installs: one version source, the test extra able to run the GPU tests,
and framework ranges that contain the versions this environment tests with."""

from __future__ import annotations

import os
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import keras_memguard

pytestmark = pytest.mark.backends
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def project():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def extra(project, name):
    """The requirements of an extra by name; ``None``: the core dependencies."""
    listed = project["project"]["optional-dependencies"][name] if name else None
    return {
        Requirement(r).name: Requirement(r) for r in listed or project["project"]["dependencies"]
    }


def test_the_version_has_one_source(project):
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "keras_memguard.__version__"
    Version(keras_memguard.__version__)  # a valid version string


def test_test_extra_brings_nvml(project):
    assert "nvidia-ml-py" in extra(project, "test")


def test_license_file_matches(project):
    assert project["project"]["license"]["text"] == "Apache-2.0"
    with open(os.path.join(ROOT, "LICENSE")) as f:
        assert "Apache License" in f.read(200)


# Keras, the frameworks and keras-tuner, with the extra that declares each (None: core).
BOUNDED = [
    ("keras", None),
    ("tensorflow", "tensorflow"),
    ("tf-keras", "legacy"),
    ("jax", "jax"),
    ("torch", "torch"),
    ("keras-tuner", "tuner"),
]


@pytest.mark.parametrize(("distribution", "extra_name"), BOUNDED)
def test_installed_framework_is_in_the_declared_range(project, distribution, extra_name):
    try:
        installed = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{distribution} is not installed in this environment")
    requirement = extra(project, extra_name)[distribution]
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{distribution} {installed} is tested here but outside {requirement}"
    )


@pytest.mark.parametrize(("distribution", "extra_name"), [*BOUNDED, ("keras-tuner", "test")])
def test_projects_whose_internals_we_use_have_an_upper_bound(project, distribution, extra_name):
    """A release CI has not run may move a private name (keras_memguard/compat/)."""
    requirement = extra(project, extra_name)[distribution]
    assert any(spec.operator == "<" for spec in requirement.specifier), (
        f"{requirement} has no upper bound"
    )


def test_tf_keras_matches_tensorflow_minor():
    try:
        tf, legacy = Version(metadata.version("tensorflow")), Version(metadata.version("tf-keras"))
    except metadata.PackageNotFoundError:
        pytest.skip("tensorflow and tf-keras are not both installed")
    assert (legacy.major, legacy.minor) == (tf.major, tf.minor)


def test_requires_python_admits_this_interpreter(project):
    import platform

    from packaging.specifiers import SpecifierSet

    assert platform.python_version() in SpecifierSet(project["project"]["requires-python"])
