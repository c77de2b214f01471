"""`verilens demo`: countdown-tiny's self-verification, on the built-in model, offline.

Until the analysis pipeline lands, the demo shows the behaviour the analysis studies:
traces with their parsed attempts and verdicts, and the eval numbers."""
from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .countdown import generate_problems, parse_trace, prompt, reward
from .models import load
from .models.evaluate import evaluate, generate


def run_demo(out_dir, n: int = 8, seed: int = 0, eval_n: int = 50) -> dict:
    console = Console()
    m = load("countdown-tiny")
    problems = generate_problems(n, seed=seed, split="test")
    gens = generate(m.hf_model, m.tokenizer, [prompt(p) for p in problems], desc="traces")
    traces = []
    for p, g in zip(problems, gens):
        atts = parse_trace(g, p.target)
        r = reward(prompt(p) + g, p.nums, p.target)
        console.rule(f"nums={list(p.nums)} target={p.target}  reward={r}")
        console.print(g, markup=False, highlight=False)
        t = Table("#", "expression", "claimed", "verdict", "hits target", "arithmetic ok")
        for k, a in enumerate(atts, 1):
            t.add_row(str(k), a.expression, str(a.claimed), str(a.verdict), str(a.hits_target), str(a.arithmetic_ok))
        console.print(t)
        traces.append({
            "problem": p.to_dict(), "generation": g, "reward": r,
            "attempts": [{"expression": a.expression, "segments": a.segments, "claimed": a.claimed,
                          "verdict": a.verdict, "hits_target": a.hits_target,
                          "arithmetic_ok": a.arithmetic_ok, "marker": a.marker} for a in atts],
        })
    metrics = evaluate(m, n=eval_n, seed=seed + 1)
    console.rule("eval (test split)")
    console.print_json(json.dumps({k: v for k, v in metrics.items() if k != "verdict_agreement_by_position"}))
    result = {"model": m.name, "traces": traces, "eval": metrics}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "demo.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out / "demo.json")
    console.print(f"wrote {out / 'demo.json'}")
    return result
