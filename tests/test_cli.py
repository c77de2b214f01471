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
    (["analyze", "--out", "{d}/o", "--compare", "{d}/missing"], "--compare .*no report.json there"),
    (["analyze", "--out", "{d}/o", "--compare", "{f}"], "--compare .*not a readable verilens analysis report"),
    (["analyze", "--frobnicate"], "No such option"),
    (["frobnicate"], "No such command"),
    (["demo", "--out", "{f}"], "is a file, not a folder"),
    (["train", "--out", "{f}"], "is a file, not a folder"),
    (["train", "--out", "{f}/sub"], "Not a directory"),
    (["train", "gpt2"], "verilens trains countdown-tiny and countdown-smol, not 'gpt2'"),
    (["train", "--threads", "0"], "--threads"),
    (["eval", "--n", "-1"], "--n"),
    (["eval", "--template", "x"], "--template must be one of"),
    (["eval", "{d}/nothing-here"], "model path not found"),
    (["eval", "{f}"], "is a file but not a .gguf"),
    (["eval", "some/hub-id"], "not a local folder"),
    (["eval", "--dtype", "int3"], "unknown dtype"),
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
    ("", "is empty; a problems file holds rows"),
    (" \n", "is empty"),
    ('[{"nums": [1, NaN], "target": 3}]', "got NaN"),
    ('[{"nums": [1, 2], "target": 1e400}]', "got inf"),
    ("[" * 100000 + "]" * 100000, "not valid JSON"),
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


# ---------------------------------------------------------------- the rest of issue 24's list

def test_force_never_touches_a_users_folder(capsys, tmp_path, monkeypatch):
    """--force on a folder holding a user's file, or on '.', is refused naming the file; nothing is deleted."""
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "thesis.tex").write_text("mine")
    line = one_error_line(capsys, "analyze", "--out", user, "--force", "--n", "2")
    assert "is not a verilens run folder" in line and "thesis.tex" in line, line
    monkeypatch.chdir(user)
    line = one_error_line(capsys, "analyze", "--out", ".", "--force", "--n", "2")
    assert line.startswith("verilens: error: . is not a verilens run folder") and "thesis.tex" in line, line
    assert (user / "thesis.tex").read_text() == "mine" and sorted(p.name for p in user.iterdir()) == ["thesis.tex"]


def tiny_copy(tmp_path, name="m"):
    d = tmp_path / name
    shutil.copytree(builtin_path("countdown-tiny"), d)
    return d


def test_damaged_weights_are_one_error_line(capsys, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(builtin_path("countdown-tiny") / "model.safetensors"))
    d = tiny_copy(tmp_path, "shape")  # a tensor of the wrong shape, in a pytorch_model.bin
    (d / "model.safetensors").unlink()
    torch.save({**state, "model.layers.2.self_attn.k_proj.weight": torch.zeros(65, 192)}, d / "pytorch_model.bin")
    line = one_error_line(capsys, "eval", d, "--n", "1")
    assert (f"{d / 'pytorch_model.bin'}: tensor model.layers.2.self_attn.k_proj.weight has shape [65, 192]" in line
            and "needs [64, 192]" in line), line
    d = tiny_copy(tmp_path, "shards")  # one of two shards gone
    (d / "model.safetensors").unlink()
    names = sorted(state)
    save_file({k: state[k] for k in names[::2]}, d / "model-00001-of-00002.safetensors")
    weight_map = {k: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, k in enumerate(names)}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    line = one_error_line(capsys, "analyze", "--model", d, "--out", tmp_path / "o")
    assert "shards named in model.safetensors.index.json are missing: model-00002-of-00002.safetensors" in line, line
    d = tiny_copy(tmp_path, "missing")  # a tensor transformers would fill with random numbers
    save_file({k: v for k, v in state.items() if k != "model.layers.3.mlp.up_proj.weight"}, d / "model.safetensors")
    assert "layer 3 has no mlp.up_proj.weight" in one_error_line(capsys, "eval", d, "--n", "1")
    assert not (tmp_path / "o").exists()


