"""The package layout: each concern is one subpackage, and imports flow one way.

    apps      -> training, inference, binary, utils, model_zoo
    training  -> binary, utils
    inference -> binary, utils
    binary    -> utils
    utils     -> (nothing of bmxnet_ext)
    model_zoo -> binary, inference, utils

Every module of the installed package is parsed (not imported) and each of its imports of
``bmxnet_ext`` (absolute or relative, at any depth of the file) is checked against this table.
"""
import ast
import os

import pytest

import bmxnet_ext

PACKAGE_DIR = os.path.dirname(os.path.abspath(bmxnet_ext.__file__))
ALLOWED = {
    "apps": {"apps", "training", "inference", "binary", "utils", "model_zoo", ""},
    "training": {"training", "binary", "utils"},
    "inference": {"inference", "binary", "utils"},
    "binary": {"binary", "utils"},
    "utils": {"utils"},
    "model_zoo": {"model_zoo", "binary", "inference", "utils"},
}


def _modules():
    found = []
    for directory, _, files in os.walk(PACKAGE_DIR, followlinks=True):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                found.append(os.path.relpath(path, PACKAGE_DIR).replace(os.sep, "/"))
    return sorted(found)


def _imported(path, relative_path):
    """Absolute dotted names of the bmxnet_ext modules (or names) a file imports."""
    package = ["bmxnet_ext"] + relative_path.split("/")[:-1]
    names = []
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names += [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
    return [name for name in names if name.split(".")[0] == "bmxnet_ext"]


def _concern(dotted):
    """'binary' for bmxnet_ext.binary.layers; '' for the top level (bmxnet_ext, __version__)."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else ""


def test_every_module_lives_in_a_concern():
    top_level = [m for m in _modules() if "/" not in m]
    assert top_level == ["__init__.py", "__main__.py"]
    assert {m.split("/")[0] for m in _modules() if "/" in m} == set(ALLOWED)


@pytest.mark.parametrize("module", [m for m in _modules() if "/" in m])
def test_imports_flow_one_way(module):
    concern = module.split("/")[0]
    wrong = [name for name in _imported(os.path.join(PACKAGE_DIR, module), module)
             if _concern(name) not in ALLOWED[concern]]
    assert not wrong, f"{module} ({concern}) imports {wrong} against the layout"


def test_the_checker_sees_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from ..training.fit import fit\nimport bmxnet_ext.apps.cli\n")
    imported = _imported(str(probe), "binary/probe.py")
    assert imported == ["bmxnet_ext.training.fit.fit", "bmxnet_ext.apps.cli"]
    assert {_concern(name) for name in imported} - ALLOWED["binary"] == {"training", "apps"}


def test_public_names_are_importable_from_the_top():
    for name in bmxnet_ext.__all__:
        assert getattr(bmxnet_ext, name) is not None
