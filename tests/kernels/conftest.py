"""The `library` fixture of the kernel tests."""
import pytest

from graphprune import kernels as gk


@pytest.fixture(scope="module")
def library():
    """The CPU library's path; the test is skipped (with the reason) where it cannot build."""
    try:
        return gk.library_path()
    except gk.KernelsUnavailable as exc:
        pytest.skip(f"kernel library unavailable here: {exc}")
