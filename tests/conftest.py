"""Shared fixtures.

Real MTD data: tests that read it take the ``mtd_root`` fixture or carry the ``mtd`` marker (each implies
the other). The folder is found by :func:`subspace_jax.data.mtd.find_root` ($SUBSPACE_JAX_MTD, else
../shared/data/mtd beside the checkout, else the user cache the download command fills). Missing data
skips those tests with the download command as the reason, except where data is required: under CI
(``CI`` set to a true value, as ``.ci/run`` does) or with ``SUBSPACE_JAX_REQUIRE_DATA=1`` a missing MTD
fails them, so CI never reports a green run that skipped the real-data tests.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import jax
import pytest

from subspace_jax.data.mtd import MTDNotFoundError, find_root

pytest_plugins = ("pytester",)  # tests/test_conftest_mtd.py runs this file's rules on small test files

REQUIRE_DATA_ENV = "SUBSPACE_JAX_REQUIRE_DATA"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def data_required() -> bool:
    """Missing real data fails instead of skipping: under CI, or when SUBSPACE_JAX_REQUIRE_DATA is set."""
    return _truthy(os.environ.get("CI")) or _truthy(os.environ.get(REQUIRE_DATA_ENV))


@functools.cache
def _locate_mtd() -> Path | str:
    """The MTD folder, or the reason it was not found (looked up once per session)."""
    try:
        return find_root()
    except MTDNotFoundError as error:
        return str(error)


def require_mtd() -> Path:
    """The MTD folder; skips the calling test when it is missing, or fails it when data is required."""
    found = _locate_mtd()
    if isinstance(found, Path):
        return found
    if data_required():
        pytest.fail(f"{found} [data is required here: CI or {REQUIRE_DATA_ENV} is set]", pytrace=False)
    pytest.skip(found)


@pytest.fixture(scope="session")
def mtd_root() -> Path:
    return require_mtd()


# Where the fixture below logs memory maps and RSS after each module, when set.
_DIAGNOSTICS = os.environ.get("SUBSPACE_JAX_TEST_DIAGNOSTICS")


@pytest.fixture(autouse=True, scope="module")
def _fresh_compilation_caches():
    """Drop JAX's compiled programs after every test module. One session compiles thousands of programs
    (every module its own shapes and configs); kept all together, the interpreter crashed (SIGSEGV or
    SIGABRT inside XLA) some 600 tests into the suite, at whichever test compiled next, while every
    module passes on its own. A module's programs are rarely reused by the next one."""
    yield
    jax.clear_caches()
    if _DIAGNOSTICS:
        with open(_DIAGNOSTICS, "a") as log:
            maps = sum(1 for _ in open("/proc/self/maps"))
            rss = next(line for line in open("/proc/self/status") if line.startswith("VmRSS"))
            log.write(f"maps {maps} {rss.strip()}\n")


@pytest.hookimpl(tryfirst=True)  # before `-m` selection, so `-m "not mtd"` sees the added markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # One rule for both spellings: a test that takes mtd_root is an mtd test, and an mtd-marked test
    # checks for the data before it runs, even if it reaches the data some other way.
    for item in items:
        if "mtd_root" in getattr(item, "fixturenames", ()) and item.get_closest_marker("mtd") is None:
            item.add_marker(pytest.mark.mtd)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("mtd") is not None:
        require_mtd()


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server for download tests: files put in ``root`` are served at ``base_url + name``.

    Yields ``(root, base_url)``; base_url is ``http://127.0.0.1:<port>/models/``.
    """
    root = tmp_path / "served" / "models"
    root.mkdir(parents=True)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root.parent), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}/models/"
    finally:
        httpd.shutdown()
        httpd.server_close()
