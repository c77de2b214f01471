"""The analysis run folder (issue 24): --force never deletes what is not a verilens run, a
finished report stays until its replacement is written, damaged cache files are named and
recomputed, never read as data."""
import json

import pytest
import torch

from verilens.analysis.rundir import RunDir
from verilens.errors import VerilensError

S = {"model": "m", "n": 4}


def counting(value):
    calls = []

    def fn():
        calls.append(1)
        return value
    return fn, calls


def test_force_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "data").mkdir()
    for kw in ({"force": True}, {"resume": True}, {}):
        with pytest.raises(VerilensError, match=r"not a verilens run folder .* holds data/, thesis.tex"):
            RunDir(tmp_path, S, **kw)
    assert (tmp_path / "thesis.tex").read_text() == "years of work" and (tmp_path / "data").is_dir()
    assert not (tmp_path / "cache").exists()


def test_out_naming_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(VerilensError, match="is a file, not a folder"):
        RunDir(f, S, force=True)


def test_an_empty_folder_is_used(tmp_path):
    RunDir(tmp_path, S)
    assert json.loads((tmp_path / "cache" / "settings.json").read_text()) == S


def test_force_on_a_run_discards_its_cache_and_keeps_its_report(tmp_path):
    run = RunDir(tmp_path, S)
    run.step("a", lambda: [1])
    (tmp_path / "report.json").write_text('{"old": 1}')
    (tmp_path / "report.html").write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(VerilensError, match="--resume .* or --force"):
        RunDir(tmp_path, S)
    fn, calls = counting([2])
    assert RunDir(tmp_path, {**S, "n": 5}, force=True).step("a", fn) == [2] and calls == [1]
    assert (tmp_path / "report.json").read_text() == '{"old": 1}'  # until the new run writes its own
    assert (tmp_path / "report.html").read_text() == "old"
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resume_reads_the_cache(tmp_path):
    RunDir(tmp_path, S).step("a", lambda: {"x": [1, 2]})
    fn, calls = counting(None)
    assert RunDir(tmp_path, S, resume=True).step("a", fn) == {"x": [1, 2]} and calls == []
    with pytest.raises(VerilensError, match="other settings"):
        RunDir(tmp_path, {**S, "n": 5}, resume=True)


def test_damaged_settings_marker(tmp_path):
    RunDir(tmp_path, S)
    (tmp_path / "cache" / "settings.json").write_text('{"model": ')
    with pytest.raises(VerilensError, match="settings.json is unreadable .* --force"):
        RunDir(tmp_path, S, resume=True)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no checksum", "empty"])
@pytest.mark.parametrize("kind", ["json", "pt"])
def test_a_damaged_cache_file_is_named_and_recomputed(tmp_path, damage, kind):
    value = {"W": torch.arange(1000.0)} if kind == "pt" else {"x": list(range(1000))}
    run = RunDir(tmp_path, S)
    run.step("first", lambda: value)
    run.step("second", lambda: [7])
    f = tmp_path / "cache" / f"first.{kind}"
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        f.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "empty":
        f.write_bytes(b"")
    else:
        (tmp_path / "cache" / f"first.{kind}.sha256").unlink()
    again = RunDir(tmp_path, S, resume=True)
    fn, calls = counting(value)
    with pytest.warns(UserWarning, match=f"first.{kind} .*(checksum|truncated).*recomputing step 'first'"):
        got = again.step("first", fn)
    assert calls == [1]
    if kind == "pt":
        assert torch.equal(got["W"], value["W"])
    else:
        assert got == value
    # the step after a recomputed one is recomputed too, even though its own file was fine
    fn2, calls2 = counting([7])
    assert again.step("second", fn2) == [7] and calls2 == [1]
    # and the rewritten files are trusted again
    fn3, calls3 = counting(None)
    assert RunDir(tmp_path, S, resume=True).step("first", fn3) is not None and calls3 == []


def test_a_stopped_write_leaves_no_file_that_is_read(tmp_path):
    """A kill between writing a step's data and its checksum: the data is not trusted."""
    run = RunDir(tmp_path, S)
    run.step("a", lambda: [1])
    (tmp_path / "cache" / "b.json").write_text("[2]")  # written, no checksum yet
    (tmp_path / "cache" / "b.json.tmp").write_text("[2")  # a half-written temporary
    again = RunDir(tmp_path, S, resume=True)
    assert again.step("a", lambda: None) == [1]
    with pytest.warns(UserWarning, match="has no checksum"):
        assert again.step("b", lambda: [3]) == [3]
