"""The analysis report: DIR/report.json (every number), DIR/figures/*.png and one
self-contained DIR/report.html (figures embedded) with the intervention table next to
the published 3B numbers. report.json is written last, so a folder with one is a
finished run."""
from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

# PAPER.md section 6: Success / Mix / Fail on the 3B model, in %.
PUBLISHED_3B = {
    "none": (0.0, 0.0, 100.0),
    "glu_valid": (16.3, 1.0, 82.7),
    "glu_valid_invalid": (44.7, 2.3, 53.0),
    "prev_token_heads": (96.0, 3.7, 0.3),
    "top3_heads": (95.3, 4.7, 0.0),
}
KINDS = ("success", "mix", "fail", "partial", "unknown")


def comparison(path) -> dict:
    """What report.html shows of another finished run beside this one (`verilens analyze
    --compare DIR`): its model, probe accuracy by layer and intervention rates, read from
    DIR/report.json (or the report.json named); a clear error for anything else."""
    from ..errors import VerilensError

    p = Path(path)
    f = p / "report.json" if p.is_dir() else p
    if not f.is_file():
        raise VerilensError(f"--compare {path}: no report.json there (name a finished `verilens analyze` run)")
    try:
        r = json.loads(f.read_text())
        inter = r["interventions"]

        def kinds(t):
            return {x: float(t.get(x, 0.0)) for x in KINDS}

        own = inter["none"].get("rule", "verilens")  # a report older than `by_rule` has its own rule's only
        rates = {k: {"n": int(t["n"]), "by_rule": {u: kinds(x) for u, x in t.get("by_rule", {own: t}).items()}}
                 for k, t in inter.items() if not k.startswith("random_heads_")}
        return {"name": str(r["model"]["name"]), "report": str(f.resolve()), "n_contexts": int(r["n_contexts"]),
                "probe_accuracy": [float(x) for x in r["probe_accuracy"]], "interventions": rates}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise VerilensError(f"--compare {path}: {f.name} is not a readable verilens analysis report "
                            f"({type(e).__name__}: {str(e)[:80]})") from None


def _atomic_write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
    os.replace(tmp, path)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def _main_conditions(inter: dict) -> list[str]:
    return [k for k in inter if not k.startswith("random_heads_")]


