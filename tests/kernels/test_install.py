"""A non-editable install ships the kernel library (setup.py builds it into the wheel).

- Where the package looks: the shipped library before the cache build, and the sources in the
  order $GRAPHPRUNE_KERNELS_SRC, checkout, packaged copy (fake package folders, no build).
- The build's failure policy: without a compiler the wheel still builds (sources, no library)
  and says why; with GRAPHPRUNE_REQUIRE_KERNELS=1 it fails (a few seconds: nothing compiles).
- The real thing (zoo stage, about a minute on 2 cores): a wheel of the working tree, installed
  outside the repository, runs a SparseMatMul with the library it carries.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from graphprune import kernels as gk
from graphprune.kernels import _build

REPO = Path(__file__).resolve().parents[2]
LIB = gk.LIBRARY_NAME


# ---------------------------------------------------------------------------------------------
# where the package looks


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An installed-looking ``<site>/graphprune/kernels`` that _build treats as its own folder."""
    pkg = tmp_path / "site" / "graphprune" / "kernels"
    (pkg / "_sources").mkdir(parents=True)
    (pkg / "_sources" / "CMakeLists.txt").write_text("# packaged\n")
    monkeypatch.setattr(_build, "_PACKAGE_DIR", pkg)
    monkeypatch.delenv("GRAPHPRUNE_KERNELS_SRC", raising=False)
    monkeypatch.setenv("GRAPHPRUNE_KERNELS_CACHE", str(tmp_path / "cache"))
    return pkg


def test_source_dir_order(fake_package, tmp_path, monkeypatch):
    site = fake_package.parents[1]
    assert gk.source_dir() == fake_package / "_sources"
    # a "kernels" folder in site-packages (another project's) is not a checkout
    (site / "kernels").mkdir()
    (site / "kernels" / "CMakeLists.txt").write_text("# someone else's\n")
    assert gk.source_dir() == fake_package / "_sources"
    (site / "pyproject.toml").write_text("")
    assert gk.source_dir() == site / "kernels"
    other = tmp_path / "other"
    other.mkdir()
    (other / "CMakeLists.txt").write_text("")
    monkeypatch.setenv("GRAPHPRUNE_KERNELS_SRC", str(other))
    assert gk.source_dir() == other


def test_source_dir_missing_says_how_to_fix(fake_package):
    shutil.rmtree(fake_package / "_sources")
    with pytest.raises(gk.KernelsUnavailable, match="GRAPHPRUNE_KERNELS_SRC"):
        gk.source_dir()


def test_shipped_library_comes_first(fake_package, tmp_path, monkeypatch):
    assert gk.shipped_library() is None
    (fake_package / LIB).write_bytes(b"")
    assert gk.library_path(build_if_missing=False) == str(fake_package / LIB)
    assert gk.build() == fake_package / LIB  # nothing to build
    assert not (tmp_path / "cache").exists()
    # sources of one's own: their cache build, not the shipped library
    monkeypatch.setenv("GRAPHPRUNE_KERNELS_SRC", str(fake_package / "_sources"))
    assert gk.shipped_library() is None
    with pytest.raises(gk.KernelsUnavailable, match="is not built"):
        gk.library_path(build_if_missing=False)


# ---------------------------------------------------------------------------------------------
# building wheels


def _setuptools_or_skip():
    """The builds run without isolation, on this environment's setuptools (the test extra's)."""
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        major = 0
    if major < 77:
        pytest.skip("needs setuptools>=77 in this environment (pip install -e '.[test]'): the "
                    "wheels are built without build isolation")


def _tree_copy(dest: Path) -> Path:
    """The working tree's tracked and not-ignored files (no build junk) copied to ``dest``."""
    _setuptools_or_skip()
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout (the copy is made from `git ls-files`)")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = REPO / rel
        if src.is_file():  # tracked files deleted in the working tree are left out
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _build_wheel(tree: Path, out: Path, **env):
    """``pip wheel`` of ``tree`` (offline: the running environment's setuptools); ``env`` entries
    set (str) or unset (None) build settings. Returns the finished process."""
    full = {k: v for k, v in os.environ.items()
            if k not in ("GRAPHPRUNE_REQUIRE_KERNELS", "GRAPHPRUNE_SKIP_KERNEL_BUILD")}
    full.update({k: v for k, v in env.items() if v is not None})
    cmd = [sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "--no-build-isolation",
           "-v", "-w", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, env=full, cwd=out.parent)


