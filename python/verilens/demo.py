"""`verilens demo`: the self-verification analysis of the built-in countdown-tiny, offline.

It is `verilens analyze` with settings that finish in a few minutes on a laptop CPU,
plus a summary on the terminal: a few of the model's traces, probe accuracy by layer,
the heads found and the intervention outcomes next to the published 3B numbers."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import dist
from .analysis.pipeline import Settings, analyze
from .analysis.report import PUBLISHED_3B
from .models import load


def run_demo(out_dir, n: int = 400, seed: int = 0, force: bool = False, resume: bool = False) -> dict:
    console = Console()
    model = load("countdown-tiny")
    # Fewer contexts and shorter continuations keep it to a few minutes. 400 problems give
    # ~1,200 verdicts, so a probe's validation accuracy is not noise. 30 random-head sets:
    # in a 36-head model about one random 3-set in four holds a head the verdict needs, so
    # a set's success rate is near 0 or near 1, and ten sets leave the mean to +-0.1.
    settings = Settings(n=n, seed=seed, n_contexts=50, intervention_tokens=40, random_seeds=30, max_new_tokens=300,
                        batch_size=50)
    report = analyze(model, out_dir, settings, resume=resume, force=force,
                     log=lambda msg: console.print(msg, style="dim"))
    if not dist.is_main():  # under torchrun rank 0 speaks for the job
        return report

    tr = report["traces"]
    console.rule(f"countdown-tiny: {tr['n']} traces, {tr['both_verdicts']} with both verdicts, {tr['sites']} verdicts")
    acc = ", ".join(f"L{l} {a:.2f}" for l, a in enumerate(report["probe_accuracy"]))
    console.print(f"probe accuracy by layer: {acc}")
    if report.get("probe_accuracy_before_marker"):
        console.print("  on the token before ' (' (the claim's last token): "
                      + ", ".join(f"L{l} {a:.2f}" for l, a in enumerate(report["probe_accuracy_before_marker"])))
    console.print("top channel-score heads: " + ", ".join(f"L{l}H{h}" for l, h in report["heads"]["top_heads"])
                  + f"  (previous-token heads: {len(report['heads']['prev_token_heads'])})")
    t = Table("intervention", "success", "mix", "fail", "published 3B (s / m / f)", title="Interventions at ' ('")
    k = report["settings"]["top_k_heads"]
    for name, row in report["interventions"].items():
        if name.startswith("random_heads_"):
            continue
        pub = PUBLISHED_3B.get("top3_heads" if name == f"top{k}_heads" else name)
        label = f"{name} (mean of {row['seeds']} sets, success ± {100 * row['success_sem']:.0f})" \
            if name == "random_heads" and row.get("success_sem") is not None else name
        t.add_row(label, *(f"{100 * row[x]:.0f} %" for x in ("success", "mix", "fail")),
                  " / ".join(f"{x:.0f}" for x in pub) if pub else "")
    console.print(t)
    at = report["verdict_attribution"]
    top = sorted(((v, l, h) for l, row in enumerate(at["heads"]) for h, v in enumerate(row)), reverse=True)[:3]
    console.print(f"who writes the verdict (logit 'this' - 'not', mean {at['logit_diff']:+.1f}): attention "
                  f"{sum(at['attn']):+.1f}, MLPs {sum(at['mlp']):+.1f}; heads "
                  + ", ".join(f"L{l}H{h} {v:+.1f}" for v, l, h in top))
    console.print(f"report: {Path(out_dir) / 'report.html'}   numbers: {Path(out_dir) / 'report.json'}   "
                  f"seconds by step: {report['seconds']}")
    return report
