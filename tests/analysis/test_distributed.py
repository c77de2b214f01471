"""`verilens analyze` under torchrun (issue 21, part 2): 2 ranks on CPU (gloo, one thread
each) give the report of one process, number for number; a rank killed mid-run is resumed
with --resume, recomputing only the units missing; bad launches (mismatched settings, a
rank without the model files, more ranks than work units) are one clear error on every
rank with nothing written."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import verilens
from verilens import dist

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
for _k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "VERILENS_DEBUG"):
    ENV.pop(_k, None)
# the smallest settings that run every step and give every sweep several units: 2 trace batches, 4 activation
# batches, 7 intervention conditions (5, and the random set beside "none" on its contexts), 1 projection and 4
# steering conditions; a fixed random probe skips training
ARGS = ["--n-problems", "8", "--max-new-tokens", "200", "--batch-size", "4", "--n-contexts", "2",
        "--intervention-tokens", "6", "--random-seeds", "1"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def analyze_cmd(out, probe, *extra):
    return ["-m", "verilens", "analyze", "--out", str(out), "--probe", str(probe), *ARGS, *extra]


def run(cmd, timeout=600):
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    return p


def report(out):
    r = json.loads((out / "report.json").read_text())
    r.pop("seconds")  # wall times differ between runs; every number must not
    return r


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    m = verilens.load("countdown-tiny")
    probe = d / "probe.pt"
    torch.save(torch.randn(m.cfg.n_layers, m.cfg.d_model, 2, generator=torch.Generator().manual_seed(0)), probe)
    one = run([sys.executable, *analyze_cmd(d / "one", probe)])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run([*TORCHRUN, *analyze_cmd(d / "two", probe)])
    assert two.returncode == 0, two.stderr[-3000:]
    return d, probe, report(d / "one"), two


def test_two_ranks_give_the_report_of_one_process(runs):
    d, _, want, two = runs
    got = report(d / "two")
    assert got == want  # every number, every continuation, every head set
    # rank 0 alone speaks and writes the report; every unit of every sweep was done once
    assert two.stdout.count("report:") == 1 and two.stdout.count("[verilens] traces") == 1
    units = {s.name: sorted(f.name for f in s.glob("*.pt")) for s in (d / "two" / "cache" / "units").iterdir()}
    assert {k: len(v) for k, v in units.items()} == {"traces": 2, "probes": 4, "interventions": 7, "subspace": 5}
    assert torch.equal(torch.load(d / "two" / "probe.pt"), torch.load(d / "one" / "probe.pt"))


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def _rank_of(pid):
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return None
    for e in env:
        if e.startswith(b"RANK="):
            return int(e[5:])
    return None


@pytest.mark.slow
def test_killed_rank_resumes_only_the_missing_units(runs):
    d, probe, want, _ = runs
    out = d / "killed"
    p = subprocess.Popen([*TORCHRUN, *analyze_cmd(out, probe)], env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    # mid-run: the traces are done, the later sweeps are not
    deadline = time.time() + 300
    while not (out / "cache" / "traces.json.sha256").exists():
        assert p.poll() is None and time.time() < deadline, "the run ended before its traces were written"
        time.sleep(0.05)
    workers = {_rank_of(c): c for c in _children(p.pid)}
    os.kill(workers[1], signal.SIGKILL)
    _, stderr = p.communicate(timeout=120)
    assert p.returncode != 0, "torchrun must fail the job when a rank dies"
    assert not (out / "report.json").exists()
    before = {f: f.stat().st_mtime_ns for f in (out / "cache" / "units").rglob("*.pt")}
    assert len([f for f in before if f.parent.name == "traces"]) == 2

    again = run([*TORCHRUN, *analyze_cmd(out, probe, "--resume")])
    assert again.returncode == 0, again.stderr[-3000:]
    assert report(out) == want
    # the units finished before the kill were read, not recomputed
    assert all(f.stat().st_mtime_ns == t for f, t in before.items())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_by_hand(args_by_rank, timeout=300):
    """One process per rank with the environment torchrun would give it (so that each rank
    can be given its own command line, as on nodes started separately)."""
    port = str(_free_port())
    procs = []
    for r, args in enumerate(args_by_rank):
        env = {**ENV, "WORLD_SIZE": str(len(args_by_rank)), "RANK": str(r), "LOCAL_RANK": str(r),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "VERILENS_DIST_TIMEOUT": "120"}
        procs.append(subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, stderr) for p, (_, stderr) in zip(procs, outs)]


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("verilens: error:")]


def test_mismatched_settings_fail_on_every_rank(runs, tmp_path):
    _, probe, _, _ = runs
    out = tmp_path / "r"
    res = launch_by_hand([analyze_cmd(out, probe), analyze_cmd(out, probe, "--seed", "1")])
    for code, stderr in res:
        assert code != 0
        errors = _error_lines(stderr)
        assert len(errors) == 1 and "different settings" in errors[0] and "seed" in errors[0], stderr[-2000:]
    assert not out.exists()  # nothing written


def test_rank_without_the_model_files_fails_on_every_rank(runs, tmp_path):
    _, probe, _, _ = runs
    out = tmp_path / "r"
    missing = tmp_path / "no-such-model"
    res = launch_by_hand([analyze_cmd(out, probe, "--model", str(missing)) if r == 1 else analyze_cmd(out, probe)
                          for r in range(2)])
    for code, stderr in res:
        assert code != 0
        errors = _error_lines(stderr)
        assert len(errors) == 1 and "rank 1 could not start" in errors[0] and "no-such-model" in errors[0], \
            stderr[-2000:]
    assert not out.exists()


DRIVER = """
import sys
from verilens import dist
from verilens.analysis.pipeline import Settings, _check_ranks
dist.init()
s = Settings(n=4, batch_size=4, n_contexts=1, random_seeds=0)
_check_ranks({"n": 4}, s, None, None)
"""


def test_more_ranks_than_work_units_fail_on_every_rank(tmp_path):
    """4 problems in one batch, one context and 5 conditions: at most 5 units in any step, so
    a sixth rank would never work: a clear error on every rank."""
    res = launch_by_hand([["-c", DRIVER]] * 6)
    for code, stderr in res:
        assert code != 0
        assert "6 ranks but at most 5 work units" in stderr, stderr[-2000:]


def test_split_is_contiguous_balanced_and_complete():
    for n in range(0, 23):
        for w in range(1, 7):
            parts = [dist.split(n, r, w) for r in range(w)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert not dist.active() and dist.gather(3) == [3] and dist.broadcast(4) == 4


UNITS_DRIVER = """
import sys
from verilens import dist
from verilens.analysis.rundir import RunDir
from verilens.errors import VerilensError
dist.init()
run = RunDir(sys.argv[1], {"test": 1})