def make_figures(report: dict, fig_dir: Path) -> dict:
    """Write the figures; returns {name: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig_dir.mkdir(parents=True, exist_ok=True)
    out = {}

    acc = report["probe_accuracy"]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(range(len(acc)), acc, "o-", label="validation")
    ax.plot(range(len(acc)), report["probe_train_accuracy"], "x--", alpha=0.6, label="train")
    if report.get("probe_accuracy_before_marker"):
        ax.plot(range(len(acc)), report["probe_accuracy_before_marker"], "s:", label="validation, token before ' ('")
    ax.set(xlabel="layer", ylabel="probe accuracy", ylim=(0.4, 1.02), title="Verdict probe (resid_post at ' (')")
    ax.axhline(0.95, color="grey", lw=0.5)
    ax.legend()
    out["probe_accuracy"] = fig_dir / "probe_accuracy.png"
    _save(fig, out["probe_accuracy"])

    for key, title in (("density", "Attention to the target (previous-token heads)"),
                       ("channel_scores", "Channel score (paper) for GLU_valid neurons")):
        M = np.array(report["heads"][key])
        fig, ax = plt.subplots(figsize=(1 + 0.35 * M.shape[1], 1 + 0.3 * M.shape[0]))
        im = ax.imshow(M, aspect="auto", cmap="viridis" if key == "density" else "coolwarm")
        if key != "density":
            v = np.abs(M).max() or 1.0
            im.set_clim(-v, v)
        fig.colorbar(im, ax=ax)
        ax.set(xlabel="head", ylabel="layer", title=title)
        for l, h in report["heads"]["top_heads"]:
            ax.add_patch(plt.Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, ec="black", lw=1.5))
        out[key] = fig_dir / f"{key}.png"
        _save(fig, out[key])

    inter = report["interventions"]
    names = _main_conditions(inter)
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(names)))
    left = np.zeros(len(names))
    colors = {"success": "#2a9d8f", "mix": "#e9c46a", "fail": "#e76f51", "partial": "#8ab17d", "unknown": "#999999"}
    for kind in KINDS:
        vals = np.array([inter[n].get(kind, 0.0) for n in names])
        if kind in ("partial", "unknown") and not vals.any():
            continue
        ax.barh(names, vals, left=left, color=colors[kind], label=kind)
        left += vals
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="share of contexts", title="Interventions at the ' (' step")
    ax.legend(loc="lower right", fontsize=8)
    out["interventions"] = fig_dir / "interventions.png"
    _save(fig, out["interventions"])

    ll = report["logit_lens"]
    cols = [("probe valid", ll["probe_valid"]), ("probe invalid", ll["probe_invalid"])]
    cols += [(f"L{n['neuron'][0]}N{n['neuron'][1]}", n) for n in ll["neurons"][:3]]
    rows = max(len(c[1]["tokens"]) for c in cols)
    cell = [[(repr(c[1]["tokens"][r]["token"]) if r < len(c[1]["tokens"]) else "") for c in cols]
            for r in range(min(rows, 12))]
    fig, ax = plt.subplots(figsize=(1.8 * len(cols), 0.6 + 0.25 * len(cell)))
    ax.axis("off")
    ax.table(cellText=cell, colLabels=[c[0] for c in cols], loc="center").scale(1, 1.1)
    ax.set_title(f"Logit lens (probe layer {ll['layer']}): top tokens")
    out["logit_lens"] = fig_dir / "logit_lens.png"
    _save(fig, out["logit_lens"])
    return out


RULE_NAMES = {"verilens": "verilens' rule", "authors": "the authors' rule"}


def _rates(t: dict) -> str:
    """success / mix / fail in %, then partial and unknown where there are any."""
    out = " / ".join(f"{100 * t.get(x, 0):.1f}" for x in ("success", "mix", "fail"))
    extra = ", ".join(f"{100 * t[x]:.1f} {x}" for x in ("partial", "unknown") if t.get(x))
    return out + (f" ({extra})" if extra else "")


def _table_html(report: dict) -> str:
    inter = report["interventions"]
    k = report["settings"]["top_k_heads"]
    rule = inter["none"].get("rule", "verilens")
    rules = [rule] + [r for r in RULE_NAMES if r != rule]  # the run's rule first, then the other
    others = report.get("compare", [])
    rows = []
    for name in _main_conditions(inter):
        t = inter[name]
        pub = PUBLISHED_3B.get("top3_heads" if name == f"top{k}_heads" and k == 3 else name)
        ours = "".join(f"<td>{_rates(t.get('by_rule', {}).get(r, t if r == rule else {}))}</td>" for r in rules)
        beside = "".join(f"<td>{_other_rates(o, name, rule)}</td>" for o in others)
        theirs = " / ".join(f"{x:.1f}" for x in pub) if pub else "—"
        drop = t.get("neuron_activation_drop")
        drop = f"{100 * drop:.0f} %" if drop is not None else "—"
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{t['n']}</td>{ours}{beside}<td>{theirs}</td>"
                    f"<td>{drop}</td></tr>")
    heads = "".join(f"<th>this model, {RULE_NAMES[r]}{' (this run)' if r == rule else ''}: success / mix / fail (%)"
                    "</th>" for r in rules)
    heads += "".join(f"<th>{html.escape(o['name'])} ({o['n_contexts']} contexts), {RULE_NAMES[rule]}: success / mix "
                     "/ fail (%)</th>" for o in others)
    return (f"<table><tr><th>intervention</th><th>contexts</th>{heads}"
            "<th>published 3B: success / mix / fail (%)</th><th>verification neurons' activation drop at"
            " \" (\"</th></tr>" + "".join(rows) + "</table>"
            "<p>Outcome rules (docs/analysis.md): verilens' counts a success only when the continuation is a "
            "rejection and nothing but more arithmetic; the authors' (their released code, case-sensitive) counts "
            "any other continuation holding \"not\" without \"&lt;answer&gt;\" or \"this works\" as a success, "
            "and has a class \"unknown\" that counts only in the total.</p>")


def _other_rates(other: dict, name: str, rule: str) -> str:
    """A compared run's rates of condition `name` under this run's rule ("—" where it has none)."""
    t = other["interventions"].get(name, {}).get("by_rule", {}).get(rule)
    return "—" if t is None else _rates(t)


def _probe_comparison_html(report: dict) -> str:
    """Probe accuracy by layer of this run and of the compared runs, one line each."""
    def line(name, acc):
        return (f"<li>{html.escape(name)} ({len(acc)} layers): "
                + ", ".join(f"{a:.2f}" for a in acc) + "</li>")

    others = report.get("compare", [])
    if not others:
        return ""
    return ("<p>Probe accuracy by layer (validation), beside the compared runs:</p><ul>"
            + line(report["model"]["name"] + " (this run)", report["probe_accuracy"])
            + "".join(line(o["name"], o["probe_accuracy"]) for o in others) + "</ul>")


def _attribution_html(report: dict) -> str:
    a = report["verdict_attribution"]
    rows = "".join(f"<tr><td>{l}</td><td>{x:+.2f}</td><td>{y:+.2f}</td><td>"
                   + ", ".join(f"H{h} {v:+.2f}" for h, v in sorted(enumerate(a["heads"][l]), key=lambda t: -abs(t[1]))[:3])
                   + "</td></tr>" for l, (x, y) in enumerate(zip(a["attn"], a["mlp"])))
    neurons = ", ".join(f"L{l}N{i} {v:+.2f}" for l, i, v in a["top_neurons"])
    return (f"<p>Direct logit attribution of logit(\"this\") - logit(\"not\") at the \" (\" step of the "
            f"{a['n']} intervention contexts (mean {a['logit_diff']:+.2f}; embedding {a['embed']:+.2f}; the terms add "
            f"up to it exactly). Writing is not needing: the ablations above say which components the verdict needs.</p>"
            "<table><tr><th>layer</th><th>attention</th><th>MLP</th><th>largest heads</th></tr>" + rows
            + f"</table><p>Largest GLU neurons: {neurons}.</p>")


def _gap_note(steering) -> str:
    """The steering strengths' unit, for a report that has it (runs before 2026-12-03 lack it)."""
    gap = steering.get("valid_gap")
    return "" if gap is None else f"; the valid and invalid sites lie {gap:.3g} apart along the vector"


