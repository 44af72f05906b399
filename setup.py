"""Build of bmxnet_ext: the CMake op library (libbmxnet_ops.so) and the Cython kernel bindings.

The op library must compile MXNet's ``src/lib_api.cc`` against ``include/mxnet/lib_api.h`` of an
MXNet 1.9.1 installation. We look for it, in order, at ``$MXNET_ROOT`` and at the ``mxnet`` package
visible to this build (pip's isolated build environment installs the CPU wheel for this; with
``--no-build-isolation`` it is the MXNet of the target environment, e.g. an ``mxnet-cuXXX`` wheel).
"""
import importlib.util
import os
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
OPS_LIBRARY = "libbmxnet_ops.so"
# The kernels as CMake builds them (one set of flags) for the op library and the Cython bindings.
KERNELS_LIBRARY = "libbmxnet_kernels.a"


class BuildError(RuntimeError):
    """A build prerequisite is missing; the message says which and how to get it."""


def _mxnet_root():
    root = os.environ.get("MXNET_ROOT")
    if not root:
        spec = importlib.util.find_spec("mxnet")
        if spec is None or not spec.submodule_search_locations:
            raise BuildError(
                "bmxnet_ext needs MXNet 1.9.1 to build its op library, and none was found. "
                "Install it first (pip install mxnet==1.9.1, or an mxnet-cuXXX==1.9.1 wheel) "
                "or set MXNET_ROOT to the directory of an installed mxnet package.")
        root = spec.submodule_search_locations[0]
    for needed in ("include/mxnet/lib_api.h", "src/lib_api.cc"):
        if not os.path.exists(os.path.join(root, needed)):
            raise BuildError(
                f"MXNet at {root} has no {needed}; bmxnet_ext needs an MXNet 1.9.1 wheel, "
                "which ships it. Reinstall mxnet==1.9.1 or point MXNET_ROOT at one.")
    return root


def _cmake():
    cmake = shutil.which("cmake")
    if cmake is None:
        raise BuildError("CMake (>= 3.18) is required to build libbmxnet_ops.so and was not "
                         "found on PATH: pip install cmake, or install it from your OS.")
    return cmake


class CMakeExtension(Extension):
    """The op library: built by CMake, loaded by MXNet with mx.library.load (not a Python module)."""

    def __init__(self, name):
        super().__init__(name, sources=[])


class BuildExt(build_ext):
    """CMake first (the op library and the kernels' static library), then the Cython bindings
    linked with that static library."""

    def get_ext_filename(self, fullname):
        if fullname == "bmxnet_ext.inference." + OPS_LIBRARY[:-3]:
            return os.path.join("bmxnet_ext", "inference", OPS_LIBRARY)
        return super().get_ext_filename(fullname)

    def run(self):
        ops = [ext for ext in self.extensions if isinstance(ext, CMakeExtension)]
        try:
            build_dir = self._build_cmake(ops[0])
        except BuildError as err:
            sys.exit(f"error: {err}")
        for ext in self.extensions:
            if not isinstance(ext, CMakeExtension):
                ext.extra_objects = [os.path.join(build_dir, KERNELS_LIBRARY)]
                ext.depends = ext.depends + ext.extra_objects  # relink when the kernels change
                # The kernels run on their own threads (and, in the sanitizer build, are
                # instrumented).
                ext.extra_link_args = ["-pthread"] + (
                    ["-fsanitize=address,undefined"] if os.environ.get("BMXNET_SANITIZE") else [])
        super().run()

    def build_extension(self, ext):
        if not isinstance(ext, CMakeExtension):  # the op library was built by run()
            super().build_extension(ext)

    def _build_cmake(self, ext):
        """Builds the op library into its place in the package; returns the CMake build folder."""
        cmake = _cmake()
        build_dir = os.path.abspath(os.path.join(self.build_temp, "cmake"))
        os.makedirs(build_dir, exist_ok=True)
        # Always into build_lib: for --inplace / editable builds setuptools copies every
        # extension from there into the source tree after run().
        out_dir = os.path.join(os.path.abspath(self.build_lib),
                               os.path.dirname(self.get_ext_filename(ext.name)))
        configure = [
            cmake, HERE, "-DCMAKE_BUILD_TYPE=Release",
            f"-DMXNET_ROOT={_mxnet_root()}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
        ]
        if os.environ.get("BMXNET_SANITIZE"):
            configure.append("-DBMXNET_SANITIZE=ON")
        jobs = str(os.cpu_count() or 2)
        try:
            subprocess.run(configure, cwd=build_dir, check=True)
            subprocess.run([cmake, "--build", ".", "--", f"-j{jobs}"], cwd=build_dir, check=True)
        except subprocess.CalledProcessError as err:
            sys.exit(f"error: building {OPS_LIBRARY} failed ({' '.join(err.cmd[:2])} exited "
                     f"{err.returncode}). It needs a C++17 compiler (g++ >= 7 or clang >= 6) and "
                     "make; the CMake output above names what was missing.")
        return build_dir


def _extensions():
    kernels = Extension(
        "bmxnet_ext.inference._kernels",
        sources=["bmxnet_ext/inference/_kernels.pyx"],  # + the kernels' static library (run())
        include_dirs=["src"],
        language="c++",
        extra_compile_args=["-O3", "-std=c++17"],
    )
    try:
        from Cython.Build import cythonize
    except ImportError:
        sys.exit("error: Cython (>= 3.0) is required to build bmxnet_ext: pip install cython")
    return [CMakeExtension("bmxnet_ext.inference.libbmxnet_ops")] + cythonize(
        [kernels], compiler_directives={"language_level": 3, "boundscheck": False,
                                        "wraparound": False})


GLUONCV_STACK = [
    # gluoncv's own dependencies, held to the last versions that accept numpy<1.24
    "gluoncv>=0.10",
    "opencv-python<4.9",
    "pandas<2.1",
    "scipy<1.12",
    "matplotlib<3.8",
]

setup(
    name="bmxnet_ext",
    version="0.1.0",
    description="Binary neural networks (MeliusNet and peers) for stock MXNet 1.9.1 / Gluon",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["bmxnet_ext", "bmxnet_ext.*"]) + ["bmxnet_ext.model_zoo"],
    package_dir={"bmxnet_ext.model_zoo": "model_zoo"},
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExt},
    install_requires=[
        # MXNet itself is not listed here so that a GPU build (mxnet-cuXXX) is never replaced:
        # CPU users take the `cpu` extra, GPU users install their mxnet-cuXXX==1.9.1 first.
        "numpy>=1.17,<1.24",  # MXNet 1.9.1 uses numpy aliases (np.bool, ...) removed in 1.24
        "tqdm",
        "scikit-learn",  # ships the handwritten-digits images the demo trains on
    ] + GLUONCV_STACK,
    extras_require={
        "cpu": ["mxnet==1.9.1"],
        "test": ["pytest>=7", "pytest-timeout>=2", "hypothesis>=6"],
    },
    entry_points={"console_scripts": ["bmxnet-ext=bmxnet_ext.apps.cli:main"]},
    zip_safe=False,
)
