"""The bmxnet-ext command line: the demo end to end, and one-line errors for bad use."""
import subprocess
import sys

import pytest

from bmxnet_ext.cli import main
from bmxnet_ext.demo import run_demo


def test_demo_runs_end_to_end_and_reports_both_networks(capsys):
    results = run_demo(epochs=1, quiet=True)
    out = capsys.readouterr().out
    assert set(results) == {"binary", "float"}
    for figures in results.values():
        assert 0.0 <= figures["accuracy"] <= 1.0
        assert figures["params_bytes"] > 0 and figures["latency_ms"] > 0
    assert out.count("  ok  ") == 5
    assert "test accuracy" in out


def test_demo_refuses_zero_epochs(capsys):
    assert main(["demo", "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "bmxnet-ext demo: error: epochs must be at least 1, got 0"


@pytest.mark.parametrize("argv", [[], ["no-such-command"], ["demo", "--epochs", "x"]])
def test_bad_command_lines_exit_2_with_usage(argv):
    result = subprocess.run([sys.executable, "-m", "bmxnet_ext.cli"] + argv,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "usage: bmxnet-ext" in result.stderr
    assert "Traceback" not in result.stderr