def compute(keys):
    for k in keys:
        if k == 3:
            raise VerilensError("unit 3 cannot be done")
        yield k, k * k

try:
    run.units("sweep", 4, compute)  # rank 0 does 0 and 1, rank 1 does 2, then fails at 3
except VerilensError as e:  # as the CLI ends a failing rank (cli.main)
    print("error:", e, file=sys.stderr, flush=True)
    dist.abandon()
    sys.exit(3)
"""


def test_a_failing_unit_is_the_same_error_on_every_rank_and_finished_units_stay(tmp_path):
    res = launch_by_hand([["-c", UNITS_DRIVER, str(tmp_path / "r")]] * 2)
    for code, stderr in res:
        assert code == 3 and "error: rank 1 failed in step 'sweep': unit 3 cannot be done" in stderr, stderr[-2000:]
    units = sorted(f.name for f in (tmp_path / "r" / "cache" / "units" / "sweep").glob("*.pt"))
    assert units == ["000000.pt", "000001.pt", "000002.pt"]

    # resumed by another number of processes (here one): only the missing unit is computed
    from verilens.analysis.rundir import RunDir

    computed = []

    def compute(keys):
        for k in keys:
            computed.append(k)
            yield k, k * k

    run = RunDir(tmp_path / "r", {"test": 1}, resume=True)
    assert run.units("sweep", 4, compute) == {0: 0, 1: 1, 2: 4, 3: 9} and computed == [3]


HANG_DRIVER = """
import sys, time
from verilens import dist
from verilens.errors import VerilensError
dist.init()
if dist.rank() == 1:
    time.sleep(120)  # a rank that hangs
try:
    dist.gather(dist.rank())
except VerilensError as e:
    print(e, file=sys.stderr, flush=True)
    dist.abandon()  # as cli.main does: exit with the code, not gloo's teardown abort
    sys.exit(3)
"""


def test_a_hung_rank_ends_the_job_at_the_timeout(tmp_path):
    port = str(_free_port())
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": port, "VERILENS_DIST_TIMEOUT": "5"}
    hung = subprocess.Popen([sys.executable, "-c", HANG_DRIVER], env={**env, "RANK": "1", "LOCAL_RANK": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        p = subprocess.run([sys.executable, "-c", HANG_DRIVER], env=env, capture_output=True, text=True, timeout=100)
        assert p.returncode == 3 and "did not answer" in p.stderr and "VERILENS_DIST_TIMEOUT=5" in p.stderr, \
            p.stderr[-2000:]
        assert time.time() - t0 < 90
    finally:
        hung.kill()
        hung.wait()
