"""`verilens geometry MODEL_A MODEL_B [...]`: global and local embedding geometry across
models, written as report.json, heatmap.png and a self-contained report.html.

For every pair of models: the shared vocabulary (counts), Pearson r between the cosine
(or Euclidean) distance matrices over all shared tokens (streamed), Spearman's rho on a
sample of pairs, an optional Mantel p-value, the mean kNN Jaccard overlap, LLE weight
agreement, the Emb2Emb ridge map's R^2, and nearest-neighbour examples. For every
model: the Levina-Bickel intrinsic dimension of its vocabulary (sampled)."""
from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from ..errors import VerilensError, check_out_folder
from .correlation import distance_correlation, mantel
from .emb2emb import fit_map, heldout_r2
from .local import _knn_prepped, _prep, intrinsic_dimension, jaccard_rows, lle_agreement
from ..models.embeddings import load_embeddings
from .vocab import shared_vocab

PROBE_WORDS = [" the", " king", " water", " dog", " red", " three", " France", " run", " happy",
               " computer", " music", " house", " blue", " two", " cat", " good"]


def _atomic_write(path: Path, data: bytes):
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _heatmap_png(names, R, title) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * n, 1.2 + 1.0 * n), dpi=110)
    im = ax.imshow(R, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    for i in range(n):
        for j in range(n):
            if np.isfinite(R[i, j]):
                ax.text(j, i, f"{R[i, j]:.3f}", ha="center", va="center",
                        color="white" if abs(R[i, j]) > 0.6 else "black", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _neighbour_examples(Ea, Eb, strings, k=5, n_examples=12, seed=0, metric="cosine"):
    """Top-k neighbours (within the shared tokens) of a few probe tokens in both models."""
    pos = {s: i for i, s in enumerate(strings)}
    probes = [pos[w] for w in PROBE_WORDS if w in pos]
    rng = np.random.default_rng(seed)
    rest = [i for i in rng.permutation(len(strings)) if i not in set(probes)]
    probes = (probes + rest)[:n_examples]
    A, B = _prep(Ea, "E_a", metric), _prep(Eb, "E_b", metric)
    out = []
    for i in probes:
        row = {"token": strings[i]}
        for key, X in (("a", A), ("b", B)):
            d = (1.0 - (X @ X[i]).double()) if metric == "cosine" else (X - X[i]).double().norm(dim=1)
            d[i] = float("inf")
            nn = np.argsort(d.numpy(), kind="stable")[:k]
            row[key] = [strings[j] for j in nn]
        out.append(row)
    return out


def run_geometry(models, out, which: str = "embed", metric: str = "cosine", max_tokens: int | None = 20000,
                 k: int = 10, permutations: int = 0, mantel_tokens: int = 2000, seed: int = 0,
                 progress: bool = True, skip_nonfinite_rows: bool = False) -> dict:
    """Compare the (un)embedding geometry of two or more models; returns the report dict.
    A matrix with NaN / inf rows is an error naming them unless `skip_nonfinite_rows`
    leaves those tokens out (counted on the console, in report.json and report.html)."""
    models = [str(m) for m in models]
    if len(models) < 2:
        raise VerilensError("name at least two models to compare")
    if len(set(models)) != len(models):
        raise VerilensError("a model is named twice; name each model once")
    if max_tokens is not None and max_tokens < 3:
        raise VerilensError("--max-tokens must be at least 3")
    check_out_folder(out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def say(msg):
        if progress:
            print(f"[verilens geometry] {msg}", flush=True)

    srcs, nonfinite = [], []
    for m in models:
        say(f"loading {m} ({which})")
        src = load_embeddings(m, which)
        bad = np.flatnonzero(~np.isfinite(src.matrix.numpy()).all(1))
        if len(bad) and not skip_nonfinite_rows:
            shown = ", ".join(str(int(r)) for r in bad[:10]) + (f", ... ({len(bad)} in all)" if len(bad) > 10 else "")
            raise VerilensError(f"{m}: {len(bad)} rows of its {which} matrix hold NaN or inf (rows {shown}); repair "
                                "the checkpoint, or pass --skip-nonfinite-rows to leave those tokens out (counted)")
        if len(bad):
            say(f"  WARNING: {len(bad)} rows of {m}'s {which} matrix hold NaN or inf: those tokens are left out")
        srcs.append(src)
        nonfinite.append(bad)
    names = []
    for s in srcs:  # short, unique labels
        nm = Path(s.name).name or s.name
        base, c = nm, 2
        while nm in names:
            nm, c = f"{base} ({c})", c + 1
        names.append(nm)

    model_info = []
    for s, nm, bad_rows in zip(srcs, names, nonfinite):
        V = s.matrix.shape[0]
        usable = np.flatnonzero(np.isfinite(s.matrix.numpy()).all(1) & (s.matrix.norm(dim=1).numpy() > 0))
        sample = np.random.default_rng(seed).choice(usable, size=min(len(usable), max_tokens or V, 10000),
                                                    replace=False)
        idim = intrinsic_dimension(s.matrix[np.sort(sample)], k=min(max(3, 2 * k), len(sample) - 1),
                                   metric=metric)
        model_info.append({"name": nm, "source": s.source, "vocab_rows": V, "dim": int(s.matrix.shape[1]),
                           "nonfinite_rows": int(len(bad_rows)),
                           "intrinsic_dimension": {"estimator": "Levina-Bickel MLE (MacKay-Ghahramani pooled)",
                                                   "k": idim.k, "global": idim.global_mle,
                                                   "median_per_token": float(np.nanmedian(idim.per_token)),
                                                   "tokens": int(len(sample)), "undefined": idim.undefined}})

    n = len(srcs)
    R = np.eye(n)
    pairs = []
    for i, j in combinations(range(n), 2):
        a, b = srcs[i], srcs[j]
        t0 = time.time()
        sv = shared_vocab(a.tokenizer, b.tokenizer, max_tokens=max_tokens, seed=seed)
        keep = (sv.idx_a < a.matrix.shape[0]) & (sv.idx_b < b.matrix.shape[0])
        n_range = int((~keep).sum())
        fin_a = np.ones(a.matrix.shape[0], bool)
        fin_a[nonfinite[i]] = False
        fin_b = np.ones(b.matrix.shape[0], bool)
        fin_b[nonfinite[j]] = False
        fin = fin_a[sv.idx_a[keep]] & fin_b[sv.idx_b[keep]]
        n_nonfinite = int((~fin).sum())
        keep[keep] = fin
        ok_a = a.matrix.norm(dim=1).numpy() > 0
        ok_b = b.matrix.norm(dim=1).numpy() > 0
        nz = ok_a[sv.idx_a[keep]] & ok_b[sv.idx_b[keep]]  # zero rows (e.g. padding): no direction
        n_zero = int((~nz).sum())
        keep[keep] = nz
        if n_zero or n_nonfinite or n_range:
            say(f"  {names[i]} vs {names[j]}: left out {n_zero} zero rows, {n_nonfinite} NaN/inf rows, "
                f"{n_range} tokens past a matrix's rows")
        ia, ib = sv.idx_a[keep], sv.idx_b[keep]
        strings = [s for s, kp in zip(sv.strings, keep) if kp]
        Ea, Eb = a.matrix[ia], b.matrix[ib]
        say(f"{names[i]} vs {names[j]}: {len(strings)} shared tokens")
        info = distance_correlation(Ea, Eb, metric, zero_rows="skip", return_info=True)
        rho = distance_correlation(Ea, Eb, metric, rank=True, zero_rows="skip", seed=seed,
                                   sample_pairs=200_000)
        R[i, j] = R[j, i] = info.r
        entry = {"a": names[i], "b": names[j], "shared_vocab": sv.stats, "tokens": len(strings),
                 "pairs": info.n_pairs, "pearson_r": info.r, "spearman_rho_sampled": rho,
                 "skipped_zero_rows": n_zero + len(info.skipped_rows), "skipped_nonfinite_rows": n_nonfinite,
                 "skipped_out_of_range": n_range, "method": info.method,
                 "backend": info.backend}
        if permutations > 0:
            mt = min(len(strings), mantel_tokens)
            sub = np.sort(np.random.default_rng(seed).choice(len(strings), size=mt, replace=False))
            res = mantel(Ea[sub], Eb[sub], metric, permutations=permutations, seed=seed, zero_rows="skip")
            entry["mantel"] = {"tokens": mt, "permutations": permutations, "r": res.r, "p_value": res.p_value,
                               "method": res.method}
        loc_n = min(len(strings), 5000)
        sub = np.sort(np.random.default_rng(seed + 1).choice(len(strings), size=loc_n, replace=False))
        A_, B_ = _prep(Ea[sub], "E_a", metric), _prep(Eb[sub], "E_b", metric)
        kk = min(k, loc_n - 1)
        jac = jaccard_rows(_knn_prepped(A_, kk, metric, None)[0], _knn_prepped(B_, kk, metric, None)[0])
        lle = lle_agreement(Ea[sub], Eb[sub], k=kk, metric=metric)
        fwd = fit_map(Ea, Eb, alpha=1.0)
        entry["local"] = {"tokens": loc_n, "k": kk, "knn_jaccard_mean": float(jac.mean()),
                          "knn_jaccard_median": float(np.median(jac)),
                          "knn_jaccard_random_baseline": kk / (loc_n - 1), **lle.summary()}
        # held out: with few shared tokens next to the width the fit-row R² is near 1 for any pair
        entry["emb2emb_r2"] = {"a_to_b": heldout_r2(Ea, Eb, alpha=1.0, seed=seed), "a_to_b_fit_rows": fwd.r2}
        entry["examples"] = _neighbour_examples(Ea, Eb, strings, k=5, seed=seed, metric=metric)
        entry["seconds"] = round(time.time() - t0, 2)
        pairs.append(entry)
        say(f"  r = {info.r:.4f}, Spearman (sampled) = {rho:.4f}, kNN Jaccard@{kk} = {jac.mean():.3f}")

    report = {"which": which, "metric": metric, "max_tokens": max_tokens, "k": k, "seed": seed,
              "models": model_info, "pairs": pairs, "matrix": {"names": names, "pearson_r": R.tolist()}}
    png = _heatmap_png(names, R, f"{which} {metric}-distance correlation")
    _atomic_write(out / "heatmap.png", png)
    _atomic_write(out / "report.json", json.dumps(report, indent=2, default=float).encode())
    _atomic_write(out / "report.html", _html(report, png).encode())
    say(f"wrote {out / 'report.json'}, {out / 'heatmap.png'}, {out / 'report.html'}")
    return report


def _html(report: dict, png: bytes) -> str:
    e = html.escape

    def tok(s):
        return "<code>" + e(repr(s)[1:-1]) + "</code>"

    rows = []
    for p in report["pairs"]:
        m = p.get("mantel")
        loc = p["local"]
        mtxt = "" if not m else f"{m['p_value']:.3g} ({m['permutations']} perm.)"
        rows.append(
            f"<tr><td>{e(p['a'])}</td><td>{e(p['b'])}</td><td>{p['tokens']}</td><td>{p['pearson_r']:.4f}</td>"
            f"<td>{p['spearman_rho_sampled']:.4f}</td>"
            f"<td>{mtxt}</td>"
            f"<td>{loc['knn_jaccard_mean']:.3f} (chance {loc['knn_jaccard_random_baseline']:.4f})</td>"
            f"<td>{loc['weight_cosine_mean']:.3f}</td><td>{p['emb2emb_r2']['a_to_b']:.3f}</td>"
            f"<td>{p['skipped_zero_rows']} / {p['skipped_nonfinite_rows']}</td></tr>")
    mrows = "".join(
        f"<tr><td>{e(m['name'])}</td><td>{m['vocab_rows']}</td><td>{m['dim']}</td>"
        f"<td>{m['intrinsic_dimension']['global']:.2f}</td><td>{m['intrinsic_dimension']['median_per_token']:.2f}</td></tr>"
        for m in report["models"])
    ex = []
    for p in report["pairs"]:
        lines = "".join(
            f"<tr><td>{tok(x['token'])}</td><td>{' '.join(tok(t) for t in x['a'])}</td>"
            f"<td>{' '.join(tok(t) for t in x['b'])}</td></tr>" for x in p["examples"])
        ex.append(f"<h3>{e(p['a'])} vs {e(p['b'])}</h3><table><tr><th>token</th><th>neighbours in {e(p['a'])}"
                  f"</th><th>neighbours in {e(p['b'])}</th></tr>{lines}</table>")
    img = base64.b64encode(png).decode()
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>verilens geometry</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:14px}}th{{background:#f3f3f3}}code{{background:#f6f6f6}}</style>
</head><body><h1>Embedding geometry across models</h1>
<p>Matrix: <b>{e(report['which'])}</b>; distance: <b>{e(report['metric'])}</b>; tokens per pair: shared vocabulary
(sampled to at most {report['max_tokens']}). Pearson r is over all token pairs of the shared set (exact: closed form, or every pair streamed);
Spearman's rho on a sample of pairs.</p>
<img alt="correlation heatmap" src="data:image/png;base64,{img}">
<h2>Pairs</h2><table><tr><th>A</th><th>B</th><th>tokens</th><th>Pearson r</th><th>Spearman rho</th><th>Mantel p</th>
<th>kNN Jaccard@{report['k']}</th><th>LLE weight cosine</th><th>Emb2Emb R² (held out)</th>
<th>left out: zero / NaN-inf rows</th></tr>{''.join(rows)}</table>
<h2>Models</h2><table><tr><th>model</th><th>rows</th><th>dim</th><th>intrinsic dim. (pooled)</th><th>median per token</th></tr>{mrows}</table>
<h2>Nearest neighbours</h2>{''.join(ex)}
</body></html>"""
