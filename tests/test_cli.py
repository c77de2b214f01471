"""Every error a user can cause in a command is one `verilens: error: ...` line and a non-zero
exit; the traceback comes only with --debug or VERILENS_DEBUG=1 (issue 24)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from verilens.cli import main
from verilens.models.loading import builtin_path


def run(capsys, *args, env=None):
    """(exit code, stdout, stderr) of `verilens ARGS`, in this process."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("VERILENS_DEBUG", raising=False)
        for k, v in (env or {}).items():
            mp.setenv(k, v)
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def one_error_line(capsys, *args, code=2):
    rc, out, err = run(capsys, *args)
    errors = [l for l in err.splitlines() if l.startswith("verilens: error:")]
    assert rc == code, (rc, err)
    assert len(errors) == 1, err
    assert "Traceback" not in err and "Traceback" not in out
    return errors[0]


@pytest.fixture
def files(tmp_path):
    f = tmp_path / "afile"
    f.write_text("mine")
    return tmp_path, f


@pytest.mark.parametrize("args,match", [
    (["analyze", "--out", "{d}/o", "--n", "0"], "Invalid value for '--n'.*verilens analyze --help"),
    (["analyze", "--out", "{d}/o", "--n", "x"], "Invalid value for '--n'"),
    (["analyze", "--out", "{d}/o", "--batch-size", "0"], "--batch-size"),
    (["analyze", "--out", "{d}/o", "--bad-rows", "maybe"], "--bad-rows must be skip or error"),
    (["analyze", "--out", "{d}/o", "--template", "chatml"], "--template must be"),
    (["analyze", "--out", "{d}/o", "--problems", "{d}/missing.json"], "--problems .*no such file"),
    (["analyze", "--out", "{d}/o", "--probe", "{d}/missing.pt"], "--probe .*no such file"),
    (["analyze", "--out", "{f}"], "is a file, not a folder"),
    (["analyze", "--out", "{d}/o", "--resume", "--force"], "not both"),
    (["analyze", "--out", "{d}/o", "--dtype", "int3"], "unknown dtype"),
    (["analyze", "--out", "{d}/o", "--device", "tpu"], "unknown device"),
    (["analyze", "--frobnicate"], "No such option"),
    (["frobnicate"], "No such command"),
    (["demo", "--out", "{f}"], "is a file, not a folder"),
    (["train", "--out", "{f}"], "is a file, not a folder"),
    (["train", "--out", "{f}/sub"], "Not a directory"),
    (["train", "gpt2"], "only countdown-tiny can be trained"),
    (["train", "--threads", "0"], "--threads"),
    (["eval", "--n", "-1"], "--n"),
    (["eval", "--template", "x"], "--template must be one of"),
    (["eval", "{d}/nothing-here"], "model path not found"),
    (["eval", "{f}"], "is a file but not a .gguf"),
    (["eval", "some/hub-id"], "not a local folder"),
    (["geometry", "countdown-tiny"], "at least two models"),
    (["geometry", "countdown-tiny", "{d}/nothing-here", "--out", "{d}/g"], "not found"),
    (["geometry", "countdown-tiny", "countdown-tiny"], "named twice"),
    (["geometry", "a", "b", "--k", "0"], "--k"),
])
def test_bad_input_is_one_error_line(capsys, files, args, match):
    import re

    d, f = files
    line = one_error_line(capsys, *[a.format(d=d, f=f) for a in args])
    assert re.search(match, line), line
    assert f.read_text() == "mine"  # nothing the user owns was touched


@pytest.mark.parametrize("content,match", [
    ('[{"nums": [1, 2], "target": ' + "9" * 400 + "}]", "400 digits"),
    ('[{"nums": [1, 2], "target": Infinity}]', "Infinity"),
    ("[]", "holds no problems"),
    ('[{"nums": [true, false], "target": 1}]', "boolean"),
])
def test_bad_problems_file_is_one_error_line(capsys, tmp_path, content, match):
    p = tmp_path / "p.json"
    p.write_text(content)
    line = one_error_line(capsys, "analyze", "--out", tmp_path / "o", "--problems", p, "--n", "2")
    assert match in line, line


def test_bad_model_folder_is_one_error_line(capsys, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(builtin_path("countdown-tiny"), d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "hidden_size": "abc"}))
    assert "hidden_size is \"abc\"" in one_error_line(capsys, "eval", d, "--n", "1")
    (d / "config.json").write_text(json.dumps(cfg))
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:20000])
    assert "model.safetensors is truncated" in one_error_line(capsys, "analyze", "--model", d, "--out", tmp_path / "o")
    assert "model.safetensors is truncated" in one_error_line(capsys, "geometry", "countdown-tiny", d, "--out",
                                                              tmp_path / "g")


def test_debug_adds_the_traceback(capsys, tmp_path):
    rc, _, err = run(capsys, "eval", tmp_path / "nothing", "--debug")
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("verilens: error:")
    rc, _, err = run(capsys, "eval", tmp_path / "nothing", env={"VERILENS_DEBUG": "1"})
    assert rc == 2 and "Traceback" in err
    rc, _, err = run(capsys, "eval", tmp_path / "nothing", env={"VERILENS_DEBUG": "0"})
    assert rc == 2 and "Traceback" not in err


def test_an_unexpected_error_is_one_line_with_a_hint(capsys, tmp_path, monkeypatch):
    """A bug (here: a load that fails in a way verilens does not expect) is still one line,
    saying to rerun with --debug and report it; exit code 1 tells it from a user error."""
    import verilens.models

    def broken(*a, **k):
        raise RuntimeError("something inside")

    monkeypatch.setattr(verilens.models, "load", broken)
    line = one_error_line(capsys, "eval", "--n", "1", code=1)
    assert "unexpected RuntimeError: something inside" in line and "--debug" in line


def test_the_installed_entry_point(tmp_path):
    """The console script itself (not only main()): one line, exit 2, no traceback."""
    exe = shutil.which("verilens") or None
    cmd = [exe] if exe else [sys.executable, "-m", "verilens"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("VERILENS_DEBUG", None)
    res = subprocess.run(cmd + ["eval", str(tmp_path / "nothing")], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"verilens: error: model path not found: {tmp_path / 'nothing'}"]
