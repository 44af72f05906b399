"""The sanitizer job (tools/sanitize.py): the op tests against an AddressSanitizer + UBSan build
of the op library pass with no sanitizer report. Part of the default suite (a sanitized build plus
the op tests of tools/sanitize.py's TESTS, the stateful ops' state reuse included); alone:
``pytest tests/test_sanitizer.py`` or, directly, ``python tools/sanitize.py``.
"""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANITIZE = os.path.join(ROOT, "tools", "sanitize.py")


def _prerequisites_missing():
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        return "no C++ compiler"
    runtime = subprocess.run([compiler, "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip()
    if not os.path.isabs(runtime):
        return f"{compiler} has no AddressSanitizer runtime"
    if shutil.which("cmake") is None:
        try:
            import cmake  # noqa: F401
        except ImportError:
            return "no CMake"
    return None


@pytest.mark.timeout(1800)
def test_op_suite_passes_under_address_and_undefined_behavior_sanitizers(tmp_path):
    missing = _prerequisites_missing()
    if missing:
        pytest.skip(f"sanitizer job needs a compiler with sanitizer runtimes and CMake: {missing}")
    result = subprocess.run([sys.executable, SANITIZE, "--build-dir", str(tmp_path / "build")],
                            capture_output=True, text=True, cwd=str(tmp_path), timeout=1700)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "set-up live" in result.stdout
    assert "sanitize: passed, no sanitizer report" in result.stdout
