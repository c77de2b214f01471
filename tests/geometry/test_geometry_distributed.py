"""Distance correlation under torchrun (issue 21, part 2): with a process group
initialised, the closed form's row blocks and the stream's tiles are split across the
ranks and their float64 sums combined; r and every Mantel permutation's r agree with one
process within 1e-12 (2 ranks on CPU, gloo, one thread each)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

DRIVER = """
import json, sys
import numpy as np
from verilens import dist
from verilens.geometry.correlation import distance_correlation, mantel
dist.init()
g = np.random.default_rng(0)
out = {}
for V in (5000, 1000):  # 3 row blocks (2 + 1), and 1 block (rank 1 idle)
    A = g.standard_normal((V, 48)).astype(np.float32) + 0.5
    B = A[:, :40] @ g.standard_normal((40, 40)).astype(np.float32) + 0.3 * g.standard_normal((V, 40)).astype(np.float32)
    for metric in ("cosine", "dot", "sqeuclidean"):
        out[f"{V}-{metric}"] = [distance_correlation(A, B, metric, method="closed")]
    m = mantel(A, B, "cosine", permutations=5, method="closed", batch=2)
    out[f"{V}-mantel"] = [m.r, *m.null.tolist()]
    out[f"{V}-float64"] = [distance_correlation(A.astype(np.float64), B.astype(np.float64), "dot", method="closed")]
    # every pair streamed, tile by tile (the CPU's tile path): the tiles split, their sums added in order
    for metric in ("euclidean", "cosine"):
        out[f"{V}-stream-{metric}"] = [distance_correlation(A, B, metric, method="stream", tile=1024)]
    m = mantel(A, B, "euclidean", permutations=2, method="stream", tile=1024, batch=2)
    out[f"{V}-stream-mantel"] = [m.r, *m.null.tolist()]
if dist.rank() == 0:
    json.dump(out, open(sys.argv[1], "w"))
dist.shutdown()  # without it gloo may abort at exit ("terminate called without an active exception")
"""
ENV = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                       "MASTER_PORT")}
ENV.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


@pytest.mark.parametrize("ranks", [1, 2])
def test_closed_form_split_across_ranks_equals_one_process(tmp_path, ranks):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    one, many = tmp_path / "one.json", tmp_path / "many.json"
    p = subprocess.run([sys.executable, str(script), str(one)], env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                        str(script), str(many)], env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    want, got = json.loads(one.read_text()), json.loads(many.read_text())
    assert want.keys() == got.keys()
    for k in want:
        assert len(got[k]) == len(want[k])
        assert max(abs(a - b) for a, b in zip(got[k], want[k])) <= 1e-12, k
    assert 0.3 < want["5000-cosine"][0] < 0.95  # a real correlation, not a degenerate one


def test_geometry_command_under_torchrun(tmp_path):
    """`torchrun ... -m verilens geometry`: the ranks split the correlations, rank 0 alone
    speaks and writes, and report.json equals one process's (wall times aside)."""
    from verilens.models.loading import builtin_path

    other = tmp_path / "tiny-copy"
    shutil.copytree(builtin_path("countdown-tiny"), other)
    args = ["-m", "verilens", "geometry", "countdown-tiny", str(other), "--max-tokens", "300", "--k", "3",
            "--permutations", "9", "--mantel-tokens", "60", "--what", "embed,hidden", "--layers", "0,3,6"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *args, "--out", str(tmp_path / "two")], env=ENV, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # rank 0 only

    def report(out):
        r = json.loads((out / "report.json").read_text())
        for pair in r["pairs"]:  # wall times; every number must match
            pair.pop("seconds", None)
            pair.get("hidden", {}).pop("forward_seconds", None)
        return r
    assert report(tmp_path / "two") == report(tmp_path / "one")
