"""The demo's interventions step with 1 and 2 torchrun ranks, one thread each (issue 21, part 3).

One full analysis (1 rank) makes the run folder; then each round copies it twice, deletes the
interventions step (its file and units: the later steps are recomputed with it) and resumes
one copy with 1 rank and the other with 2, in alternating order, so the machine's drift hits
both alike. Reported: `seconds.interventions` of each report.json, per round and the ratio
(2 ranks / 1 rank), median and range; every report's interventions numbers are checked equal.

Run:  python benchmarks/bench_ranks.py [ROUNDS] [WORKDIR]
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

SETTINGS = ["--n-problems", "400", "--n-contexts", "50", "--intervention-tokens", "40", "--random-seeds", "30",
            "--max-new-tokens", "300", "--batch-size", "50"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def analyze(out: Path, ranks: int, resume: bool):
    cmd = ([sys.executable, "-m", "verilens"] if ranks == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), "-m",
            "verilens"])
    cmd += ["analyze", *SETTINGS, "--out", str(out)] + (["--resume"] if resume else [])
    subprocess.run(cmd, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "report.json").read_text())


def fresh_copy(base: Path, out: Path):
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base, out)
    cache = out / "cache"
    for f in cache.glob("interventions.*"):
        f.unlink()
    shutil.rmtree(cache / "units" / "interventions", ignore_errors=True)
    (out / "report.json").unlink()


def main(rounds: int, work: Path):
    work.mkdir(parents=True, exist_ok=True)
    base = work / "base"
    if not (base / "report.json").exists():
        shutil.rmtree(base, ignore_errors=True)
        analyze(base, 1, resume=False)
    times = {1: [], 2: []}
    reference = None
    for r in range(rounds):
        for ranks in ((1, 2) if r % 2 == 0 else (2, 1)):
            out = work / f"r{ranks}"
            fresh_copy(base, out)
            rep = analyze(out, ranks, resume=True)
            times[ranks].append(rep["seconds"]["interventions"])
            assert reference is None or rep["interventions"] == reference, "ranks disagree"
            reference = rep["interventions"]
        print(f"round {r + 1}: 1 rank {times[1][-1]:.1f} s, 2 ranks {times[2][-1]:.1f} s", flush=True)
    ratios = sorted(b / a for a, b in zip(times[1], times[2]))
    print(f"interventions step: 1 rank median {statistics.median(times[1]):.1f} s, 2 ranks median "
          f"{statistics.median(times[2]):.1f} s; ratio 2/1 median {statistics.median(ratios):.3f} "
          f"(range {ratios[0]:.3f}-{ratios[-1]:.3f}, {rounds} rounds)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/bench-ranks"))
