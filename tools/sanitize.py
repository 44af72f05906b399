#!/usr/bin/env python
"""The sanitizer job: the op test suite against libbmxnet_ops.so built with AddressSanitizer and
UndefinedBehaviorSanitizer.

    python tools/sanitize.py                      # build in a temporary directory, run, clean up
    python tools/sanitize.py --build-dir DIR      # keep (and reuse) the build in DIR
    python tools/sanitize.py -- -k conv -x        # arguments after -- go to pytest

1. CMake builds the library from src/ with -DBMXNET_SANITIZE=ON (-fsanitize=address,undefined).
2. A check run proves the set-up is live: the sanitized build (not the installed library) is what
   ``import bmxnet_ext`` loads, the ASan and UBSan runtimes are mapped, and a deliberate
   use-after-free is reported into the log directory.
3. pytest runs the op tests (TESTS below) in a subprocess with the sanitizer runtimes preloaded
   (LD_PRELOAD), BMXNET_OPS_LIBRARY naming the sanitized build, ASAN_OPTIONS=detect_leaks=0
   (CPython and MXNet keep memory until exit by design) and UBSAN_OPTIONS=halt_on_error=1.
   Every process writes its reports into one log directory (log_path), the interpreters the op
   tests start for bad input included.

Exit status 0 only when pytest passes and no sanitizer report was written; otherwise the reports
are printed and the status is 1 (2 when a prerequisite is missing).
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = ["tests/test_binary_ops.py", "tests/test_packing.py", "tests/test_fuzz_ops.py",
         "tests/test_fuzz_converter.py", "tests/test_stateful_ops.py", "tests/test_threads.py"]
LIBRARY = "libbmxnet_ops.so"

_CHECK = r"""
import ctypes, os, sys
import bmxnet_ext
from bmxnet_ext.inference import ops
expected = os.environ["BMXNET_OPS_LIBRARY"]
maps = open("/proc/self/maps").read()
problems = [what for what, ok in [
    ("the sanitized library is not the one loaded", ops.available() and
     os.path.abspath(ops.LIBRARY_PATH) == expected and expected in maps),
    ("the ASan runtime is not mapped", "libasan" in maps),
    ("the UBSan runtime is not mapped", "libubsan" in maps)] if not ok]
if problems:
    sys.exit("; ".join(problems))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(4096)
