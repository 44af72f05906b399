"""The local pretrained-weights store: register, verify by SHA-256, load; clear errors."""
import hashlib
import os

import numpy as np
import pytest
import mxnet as mx

from bmxnet_ext.inference import model_store
from bmxnet_ext.inference.model_store import (ChecksumError, load_pretrained, pretrained_file,
                                    register_pretrained, store_root)
from bmxnet_ext.model_zoo import get_model

SMALL = dict(classes=10, input_size=32)


def _trained(name="binary_densenet_flex", seed=1):
    mx.random.seed(seed)
    net = get_model(name, **SMALL)
    net.initialize(mx.init.Xavier())
    return net


def _params(net):
    return [p.data().asnumpy() for p in net.collect_params().values()]


def test_store_root_defaults_to_mxnet_home(monkeypatch, tmp_path):
    monkeypatch.setenv("MXNET_HOME", str(tmp_path))
    assert store_root() == str(tmp_path / "models")
    monkeypatch.delenv("MXNET_HOME")
    assert store_root() == os.path.join(os.path.expanduser("~"), ".mxnet", "models")
    assert store_root(str(tmp_path / "elsewhere")) == str(tmp_path / "elsewhere")


def test_register_writes_params_and_a_sha256sum_line(tmp_path):
    path = register_pretrained(_trained(), "tiny", root=str(tmp_path))
    assert path == str(tmp_path / "tiny.params")
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert (tmp_path / "tiny.sha256").read_text() == f"{digest}  tiny.params\n"
    assert sorted(os.listdir(tmp_path)) == ["tiny.params", "tiny.sha256"]  # no temp files left


def test_a_registered_network_loads_back(tmp_path):
    net = _trained()
    register_pretrained(net, "tiny", root=str(tmp_path))
    fresh = get_model("binary_densenet_flex", **SMALL)
    load_pretrained(fresh, "tiny", root=str(tmp_path))
    for loaded, saved in zip(_params(fresh), _params(net), strict=True):
        np.testing.assert_array_equal(loaded, saved)


def test_a_params_file_registers_too(tmp_path):
    net = _trained()
    checkpoint = tmp_path / "epoch-3.params"
    net.save_parameters(str(checkpoint))
    path = register_pretrained(str(checkpoint), "tiny", root=str(tmp_path / "store"))
    assert open(path, "rb").read() == checkpoint.read_bytes()


def test_get_model_pretrained_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("MXNET_HOME", str(tmp_path))
    net = _trained("binary_densenet28")
    register_pretrained(net, "binary_densenet28")
    images = mx.nd.random.normal(shape=(2, 3, 32, 32))
    loaded = get_model("binary_densenet28", pretrained=True, **SMALL)
    np.testing.assert_array_equal(loaded(images).asnumpy(), net(images).asnumpy())


def test_pretrained_root_argument_reaches_the_store(tmp_path):
    register_pretrained(_trained("resnet_e18"), "resnet_e18", root=str(tmp_path))
    net = get_model("resnet_e18", pretrained=True, root=str(tmp_path), **SMALL)
    assert net.collect_params()[net.head.output.weight.name].shape == (10, 512)


def test_weights_of_another_configuration_are_refused(tmp_path):
    register_pretrained(_trained("resnet_e18"), "resnet_e18", root=str(tmp_path))
    with pytest.raises(ValueError, match="do not fit this ResNetE"):
        get_model("resnet_e18", pretrained=True, root=str(tmp_path))  # 224 stem, 1000 classes


def test_missing_weights_say_where_they_were_looked_for_and_how_to_add_them(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        get_model("meliusnet22", pretrained=True, root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "meliusnet22.params") in message
    assert "register_pretrained(net, 'meliusnet22')" in message and "MXNET_HOME" in message


def test_a_file_without_checksum_is_refused(tmp_path):
    register_pretrained(_trained(), "tiny", root=str(tmp_path))
    os.remove(tmp_path / "tiny.sha256")
    with pytest.raises(FileNotFoundError, match="no checksum file .*tiny.sha256"):
        pretrained_file("tiny", root=str(tmp_path))


def test_a_corrupt_file_is_refused(tmp_path):
    path = register_pretrained(_trained(), "tiny", root=str(tmp_path))
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(ChecksumError, match="tiny.params is corrupt or incomplete"):
        load_pretrained(_trained(), "tiny", root=str(tmp_path))


def test_a_truncated_file_is_refused(tmp_path):
    path = register_pretrained(_trained(), "tiny", root=str(tmp_path))
    os.truncate(path, 100)
    with pytest.raises(ChecksumError, match="SHA-256"):
        pretrained_file("tiny", root=str(tmp_path))


def test_a_checksum_file_without_a_digest_is_refused(tmp_path):
    register_pretrained(_trained(), "tiny", root=str(tmp_path))
    (tmp_path / "tiny.sha256").write_text("not a digest\n")
    with pytest.raises(ChecksumError, match="holds no SHA-256"):
        pretrained_file("tiny", root=str(tmp_path))


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", None])
def test_store_names_cannot_be_paths(name, tmp_path):
    with pytest.raises(ValueError, match="model store name"):
        register_pretrained(_trained(), name, root=str(tmp_path))


def test_registering_a_missing_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no params file"):
        register_pretrained(str(tmp_path / "nope.params"), "tiny", root=str(tmp_path))


def test_registering_something_else_is_refused(tmp_path):
    with pytest.raises(TypeError, match="Gluon block or the path"):
        register_pretrained(42, "tiny", root=str(tmp_path))


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    register_pretrained(_trained(), "tiny", root=str(tmp_path))
    before = (tmp_path / "tiny.params").read_bytes()

    class Broken:
        def save_parameters(self, path):
            open(path, "wb").write(b"partial")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        register_pretrained(Broken(), "tiny", root=str(tmp_path))
    assert (tmp_path / "tiny.params").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["tiny.params", "tiny.sha256"]
    assert model_store.sha256_file(str(tmp_path / "tiny.params")) in (
        tmp_path / "tiny.sha256").read_text()