def test_damaged_gguf_is_one_error_line(capsys, tmp_path, smollm2_gguf):
    cut = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as f:
        cut.write_bytes(f.read(smollm2_gguf.stat().st_size // 2))
    assert f"{cut} is truncated or damaged" in one_error_line(capsys, "eval", cut, "--n", "1")
    rnd = tmp_path / "random.gguf"
    rnd.write_bytes(os.urandom(1 << 20))
    assert f"{rnd} is not a GGUF file" in one_error_line(capsys, "geometry", "countdown-tiny", rnd, "--out",
                                                         tmp_path / "g")
    assert not (tmp_path / "g").exists()


def test_nan_probe_is_one_error_line(capsys, tmp_path):
    import torch

    p = tmp_path / "nan.pt"
    torch.save(torch.full((6, 192, 2), float("nan")), p)
    line = one_error_line(capsys, "analyze", "--out", tmp_path / "o", "--probe", p, "--n", "2")
    assert "the probe weights of layers [0, 1, 2, 3, 4, 5] hold NaN or inf" in line, line


def test_geometry_nan_rows(capsys, tmp_path):
    """NaN rows in an embedding: an error naming the rows and the model; with
    --skip-nonfinite-rows they are left out and said so on the console and in report.json."""
    from safetensors.torch import load_file, save_file

    d = tiny_copy(tmp_path, "nanrows")
    state = load_file(str(d / "model.safetensors"))
    state["model.embed_tokens.weight"][[5, 17]] = float("nan")
    save_file(state, d / "model.safetensors")
    line = one_error_line(capsys, "geometry", "countdown-tiny", d, "--out", tmp_path / "g", "--what", "embed")
    assert f"{d}: 2 rows of its embed matrix hold NaN or inf (rows 5, 17)" in line, line
    rc, out, err = run(capsys, "geometry", "countdown-tiny", d, "--out", tmp_path / "g", "--what", "embed",
                       "--skip-nonfinite-rows")
    assert rc == 0, err
    assert "2 NaN/inf rows" in out and "hold NaN or inf: those tokens are left out" in out, out
    pair = json.loads((tmp_path / "g" / "report.json").read_text())["pairs"][0]["embed"]
    assert pair["skipped_nonfinite_rows"] == 2 and pair["skipped_zero_rows"] == 0


def test_resume_after_a_truncated_cache_file(capsys, tmp_path):
    """A finished run whose cache/traces.json is cut in half: --resume names it in one warning
    line, recomputes it and the steps after it, and gives the same report."""
    import torch

    probe = tmp_path / "probe.pt"
    torch.save(torch.randn(6, 192, 2, generator=torch.Generator().manual_seed(0)), probe)
    out = tmp_path / "run"
    args = ["analyze", "--out", out, "--n", "8", "--max-new-tokens", "200", "--batch-size", "8", "--n-contexts", "2",
            "--intervention-tokens", "6", "--random-seeds", "1", "--probe", probe]
    assert run(capsys, *args)[0] == 0

    def report():
        r = json.loads((out / "report.json").read_text())
        r.pop("seconds")
        return r

    want = report()
    traces = out / "cache" / "traces.json"
    traces.write_bytes(traces.read_bytes()[: traces.stat().st_size // 2])
    rc, _, err = run(capsys, *args, "--resume")
    assert rc == 0 and "Traceback" not in err, err
    warn = [l for l in err.splitlines() if l.startswith("verilens: warning:")]
    assert any(f"{traces} does not match its checksum" in l and "recomputing step 'traces'" in l for l in warn), err
    assert report() == want


def test_train_never_writes_into_a_users_folder(capsys, tmp_path):
    """train would replace DIR/model and DIR/tokenizer at its end: a folder that is not a train
    run (no spec.json) and is not empty is refused, naming what it holds."""
    user = tmp_path / "project"
    (user / "model").mkdir(parents=True)
    (user / "model" / "weights.bin").write_text("mine")
    line = one_error_line(capsys, "train", "--out", user, "--steps", "1")
    assert "is not a verilens train run (no spec.json) and holds model" in line, line
    assert sorted(p.name for p in user.iterdir()) == ["model"] and (user / "model" / "weights.bin").read_text() == "mine"
