"""Loading exported networks that are damaged, truncated, foreign or from another version of the
operators, and a missing op library: every case ends in an error that names the file and says
what to do (ModelFileError, a ValueError; FileNotFoundError; OpsLibraryError), never a bare
MXNet assertion, a wrong network or a crash.
"""
import json
import os
import shutil
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import bmxnet_ext
from bmxnet_ext import convert_to_xnor, load_xnor, model_zoo
from bmxnet_ext.apps.cli import main
from bmxnet_ext.inference.model_card import (ModelFileError, load_exported_parameters,
                                             read_model_card)
from bmxnet_ext.inference.ops import OpsLibraryError

SHAPE = (1, 3, 32, 32)


def _small_net(blocks=(1, 1, 1, 1), classes=10, prefix=None):
    net = model_zoo.get_model("meliusnet_flex", classes=classes, input_size=32, blocks=blocks,
                              prefix=prefix)
    net.initialize(mx.init.Xavier(magnitude=2))
    net(mx.nd.zeros(SHAPE))
    return net


def _export_packed(net, prefix, card=True):
    bmxnet_ext.export(net, prefix, input_shape=SHAPE)
    if not card:  # as exported by hand, without bmxnet_ext.export
        os.remove(prefix + "-model.json")
    return prefix


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A packed export with its model card: (directory, prefix)."""
    directory = tmp_path_factory.mktemp("export")
    return directory, _export_packed(_small_net(), str(directory / "net"))


def _copy(export, tmp_path, card=True):
    directory, prefix = export
    for suffix in ("-symbol.json", "-0000.params") + (("-model.json",) if card else ()):
        shutil.copy(prefix + suffix, str(tmp_path / ("net" + suffix)))
    return str(tmp_path / "net")


def test_an_intact_export_loads_and_runs(export, tmp_path):
    prefix = _copy(export, tmp_path)
    assert read_model_card(prefix)["params_sha256"]
    assert load_xnor(prefix)(mx.nd.zeros(SHAPE)).shape == (1, 10)


# --- damaged and truncated params ---------------------------------------------------------------

def test_a_changed_byte_is_caught_by_the_model_card_checksum(export, tmp_path):
    prefix = _copy(export, tmp_path)
    data = bytearray(open(prefix + "-0000.params", "rb").read())
    data[len(data) // 2] ^= 0x10  # inside the weights: MXNet alone would load it silently
    open(prefix + "-0000.params", "wb").write(bytes(data))
    with pytest.raises(ModelFileError, match="is damaged or was replaced.*Export the network"):
        load_xnor(prefix)


@pytest.mark.parametrize("keep", [0, 8, 30, 100, 0.5, -10], ids=lambda k: f"keep{k}")
def test_truncated_params_say_truncated(export, tmp_path, keep):
    prefix = _copy(export, tmp_path, card=False)
    data = open(prefix + "-0000.params", "rb").read()
    keep = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    open(prefix + "-0000.params", "wb").write(data[:keep])
    with pytest.raises(ModelFileError, match="not a readable MXNet params file: it is "
                                             "truncated or damaged"):
        load_xnor(prefix)


_CORRUPTION_FUZZ = r"""
import random, sys, traceback
import mxnet as mx
from bmxnet_ext import load_xnor
from bmxnet_ext.inference.model_card import ModelFileError
prefix, cases = sys.argv[1], int(sys.argv[2])
original = open(prefix + "-0000.params", "rb").read()
outcomes = []
for case in range(cases):
    rng = random.Random(case)
    data = bytearray(original)
    for _ in range(rng.choice([1, 4, 32])):
        data[rng.randrange(len(data))] = rng.randrange(256)
    open(prefix + "-0000.params", "wb").write(bytes(data))
    print("case", case, flush=True)  # a crash names its case
    try:
        load_xnor(prefix)(mx.nd.zeros((1, 3, 32, 32))).wait_to_read()
        outcomes.append("loaded")
    except ModelFileError:
        outcomes.append("ModelFileError")
    except mx.base.MXNetError as err:
        # a packed weight with bits past its channel count: the operator refuses it
        assert "bmx_" in str(err), str(err)[-1000:]
        outcomes.append("operator-refused")
    except Exception:
        traceback.print_exc()
        outcomes.append("UNEXPECTED")
