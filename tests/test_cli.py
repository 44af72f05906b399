"""The bmxnet-ext command line: the demo end to end, and one-line errors for bad use."""
import subprocess
import sys

import pytest

from bmxnet_ext.apps.cli import main
from bmxnet_ext.apps.demo import run_demo


def test_demo_runs_end_to_end_and_reports_both_networks(tmp_path, capsys):
    work = tmp_path / "demo"
    results = run_demo(epochs=1, quiet=True, out_dir=str(work))
    out = capsys.readouterr().out
    assert set(results) == {"binary", "packed", "float"}
    for figures in results.values():
        assert 0.0 <= figures["accuracy"] <= 1.0
        assert figures["params_bytes"] > 0 and figures["latency_ms"] > 0
    assert results["packed"]["accuracy"] == results["binary"]["accuracy"]
    assert results["packed"]["params_bytes"] < results["binary"]["params_bytes"] / 5
    assert out.count("  ok  ") == 4
    assert "test accuracy" in out
    # quiet leaves no heading without its section (the layer table's is gone with the table)
    lines = out.splitlines()
    headings = [i for i, line in enumerate(lines) if line.endswith(":")]
    assert all(i + 1 < len(lines) and lines[i + 1].strip() for i in headings), out
    assert "The binary network" not in out
    assert lines[-1].endswith(f": {work}")
    for kind in ("binary", "float"):
        assert (work / kind / "log.csv").is_file()
        assert (work / kind / "checkpoints" / "latest.json").is_file()