def _probe_note(report: dict) -> str:
    """Which probe the run uses (probe.pt, GLU selection, projection, steering)."""
    if report.get("probe_position") == "before_marker":
        return ("This run uses the probe on the token before \" (\" (the claim's last token), where the authors' "
                "released code reads it (--paper-settings); the probe at \" (\", as the paper's text says, is shown "
                "beside it.")
    return ("This run uses the probe at \" (\", as the paper's text says; the authors' released code reads the token "
            "before it (the claim's last token), shown beside it.")


def make_html(report: dict, figures: dict) -> str:
    def img(name):
        data = base64.b64encode(Path(figures[name]).read_bytes()).decode()
        return f'<img src="data:image/png;base64,{data}" alt="{name}">'

    m, tr, sub = report["model"], report["traces"], report["subspace"]
    steer = "".join(f"<li>alpha {html.escape(a)}: {100 * v['accepted']:.1f} % accepted (n={v['n']})</li>"
                    for a, v in sub["steering"]["by_alpha"].items())
    heads = ", ".join(f"L{l}H{h}" for l, h in report["heads"]["top_heads"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>verilens: {html.escape(m['name'])}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}img{{max-width:100%}}</style></head><body>
<h1>How {html.escape(m['name'])} checks its own work</h1>
<p>{m['n_layers']} layers, {m['n_heads']} heads ({m['n_kv_heads']} KV), d_model {m['d_model']}, d_mlp {m['d_mlp']}.
Traces: {tr['n']} generations, {tr['both_verdicts']} with both verdicts, {tr['sites']} verdict sites
({tr['valid_sites']} valid, {tr['invalid_sites']} invalid); {report['n_contexts']} intervention contexts.</p>
<h2>Interventions</h2><p>Top channel-score heads: {heads}.</p>{_table_html(report)}{img('interventions')}
<h2>Who writes the verdict</h2>{_attribution_html(report)}
<h2>Probe</h2><p>{_probe_note(report)}</p>{img('probe_accuracy')}{_probe_comparison_html(report)}
<h2>Heads</h2>{img('density')}{img('channel_scores')}
<h2>Logit lens</h2>{img('logit_lens')}
<h2>The subspace, causally</h2>
<p>Projecting the probe directions out at layers {sub['projection']['layers']} on correct attempts:
success {100 * sub['projection']['success']:.1f} %, fail {100 * sub['projection']['fail']:.1f} %.</p>
<p>Steering wrong attempts along the valid probe vector at layers {sub['steering']['layers']}, at the " (" token
(baseline accepted {100 * sub['steering']['baseline_accepted']:.1f} %){_gap_note(sub['steering'])}:</p><ul>{steer}</ul>
<p>Versions: {html.escape(json.dumps(report['versions']))}. Every number: report.json.</p>
</body></html>"""


def write_report(report: dict, out) -> None:
    out = Path(out)
    figures = make_figures(report, out / "figures")
    report["figures"] = {k: str(Path(v).relative_to(out)) for k, v in figures.items()}
    _atomic_write(out / "report.html", make_html(report, figures))
    _atomic_write(out / "report.json", json.dumps(report, indent=1))