print("outcomes", " ".join(outcomes))
"""


def test_random_corruptions_load_or_fail_with_a_message_never_crash(export, tmp_path):
    """Without a model card nothing catches a corrupted weight value; everything MXNet cannot
    parse, names that no longer match and shapes that no longer fit are reported."""
    prefix = _copy(export, tmp_path, card=False)
    result = subprocess.run([sys.executable, "-c", _CORRUPTION_FUZZ, prefix, "60"],
                            capture_output=True, text=True, timeout=900, cwd=str(tmp_path))
    assert result.returncode == 0, (result.stdout[-500:], result.stderr[-3000:])
    outcomes = result.stdout.split("outcomes", 1)[1].split()
    assert len(outcomes) == 60 and "UNEXPECTED" not in outcomes, result.stderr[-3000:]
    assert "ModelFileError" in outcomes


# --- params of another network -------------------------------------------------------------------

def test_params_of_another_architecture_are_refused(export, tmp_path):
    prefix = _copy(export, tmp_path)
    other = _export_packed(_small_net(blocks=(1, 1, 1, 2)), str(tmp_path / "other"), card=False)
    shutil.copy(other + "-0000.params", prefix + "-0000.params")
    os.remove(prefix + "-model.json")
    with pytest.raises(ModelFileError, match="does not belong to the network in .*net-symbol.json"
                                             ": missing .* unexpected .*exported together"):
        load_xnor(prefix)


def test_params_of_the_same_architecture_with_other_classes_are_refused(tmp_path):
    prefix = _export_packed(_small_net(prefix="net_"), str(tmp_path / "net"))
    other = _export_packed(_small_net(classes=12, prefix="net_"), str(tmp_path / "other"),
                           card=False)
    shutil.copy(other + "-0000.params", prefix + "-0000.params")
    card = read_model_card(prefix)
    card["params_sha256"] = None  # a card from before checksums: the shapes are still checked
    json.dump(card, open(prefix + "-model.json", "w"))
    with pytest.raises(ModelFileError, match="do not fit the network in .*other arguments"):
        load_xnor(prefix)


def test_exported_float_params_of_another_network_are_refused(tmp_path):
    net = _small_net()
    net.hybridize()
    net(mx.nd.zeros(SHAPE))
    net.export(str(tmp_path / "float"))
    other = model_zoo.get_model("meliusnet_flex", classes=10, input_size=32, blocks=(2, 1, 1, 1))
    with pytest.raises(ModelFileError, match="does not fit this network: missing"):
        load_exported_parameters(other, str(tmp_path / "float-0000.params"))
    wider = model_zoo.get_model("meliusnet_flex", classes=12, input_size=32, blocks=(1, 1, 1, 1))
    with pytest.raises(ModelFileError, match="head_dense0_weight has shape .* expects"):
        load_exported_parameters(wider, str(tmp_path / "float-0000.params"))


# --- symbols from another version of the operators ---------------------------------------------

def _edit_first_packed_node(prefix, edit):
    path = prefix + "-symbol.json"
    graph = json.load(open(path))
    edit(next(node for node in graph["nodes"] if node["op"].startswith("bmx_")))
    json.dump(graph, open(path, "w"))


SYMBOL_EDITS = {
    "unknown-attribute": (lambda node: node["attrs"].update(layout="NHWC"),
                          ModelFileError, "unknown attribute 'layout'.*another version"),
    "missing-attribute": (lambda node: node["attrs"].pop("in_channels"),
                          ModelFileError, "in_channels is required.*another version"),
    "bad-attribute-value": (lambda node: node["attrs"].update(kernel="(3, 3, 3)"),
                            ModelFileError, "attribute kernel=.*another version"),
    "unknown-operator": (lambda node: node.update(op="bmx_binary_conv3d"),
                         OpsLibraryError, r"\['bmx_binary_conv3d'\].*does not provide"),
}


@pytest.mark.parametrize("case", sorted(SYMBOL_EDITS))
def test_symbol_of_another_operator_version_is_explained(export, tmp_path, case):
    edit, error, message = SYMBOL_EDITS[case]
    prefix = _copy(export, tmp_path)
    _edit_first_packed_node(prefix, edit)
    with pytest.raises(error, match=message):
        load_xnor(prefix)


@pytest.mark.parametrize("content", ["", "{", '{"nodes": 3}', "[]", "garbage \x00\x01"],
                         ids=["empty", "truncated", "wrong-nodes", "list", "garbage"])
def test_unreadable_symbol_files_say_so(export, tmp_path, content):
    prefix = _copy(export, tmp_path)
    open(prefix + "-symbol.json", "w").write(content)
    with pytest.raises(ModelFileError, match="not a readable MXNet symbol file"):
        load_xnor(prefix)


@pytest.mark.parametrize("content,message", [
    ("{", "not a readable model card"), ("[1, 2]", "not a model card"),
    ('{"model": "x"}', "lacks the fields")])
def test_damaged_model_cards_say_so(export, tmp_path, content, message):
    prefix = _copy(export, tmp_path)
    open(prefix + "-model.json", "w").write(content)
    with pytest.raises(ModelFileError, match=message):
        load_xnor(prefix)


@pytest.mark.parametrize("suffix", ["-symbol.json", "-0000.params", "-model.json"])
def test_a_file_name_instead_of_the_prefix_is_pointed_out(export, suffix):
    _, prefix = export
    with pytest.raises(FileNotFoundError, match="takes the export prefix"):
        load_xnor(prefix + suffix)


# --- a missing or broken op library -------------------------------------------------------------

_LOAD = ("import sys, bmxnet_ext, mxnet as mx; "
         "bmxnet_ext.load_xnor(sys.argv[1])(mx.nd.zeros((1, 3, 32, 32)))")


def _library(tmp_path, kind):
    if kind == "nothing":
        return str(tmp_path / "no-such-lib.so")
    if kind == "directory":
        return str(tmp_path)
    broken = tmp_path / "broken.so"
    broken.write_bytes(b"\x7fELF this is not a shared object")
    return str(broken)


@pytest.mark.parametrize("kind,problem", [("nothing", "does not exist"),
                                          ("directory", "is a directory"),
                                          ("not-a-library", "could not load")])
def test_missing_library_named_by_environment_is_explained(export, tmp_path, kind, problem):
    env = dict(os.environ, BMXNET_OPS_LIBRARY=_library(tmp_path, kind))
    result = subprocess.run([sys.executable, "-c", _LOAD, export[1]], capture_output=True,
                            text=True, env=env, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bmxnet_ext.inference.ops.OpsLibraryError: bmx_* operators are unavailable")
    assert problem in last and "BMXNET_OPS_LIBRARY" in last


def test_cli_with_a_missing_library_prints_one_line(export, tmp_path):
    import cv2
    image = str(tmp_path / "image.png")
    cv2.imwrite(image, (np.random.RandomState(0).rand(40, 40, 3) * 255).astype(np.uint8))
    env = dict(os.environ, BMXNET_OPS_LIBRARY=str(tmp_path / "none.so"))
    result = subprocess.run([sys.executable, "-m", "bmxnet_ext.apps.cli", "predict", export[1], image],
                            capture_output=True, text=True, env=env, timeout=300,
                            cwd=str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "BMXNET_OPS_LIBRARY" in lines[0], result.stderr


def test_cli_predict_with_damaged_params_prints_one_line(export, tmp_path, capsys):
    prefix = _copy(export, tmp_path)
    open(prefix + "-0000.params", "ab").write(b"\x00")
    image = str(tmp_path / "image.png")
    import cv2
    cv2.imwrite(image, np.zeros((8, 8, 3), np.uint8))
    assert main(["predict", prefix, image]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is damaged or was replaced" in err