def test_demo_refuses_zero_epochs(capsys):
    assert main(["demo", "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "bmxnet-ext demo: error: epochs must be at least 1, got 0"


@pytest.mark.parametrize("make,message", [
    (lambda path: path.write_text(""), "is an existing file, not a directory"),
    (lambda path: (path.mkdir(), (path / "old").write_text("")), "is not empty; choose a new or "
                                                                 "empty directory"),
], ids=["file", "non-empty directory"])
def test_demo_out_must_be_new_or_empty(make, message, tmp_path, capsys):
    out = tmp_path / "out"
    make(out)
    assert main(["demo", "--out", str(out)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"bmxnet-ext demo: error: --out {out} {message}"]


@pytest.mark.parametrize("argv", [[], ["no-such-command"], ["demo", "--epochs", "x"],
                                  ["demo", "--data-format", "csv"]])
def test_bad_command_lines_exit_2_with_usage(argv, tmp_path):
    result = subprocess.run([sys.executable, "-m", "bmxnet_ext.apps.cli"] + argv,
                            capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert result.returncode == 2
    assert "usage: bmxnet-ext" in result.stderr
    assert "Traceback" not in result.stderr


def _small_trained_net(tmp_path):
    import mxnet as mx

    from bmxnet_ext import model_zoo
    net = model_zoo.get_model("meliusnet22", classes=10, input_size=32)
    net.initialize(mx.init.Xavier(magnitude=2))
    net(mx.nd.zeros((1, 3, 32, 32)))
    weights = str(tmp_path / "trained.params")
    net.save_parameters(weights)
    return net, weights


def _packed_outputs(prefix, x):
    import mxnet as mx

    from bmxnet_ext import load_xnor
    return load_xnor(prefix)(mx.nd.array(x)).asnumpy()


def test_convert_a_zoo_name_with_trained_weights(tmp_path, capsys):
    import mxnet as mx
    import numpy as np

    net, weights = _small_trained_net(tmp_path)
    out = tmp_path / "packed"
    assert main(["convert", "meliusnet22", "--out", str(out), "--params", weights,
                 "--classes", "10", "--input-size", "32"]) == 0
    assert "verified" in capsys.readouterr().out
    x = np.random.RandomState(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(_packed_outputs(str(out / "meliusnet22"), x),
                               net(mx.nd.array(x)).asnumpy(), rtol=1e-5, atol=1e-4)


def test_convert_an_exported_training_graph(tmp_path):
    import mxnet as mx
    import numpy as np

    import bmxnet_ext
    net, _ = _small_trained_net(tmp_path)
    net.hybridize()
    x = np.random.RandomState(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    expected = net(mx.nd.array(x)).asnumpy()
    prefix = str(tmp_path / "float")
    bmxnet_ext.export(net, prefix, packed=False)
    assert main(["convert", prefix, "--out", str(tmp_path / "packed")]) == 0
    np.testing.assert_allclose(_packed_outputs(str(tmp_path / "packed" / "meliusnet22"), x),
                               expected, rtol=1e-5, atol=1e-4)


def test_predict_prints_top_k_with_class_names(tmp_path, capsys):
    import cv2
    import numpy as np

    import bmxnet_ext
    net, _ = _small_trained_net(tmp_path)
    prefix = str(tmp_path / "packed" / "meliusnet22")
    bmxnet_ext.export(net, prefix, class_names=[f"class{i}" for i in range(10)], trained=True)
    image = str(tmp_path / "image.png")
    cv2.imwrite(image, (np.random.RandomState(2).rand(40, 50, 3) * 255).astype(np.uint8))
    capsys.readouterr()
    assert main(["predict", prefix, image, "--topk", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: class") and line.count("class") == 3


@pytest.mark.parametrize("argv,message", [
    (["convert", "meliusnet222", "--out", "{tmp}"], "unknown model 'meliusnet222'; did you mean"),
    (["convert", "{tmp}/nothing", "--out", "{tmp}"], "unknown model"),
    (["predict", "{tmp}/nothing", "{tmp}/x.png"], "nothing-symbol.json does not exist"),
    (["summary", "resnet_e1"], "unknown model 'resnet_e1'"),
])
def test_user_errors_are_one_line(argv, message, tmp_path, capsys):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_predict_reports_a_missing_image_and_exits_1(tmp_path, capsys):
    _, weights = _small_trained_net(tmp_path)
    out = tmp_path / "packed"
    assert main(["convert", "meliusnet22", "--out", str(out), "--classes", "10",
                 "--input-size", "32", "--params", weights]) == 0
    capsys.readouterr()
    missing = str(tmp_path / "none.png")
    assert main(["predict", str(out / "meliusnet22"), missing]) == 1
    assert capsys.readouterr().err == f"{missing}: error: no image file at {missing}\n"


def test_convert_refuses_a_prefix_without_model_card(tmp_path, capsys):
    (tmp_path / "m-symbol.json").write_text("{}")
    assert main(["convert", str(tmp_path / "m"), "--out", str(tmp_path)]) == 2
    assert "m-model.json is missing" in capsys.readouterr().err


@pytest.mark.parametrize("pattern", [None, "meliusnet*", "*densenet2?", "resnet_e18"])
def test_list_prints_the_matching_zoo_models(pattern, capsys):
    from bmxnet_ext import model_zoo
    assert main(["list"] + ([pattern] if pattern else [])) == 0
    expected = model_zoo.list_models(pattern)
    assert expected  # each pattern names at least one model
    assert capsys.readouterr().out.splitlines() == expected


def test_list_says_when_nothing_matches(capsys):
    assert main(["list", "alexnet*"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "bmxnet-ext list: no model matches 'alexnet*'\n"


def test_version_names_the_package_and_mxnet(capsys):
    import mxnet as mx

    import bmxnet_ext
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    version = f"bmxnet-ext {bmxnet_ext.__version__} (MXNet {mx.__version__})\n"
    assert capsys.readouterr().out == version


def test_python_dash_m_bmxnet_ext_is_the_command(tmp_path):
    import mxnet as mx

    import bmxnet_ext
    result = subprocess.run([sys.executable, "-m", "bmxnet_ext", "--version"],
                            capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"bmxnet-ext {bmxnet_ext.__version__} (MXNet {mx.__version__})\n"
