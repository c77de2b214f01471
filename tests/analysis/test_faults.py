"""Fault tests for the long commands (issue 24): a run stopped by SIGINT or SIGKILL at a random
point and then resumed gives the report an uninterrupted run gives; a truncated cache file is
named and recomputed, never read as data; Ctrl-C in a command is one error line (exit 130)."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import verilens

# The analysis with the smallest settings that still run every step, through the API in a
# child process (so that it can be killed). A fixed random probe skips probe training.
DRIVER = """
import sys
from verilens import load
from verilens.analysis.pipeline import Settings, analyze
s = Settings(n=8, max_new_tokens=200, batch_size=8, n_contexts=2, intervention_tokens=6, random_seeds=1,
             steer_alphas=[1.0])
analyze(load("countdown-tiny"), sys.argv[1], s, probe_file=sys.argv[2], resume=sys.argv[3] == "resume",
        progress=False, log=lambda m: print(m, flush=True))
"""
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def start(out, probe, mode="new"):
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(out), str(probe), mode], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(out, probe, mode="resume", timeout=900):
    p = start(out, probe, mode)
    stdout, stderr = p.communicate(timeout=timeout)
    assert p.returncode == 0, stderr[-3000:]
    return stderr


def report(out):
    r = json.loads((out / "report.json").read_text())
    r.pop("seconds")  # wall times differ between runs; every number must not
    return r


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    m = verilens.load("countdown-tiny")
    probe = d / "probe.pt"
    torch.save(torch.randn(m.cfg.n_layers, m.cfg.d_model, 2, generator=torch.Generator().manual_seed(0)), probe)
    t0 = time.perf_counter()
    finish(d / "baseline", probe, mode="new")
    return d, probe, time.perf_counter() - t0, report(d / "baseline")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_stopped_then_resumed_equals_uninterrupted(baseline, sig):
    d, probe, wall, want = baseline
    out = d / f"run-{sig.name}"
    delay = random.Random(sig.value).uniform(0.2, 0.8) * wall  # a random point of the run
    p = start(out, probe)
    time.sleep(delay)
    p.send_signal(sig)
    p.communicate(timeout=300)
    assert p.returncode != 0 or (out / "report.json").exists()  # stopped, or had finished already
    finish(out, probe)
    assert report(out) == want


@pytest.mark.slow
def test_truncated_cache_file_is_recomputed(baseline):
    d, probe, _, want = baseline
    out = d / "baseline"
    traces = out / "cache" / "traces.json"
    traces.write_bytes(traces.read_bytes()[:1000])  # a truncated file: a raw JSONDecodeError before issue 24
    stderr = finish(out, probe)
    assert "traces.json does not match its checksum" in stderr and "recomputing step 'traces'" in stderr
    assert report(out) == want


def test_ctrl_c_in_a_command_is_one_line(tmp_path):
    """SIGINT while `verilens eval` generates: one error line, exit 130, no traceback."""
    p = subprocess.Popen([sys.executable, "-m", "verilens", "eval", "--n", "200", "--max-new-tokens", "300"],
                         env={k: v for k, v in ENV.items() if k != "VERILENS_DEBUG"}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(12)  # past the imports and the model load, inside generation
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    errors = [l for l in stderr.splitlines() if l.startswith("verilens: error:")]
    assert len(errors) == 1 and "interrupted" in errors[0] and "--resume" in errors[0]
