"""The real-data rule of tests/conftest.py, run by pytester on a small test file: MTD present -> the tests
run; missing -> skipped with the download command; missing under CI or SUBSPACE_JAX_REQUIRE_DATA -> failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from subspace_jax.data.mtd import DOWNLOAD_COMMAND, MTD_CLASSES

CONFTEST = Path(__file__).with_name("conftest.py")
# Plugins the rule does not need; loading them would make each inner run take seconds.
QUIET = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider")

# One test per way of asking for the data (the fixture, the marker) and one that does not ask.
TESTS = """
import pytest

def test_takes_the_fixture(mtd_root):
    assert (mtd_root / "MT_Free" / "Imgs").is_dir()

@pytest.mark.mtd
def test_carries_the_marker():
    pass

def test_needs_no_data():
    pass
"""


@pytest.fixture
def project(pytester, monkeypatch):
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    mtd: reads MTD\n")
    pytester.makepyfile(test_data=TESTS)
    for name in ("CI", "SUBSPACE_JAX_REQUIRE_DATA", "SUBSPACE_JAX_MTD"):
        monkeypatch.delenv(name, raising=False)
    return pytester


def test_present_data_runs_the_tests(project, monkeypatch, tmp_path):
    root = tmp_path / "mtd"
    for name in MTD_CLASSES:
        (root / name / "Imgs").mkdir(parents=True)
    monkeypatch.setenv("SUBSPACE_JAX_MTD", str(root))
    monkeypatch.setenv("CI", "true")
    project.runpytest(*QUIET).assert_outcomes(passed=3)


@pytest.mark.parametrize("ci", [None, "false", "0"])
def test_missing_data_skips_with_the_download_command(project, monkeypatch, tmp_path, ci):
    monkeypatch.setenv("SUBSPACE_JAX_MTD", str(tmp_path / "nowhere"))
    if ci is not None:
        monkeypatch.setenv("CI", ci)
    result = project.runpytest("-rs", *QUIET)
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == 0
    result.stdout.fnmatch_lines([f"SKIPPED [[]2[]]*MTD not found*nowhere*{DOWNLOAD_COMMAND}*"])


@pytest.mark.parametrize("variable, value", [("CI", "true"), ("CI", "1"), ("SUBSPACE_JAX_REQUIRE_DATA", "1")])
def test_missing_data_fails_where_data_is_required(project, monkeypatch, tmp_path, variable, value):
    monkeypatch.setenv("SUBSPACE_JAX_MTD", str(tmp_path / "nowhere"))
    monkeypatch.setenv(variable, value)
    result = project.runpytest(*QUIET)
    result.assert_outcomes(passed=1, errors=2)
    assert result.ret != 0
    result.stdout.fnmatch_lines([f"*MTD not found*{DOWNLOAD_COMMAND}*data is required here*"])
