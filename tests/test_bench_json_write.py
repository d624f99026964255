"""`pyaudiok bench --json/--plot` outputs: each replaces its file whole or not at all, and a write that
fails (disk full, permission, ...) is one line naming the path and the reason, with exit status 2 and
the tables measured so far on stdout."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import resource
import signal

import pytest
import torch

from pyaudiok import cli
from pyaudiok.bench import harness, registry

PREVIOUS = '[{"case": "an earlier run"}]\n'


def _tiny_cases(*_args, **_kwargs) -> list[harness.Case]:
    return [harness.Case(f"demo{n}", {"n": n}, [harness.Candidate("reference", "reference",
                                                                  lambda: torch.ones(8).sum())])
            for n in (1, 2)]


@pytest.fixture(autouse=True)
def tiny_bench(monkeypatch):
    """The bench command on two cases that time in milliseconds."""
    monkeypatch.setattr(registry, "collect", _tiny_cases)


def _bench(*flags: str) -> tuple[int, str, str]:
    """cli.main's status, stdout and stderr for `pyaudiok bench` on the CPU with `flags`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["bench", "--device", "cpu", "--min-time", "0.001", *flags])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def disk_full(monkeypatch):
    """Every fsync fails as on a full disk (where delayed allocation reports it)."""
    def no_space(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", no_space)


def _assert_left_as_before(path) -> None:
    assert path.read_text() == PREVIOUS
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "a temporary file was left"


def test_json_write_failure_is_one_line_and_status_2(tmp_path, disk_full):
    path = tmp_path / "r.json"
    path.write_text(PREVIOUS)
    status, out, err = _bench("--json", str(path))
    assert status == 2
    assert err == f"pyaudiok bench: cannot write --json {path}: No space left on device\n"
    rows, table = out.split("median ms")
    assert "| demo1" in rows and "demo1" in table, "the rows timed and their table stay on stdout"
    assert "demo2" not in out, "the run stops at the failed write"
    _assert_left_as_before(path)


def test_plot_write_failure_is_one_line_and_status_2(tmp_path, disk_full):
    pytest.importorskip("matplotlib")
    path = tmp_path / "r.png"
    path.write_text(PREVIOUS)
    status, out, err = _bench("--plot", str(path))
    assert status == 2
    assert err == f"pyaudiok bench: cannot write --plot {path}: No space left on device\n"
    assert "demo2" in out and "wrote" not in out
    _assert_left_as_before(path)


def test_outputs_written_on_success(tmp_path):
    pytest.importorskip("matplotlib")
    json_path, plot_path = tmp_path / "out" / "r.json", tmp_path / "r.png"
    json_path.parent.mkdir()
    json_path.write_text(PREVIOUS)
    status, out, err = _bench("--json", str(json_path), "--plot", str(plot_path))
    assert status == 0 and err == ""
    assert f"wrote {json_path}" in out and f"wrote {plot_path}" in out
    rows = json.loads(json_path.read_text())
    assert [r["case"] for r in rows] == ["demo1", "demo2"] and rows[0]["median_s"] > 0
    assert plot_path.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "r.json", "r.png"]


@contextlib.contextmanager
def _file_size_limit(size: int):
    """Writes past `size` bytes fail with EFBIG (a disk that fills midway through a file)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_json_failing_midway_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(PREVIOUS)
    results = [harness.Result(f"case{i}", "cpu", "backend", {"n": i}, median_s=1.0) for i in range(50)]
    with _file_size_limit(1000), pytest.raises(OSError) as info:
        harness.write_json(path, {"device": "cpu"}, results)
    assert info.value.errno == errno.EFBIG
    _assert_left_as_before(path)


def test_a_crash_midway_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(PREVIOUS)

    def crash(f):
        f.write(b'[{"case": "torn')
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        harness.write_atomically(path, crash)
    _assert_left_as_before(path)


def test_plot_format_matplotlib_cannot_write_is_refused_before_timing(tmp_path):
    pytest.importorskip("matplotlib")
    status, out, err = _bench("--plot", str(tmp_path / "chart.txt"))
    assert status == 2 and "--plot" in err and "png" in err and "chart.txt" in err
    assert "demo1" not in out  # refused before any case was timed