def _wheel(out: Path) -> Path:
    (wheel,) = out.glob("graphprune-*.whl")
    return wheel


def _packaged_sources_match(wheel: Path, tree: Path):
    prefix = "graphprune/kernels/_sources/"
    names = {n[len(prefix):] for n in zipfile.ZipFile(wheel).namelist() if n.startswith(prefix)}
    expected = {str(p.relative_to(tree / "kernels")) for p in (tree / "kernels").rglob("*")
                if p.is_file()}
    assert names == expected


def test_wheel_without_compiler_installs_without_library(tmp_path):
    tree = _tree_copy(tmp_path / "tree")
    proc = _build_wheel(tree, tmp_path / "dist", CXX="/nonexistent/c++")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the sparse-operator library did not build" in proc.stdout + proc.stderr
    wheel = _wheel(tmp_path / "dist")
    assert f"graphprune/kernels/{LIB}" not in zipfile.ZipFile(wheel).namelist()
    _packaged_sources_match(wheel, tree)  # the first use can still build


def test_wheel_without_compiler_fails_where_required(tmp_path):
    tree = _tree_copy(tmp_path / "tree")
    proc = _build_wheel(tree, tmp_path / "dist", CXX="/nonexistent/c++",
                        GRAPHPRUNE_REQUIRE_KERNELS="1")
    assert proc.returncode != 0
    assert "GRAPHPRUNE_REQUIRE_KERNELS" in proc.stdout + proc.stderr
    assert not list((tmp_path / "dist").glob("*.whl"))


_CHECK_INSTALLED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import graphprune
    from graphprune import kernels as gk

    rng = np.random.default_rng(0)
    w = gk.mask_blocks(rng.standard_normal((64, 32)).astype(np.float32), 0.8, (1, 4))
    x = rng.standard_normal((8, 64)).astype(np.float32)
    sess = gk.session(gk.make_sparse_matmul_model(w, format="bsr", block=(1, 4)))
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    err = float(np.abs(y - x.astype(np.float64) @ w).max())
    print(json.dumps({"package": graphprune.__file__, "library": gk.library_path(),
                      "sources": str(gk.source_dir()), "max_abs_err": err}))
""")


@pytest.mark.zoo
def test_wheel_ships_a_working_library(library, tmp_path):
    """``library``: skipped (with the reason) where the cache build cannot work either."""
    required = os.environ.get("CI") or os.environ.get("GRAPHPRUNE_REQUIRE_KERNELS")
    if gk.find_cmake() is None and not required:
        pytest.skip("cmake is not installed (pip install cmake): the wheel cannot build the library")
    tree = _tree_copy(tmp_path / "tree")
    proc = _build_wheel(tree, tmp_path / "dist", GRAPHPRUNE_REQUIRE_KERNELS="1")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    wheel = _wheel(tmp_path / "dist")
    assert not wheel.name.endswith("-none-any.whl"), wheel.name  # platform-specific
    assert f"graphprune/kernels/{LIB}" in zipfile.ZipFile(wheel).namelist()
    _packaged_sources_match(wheel, tree)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "GRAPHPRUNE_KERNELS_SRC"}
    env.update(PYTHONPATH=str(site), GRAPHPRUNE_KERNELS_CACHE=str(cache))
    run = subprocess.run([sys.executable, "-c", _CHECK_INSTALLED], capture_output=True, text=True,
                         env=env, cwd=tmp_path)  # outside the repository
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.strip().splitlines()[-1])
    pkg = site / "graphprune"
    assert found["package"] == str(pkg / "__init__.py")
    assert found["library"] == str(pkg / "kernels" / LIB)
    assert found["sources"] == str(pkg / "kernels" / "_sources")
    assert found["max_abs_err"] < 1e-3
    assert not any(cache.iterdir())  # nothing was built at run time
