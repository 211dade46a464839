"""Package build hooks (the metadata is in pyproject.toml).

A non-editable build (``pip install .``, a wheel) puts the kernel sources and the CPU library
``libgraphprune_kernels.so`` inside the package, so an installed graphprune runs its sparse
operators without a source checkout (see kernels/README.md). The library is built with the same
code as ``python -m graphprune.kernels build`` (graphprune/kernels/_build.py, loaded by path: the
package itself is not importable here). Pruning works without the library, so a failed build only
warns unless ``GRAPHPRUNE_REQUIRE_KERNELS=1``; ``GRAPHPRUNE_SKIP_KERNEL_BUILD=1`` skips it.
Editable installs use the checkout's kernels/ and the cache build, as before.
"""

import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
KERNELS_SRC = ROOT / "kernels"
# What an installed package needs to build again (first use, --cuda): everything but build junk.
SOURCE_GLOBS = ("CMakeLists.txt", "README.md", "fetch_headers.sh", "src/*", "cuda/*")


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


def _kernel_build_module():
    """graphprune/kernels/_build.py of this tree (stdlib only), without importing graphprune."""
    spec = importlib.util.spec_from_file_location(
        "_graphprune_kernels_build", ROOT / "graphprune" / "kernels" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy_sources(dest):
    """Copies the kernel sources to ``dest`` (replacing what a previous build left there)."""
    shutil.rmtree(dest, ignore_errors=True)
    for pattern in SOURCE_GLOBS:
        for path in sorted(KERNELS_SRC.glob(pattern)):
            if path.is_file():
                target = dest / path.relative_to(KERNELS_SRC)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)


def _log(message):
    print(f"graphprune: {message}", file=sys.stderr, flush=True)


class BuildPyWithKernels(build_py):
    """build_py, plus the kernel sources and the CPU library in non-editable builds."""

    def run(self):
        super().run()
        if self.editable_mode:  # the checkout's kernels/ and the cache build serve editable installs
            return
        pkg = Path(self.build_lib) / "graphprune" / "kernels"
        _copy_sources(pkg / "_sources")
        self._build_library(pkg)

    def _build_library(self, pkg):
        build = _kernel_build_module()
        lib = pkg / build.LIBRARY_NAME
        lib.unlink(missing_ok=True)  # never ship a stale library from an earlier build
        if _flag("GRAPHPRUNE_SKIP_KERNEL_BUILD"):
            _log("GRAPHPRUNE_SKIP_KERNEL_BUILD is set: not building the kernel library "
                 "(it is built on first use)")
            return
        scratch = Path(self.get_finalized_command("build").build_temp) / "graphprune-kernels"
        start = time.monotonic()
        try:
            built = build.build_into(scratch, src=KERNELS_SRC)
        except build.KernelsUnavailable as exc:
            if _flag("GRAPHPRUNE_REQUIRE_KERNELS"):
                raise SystemExit(f"graphprune: the kernel library did not build "
                                 f"(GRAPHPRUNE_REQUIRE_KERNELS is set): {exc}") from exc
            _log(f"WARNING: the sparse-operator library did not build; graphprune installs "
                 f"without it (pruning works; --sparsity builds it on first use): {exc}")
            return
        shutil.copy2(built, lib)
        _log(f"built {build.LIBRARY_NAME} in {time.monotonic() - start:.1f} s")


class PlatformWheel(bdist_wheel):
    """Tags the wheel for this platform but any Python 3 and ABI: the library talks to ONNX
    Runtime's C API, not to Python's."""

    def get_tag(self):
        return ("py3", "none", super().get_tag()[2])


class BinaryDistribution(Distribution):
    """A distribution with a native part: platform wheel (not py3-none-any), platlib install."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildPyWithKernels, "bdist_wheel": PlatformWheel},
      distclass=BinaryDistribution)
