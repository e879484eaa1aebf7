"""Every user mistake on the runner's command line ends in one line on stderr and a non-zero status,
never a traceback; ``--debug`` lets the traceback through."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_torch_weights_hostile import _global, legit_file, write_zip

from subspace_jax.data import registry as datasets
from subspace_jax.runner import command as runner_main
from subspace_jax.runner import main, results

SPEC = dataclasses.replace(datasets.get("mvtec"), categories=("weave", "shape"))
REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "efficientnet_lite0", "--image-size", "64", "--k", "2", "--lam", "4", "--no-progress"]


def run(tmp_path: Path, capsys, *args: str) -> tuple[int, str]:
    (tmp_path / "data").mkdir(exist_ok=True)
    try:
        status = main(SPEC, ["--data-root", str(tmp_path / "data"), *TINY, *args])
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def assert_one_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'\xff\xfe{"dataset": "mvtec"}', "not UTF-8 text"),
        (
            json.dumps({"dataset": "mvtec", "config": {}, "categories": []}).encode(),
            "'categories' must be a JSON object",
        ),
        (
            json.dumps({"dataset": "mvtec", "config": {}, "categories": {"weave": 5}}).encode(),
            "category 'weave' must be",
        ),
        (
            json.dumps({"dataset": "mvtec", "config": [], "categories": {}}).encode(),
            "'config' must be a JSON object",
        ),
        (json.dumps(["not", "a", "document"]).encode(), "expected a JSON object, got list"),
        (
            json.dumps({"dataset": 3, "config": {}, "categories": {}}).encode(),
            "'dataset' must be a JSON string",
        ),
    ],
)
def test_a_broken_results_file_for_resume_is_one_line(tmp_path, capsys, content, fragment):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_bytes(content)
    status, err = run(tmp_path, capsys, "--out", str(out), "--resume")
    assert status == 2
    assert_one_line(err, str(out / "results.json"), fragment)


def test_a_results_json_that_is_a_folder_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "results.json").mkdir(parents=True)
    status, err = run(tmp_path, capsys, "--out", str(out), "--resume")
    assert status == 2
    assert_one_line(err, "results.json: is a folder")
    with pytest.raises(results.ResultsError, match="is a folder"):
        main(SPEC, ["--data-root", str(tmp_path / "data"), *TINY, "--out", str(out), "--resume", "--debug"])


@pytest.mark.parametrize("below", [False, True])
def test_out_that_is_an_existing_file_is_refused(tmp_path, capsys, below):
    existing = tmp_path / "taken.txt"
    existing.write_text("keep me")
    out = existing / "run" if below else existing
    status, err = run(tmp_path, capsys, "--out", str(out))
    assert status == 2
    assert f"--out: {existing} is a file" in err.splitlines()[-1]
    assert existing.read_text() == "keep me"


def test_malicious_and_truncated_weights_are_one_line(tmp_path, capsys):
    evil = write_zip(
        tmp_path / "evil.pth", b"\x80\x02" + _global("os", "system") + b"(X\x02\x00\x00\x00idtR.", {}
    )
    status, err = run(tmp_path, capsys, "--weights", str(evil))
    assert status == 2
    assert_one_line(err, f"--weights {evil}", "UnsafePickleError", "refusing to load global 'os.system'")
    good, _ = legit_file(tmp_path / "good.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:40])
    status, err = run(tmp_path, capsys, "--weights", str(cut))
    assert status == 2
    assert_one_line(err, f"--weights {cut}", "TorchFileError")
    # A well-formed file that is not this backbone's state dict.
    status, err = run(tmp_path, capsys, "--weights", str(good))
    assert status == 2
    assert_one_line(err, f"--weights {good}", "WeightsMismatchError")


def test_an_unexpected_failure_is_one_line_and_debug_shows_it(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("something internal")

    monkeypatch.setattr(results, "new_document", broken)
    status, err = run(tmp_path, capsys, "--out", str(tmp_path / "out"))
    assert status == 1
    assert_one_line(err, "KeyError: 'something internal'", "--debug")
    with pytest.raises(KeyError, match="something internal"):
        main(SPEC, ["--data-root", str(tmp_path / "data"), *TINY, "--out", str(tmp_path / "o2"), "--debug"])


def test_a_failing_category_is_one_line_naming_resume(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("backend exploded")

    monkeypatch.setattr(runner_main, "run_category", broken)
    out = tmp_path / "out"
    status, err = run(tmp_path, capsys, "--out", str(out))
    assert status == 1
    assert_one_line(err, "category 'weave' failed: RuntimeError: backend exploded", f"--resume --out {out}")


def test_the_script_itself_prints_no_traceback(tmp_path):
    evil = write_zip(
        tmp_path / "evil.pth", b"\x80\x02" + _global("builtins", "eval") + b"(X\x01\x00\x00\x001tR.", {}
    )
    (tmp_path / "data").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "mvtec.py"), "--data-root", str(tmp_path / "data"), *TINY]
        + ["--weights", str(evil)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert_one_line(proc.stderr, "refusing to load global 'builtins.eval'")