libc.free(ctypes.c_void_p(block))
ctypes.string_at(block, 16)  # use after free: ASan must report it and stop this process
sys.exit("ASan did not report a use after free")
"""


class SetupError(RuntimeError):
    """A prerequisite of the sanitizer job (compiler runtime, CMake, MXNet) is missing."""


def _compiler():
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise SetupError("no C++ compiler (g++) on PATH")


def sanitizer_runtimes(compiler=None):
    """Paths of the ASan and UBSan shared runtimes of ``compiler`` (to preload)."""
    compiler = compiler or _compiler()
    paths = []
    for name in ("libasan.so", "libubsan.so"):
        path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True,
                              text=True, check=True).stdout.strip()
        if not os.path.isabs(path) or not os.path.exists(path):
            raise SetupError(f"{compiler} has no {name} (install the compiler's sanitizer "
                             "runtimes, e.g. apt-get install libasan8 libubsan1)")
        paths.append(os.path.realpath(path))
    return paths


def _cmake():
    found = shutil.which("cmake")
    if found:
        return found
    try:
        import cmake  # the PyPI cmake package
        return os.path.join(cmake.CMAKE_BIN_DIR, "cmake")
    except ImportError:
        raise SetupError("CMake is needed to build the sanitized library: pip install cmake")


def _mxnet_root():
    import importlib.util
    spec = importlib.util.find_spec("mxnet")
    if spec is None:
        raise SetupError("MXNet 1.9.1 is not installed in this Python")
    return spec.submodule_search_locations[0]


def build(build_dir, log=sys.stdout):
    """Configures and builds the sanitized library in ``build_dir``; returns its path."""
    cmake = _cmake()
    configure = [cmake, "-S", ROOT, "-B", build_dir, f"-DMXNET_ROOT={_mxnet_root()}",
                 "-DBMXNET_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Debug",
                 f"-DCMAKE_CXX_COMPILER={_compiler()}"]
    for command in (configure, [cmake, "--build", build_dir, "-j", str(os.cpu_count() or 2)]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            log.write(result.stdout[-5000:] + result.stderr[-5000:])
            raise SetupError(f"{' '.join(command[:3])} ... failed (exit {result.returncode})")
    library = os.path.join(build_dir, LIBRARY)
    if not os.path.isfile(library):
        raise SetupError(f"the build produced no {library}")
    return library


def sanitizer_env(library, log_dir):
    """The environment of a process that loads the sanitized ``library`` and logs reports."""
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=" ".join(sanitizer_runtimes()),
        BMXNET_OPS_LIBRARY=library,
        # Leaks: CPython and MXNet free little at exit by design. exitcode: tell a sanitizer
        # stop from a Python error exit (1) in tests that check exit codes.
        ASAN_OPTIONS=f"detect_leaks=0:exitcode=86:log_path={log_dir}/asan",
        UBSAN_OPTIONS=f"halt_on_error=1:print_stacktrace=1:log_path={log_dir}/ubsan",
        PYTHONSAFEPATH="1",
    )
    return env


def reports(log_dir):
    """Texts of the sanitizer reports written to ``log_dir``."""
    texts = []
    for path in sorted(glob.glob(os.path.join(log_dir, "*san.*"))):
        with open(path, errors="replace") as f:
            texts.append(f"--- {os.path.basename(path)}\n{f.read()}")
    return texts


def check_setup(library, work_dir):
    """Runs _CHECK under the sanitizers; raises SetupError unless the set-up is live."""
    log_dir = os.path.join(work_dir, "check-logs")
    os.makedirs(log_dir, exist_ok=True)
    result = subprocess.run([sys.executable, "-c", _CHECK], env=sanitizer_env(library, log_dir),
                            capture_output=True, text=True, cwd=work_dir, timeout=300)
    found = reports(log_dir)
    if result.returncode != 86 or not any("heap-use-after-free" in r for r in found):
        raise SetupError("the sanitizer set-up is not live (exit "
                         f"{result.returncode}): {result.stderr.strip()[-2000:]}")


def run_tests(library, work_dir, pytest_args=(), tests=TESTS, out=sys.stdout):
    """Runs pytest on ``tests`` against the sanitized ``library``; returns (exit status of
    pytest, sanitizer reports)."""
    log_dir = os.path.join(work_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "--rootdir", ROOT, "-c", os.path.join(ROOT, "pyproject.toml")]
    command += [os.path.join(ROOT, t) for t in tests] + list(pytest_args)
    result = subprocess.run(command, env=sanitizer_env(library, log_dir), cwd=work_dir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out.write(result.stdout[-20000:])
    return result.returncode, reports(log_dir)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", help="build here and keep it (default: a temporary "
                                            "directory, removed afterwards)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    start = time.time()
    temp = tempfile.mkdtemp(prefix="bmxnet-sanitize-")
    try:
        build_dir = os.path.abspath(args.build_dir or os.path.join(temp, "build"))
        print(f"building {LIBRARY} with ASan + UBSan in {build_dir} ...", flush=True)
        library = build(build_dir)
        check_setup(library, temp)
        print(f"set-up live (sanitized library loaded, a deliberate use-after-free reported); "
              f"running {len(TESTS)} test files ...", flush=True)
        status, found = run_tests(library, temp, args.pytest_args)
    except SetupError as err:
        print(f"sanitize: error: {err}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    minutes = (time.time() - start) / 60
    if found:
        print("\n".join(found))
        print(f"sanitize: FAILED: {len(found)} sanitizer report(s) ({minutes:.1f} min)")
        return 1
    if status != 0:
        print(f"sanitize: FAILED: pytest exited {status} ({minutes:.1f} min)")
        return 1
    print(f"sanitize: passed, no sanitizer report ({minutes:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
