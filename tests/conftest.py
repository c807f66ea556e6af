"""Shared fixtures: the read-only real datasets in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssdcli.cli.process import limit_openmp_spin

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    # The test process runs under the OpenMP spin limit the `ssd` command sets, before any test
    # module imports torch: speed only, no result depends on it (tests/test_import_side_effects.py).
    limit_openmp_spin()
@pytest.fixture(scope="session", autouse=True)
def torch_backend_by_default():
    """``--backend`` defaults to torch in tests: ``auto`` picks a runtime by timing this machine, so
    its notes and its choice differ between CPUs, and every checkpoint would be exported and
    converted once. Tests of ``auto`` pass ``--backend auto`` (the flag beats $SSDCLI_BACKEND)."""
    from ssdcli.cli.runtime import BACKEND_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(BACKEND_ENV, "torch")
        yield


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory) -> Path:
    """The export cache of ``--backend auto|onnxruntime|openvino`` in a session folder, never the
    user's ~/.cache (ssdcli.export.cache.CACHE_ENV)."""
    from ssdcli.export.cache import CACHE_ENV

    folder = tmp_path_factory.mktemp("ssdcli-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA
