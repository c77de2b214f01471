"""`verilens geometry MODEL_A MODEL_B [...]`: global and local geometry across models, written
as report.json, heatmap.png (and layers.png with --what hidden) and a self-contained report.html.

For every pair of models, on their full shared vocabulary (unless --max-tokens caps it):
  embed / unembed  the shared vocabulary (counts), Pearson r between the two models'
      distance matrices over all token pairs (closed form for cosine / dot / sqeuclidean,
      streamed for euclidean), Spearman's rho on a sample of pairs, an optional Mantel
      p-value, the mean kNN Jaccard overlap, LLE weight agreement, the Emb2Emb ridge map's
      held-out R^2 and nearest-neighbour examples. A model without an LM head (an encoder)
      has no unembedding: its unembed pairs say so in the report.
  hidden  r (and the Mantel p-value) between the two models' hidden states of the same
      tokens, layer by layer (verilens.geometry.hidden: input, layers, memory).
For every model and matrix: the Levina-Bickel intrinsic dimension of its vocabulary (sampled)."""
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

from .. import dist
from ..errors import VerilensError, check_out_folder
from .correlation import distance_correlation, mantel
from .emb2emb import fit_map, heldout_r2
from ._inputs import METRICS
from .hidden import MATCHES, Scratch, hidden_states, layer_plan, mean_cosine, parse_layers
from .local import _knn_prepped, _prep, intrinsic_dimension, jaccard_rows, lle_agreement
from ..models.embeddings import load_model_source
from .vocab import shared_vocab

WHATS = ("embed", "unembed", "hidden")
MATRIX_WHATS = ("embed", "unembed")

PROBE_WORDS = [" the", " king", " water", " dog", " red", " three", " France", " run", " happy",
               " computer", " music", " house", " blue", " two", " cat", " good"]


def _atomic_write(path: Path, data: bytes):
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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




def parse_what(what) -> list[str]:
    """'embed' / 'unembed,hidden' / 'all' (or a list) -> the kinds, in WHATS order."""
    items = what if isinstance(what, (list, tuple)) else str(what).split(",")
    items = [str(w).strip().lower() for w in items if str(w).strip()]
    if items == ["all"]:
        return list(WHATS)
    bad = [w for w in items if w not in WHATS]
    if bad or not items:
        raise VerilensError(f"--what takes embed, unembed, hidden (comma-separated) or all, not {bad[0] if bad else what!r}")
    return [w for w in WHATS if w in items]


def _local_metric(metric: str) -> str:
    """Neighbourhoods (kNN, LLE, intrinsic dimension) use cosine or Euclidean distances:
    dot -> cosine (a similarity has no neighbourhood metric of its own), sqeuclidean -> euclidean
    (the same neighbours)."""
    return "cosine" if metric in ("cosine", "dot") else "euclidean"


def _heatmaps_png(names, mats: dict, metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    kinds = list(mats)
    fig, axes = plt.subplots(1, len(kinds), figsize=(len(kinds) * (1.6 + 1.1 * n), 1.2 + 1.0 * n), dpi=110,
                             squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        R = np.array(mats[kind], dtype=float)
        im = ax.imshow(np.where(np.isfinite(R), R, np.nan), vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(n), names, rotation=30, ha="right")
        ax.set_yticks(range(n), names)
        for i in range(n):
            for j in range(n):
                txt = f"{R[i, j]:.3f}" if np.isfinite(R[i, j]) else "n/a"
                ax.text(j, i, txt, ha="center", va="center",
                        color="white" if np.isfinite(R[i, j]) and abs(R[i, j]) > 0.6 else "black", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(f"{kind}: {metric}-distance correlation", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _layers_png(pairs, metric: str) -> bytes:
    """r by layer, one line per pair; x = depth in the pair's shallower model (0 = embeddings, 1 = last block)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    for p in pairs:
        h = p.get("hidden")
        if not h or "layers" not in h:
            continue
        x = [row["depth"] for row in h["layers"]]
        y = [row["r"] for row in h["layers"]]
        ax.plot(x, y, marker="o", label=f"{p['a']} vs {p['b']} ({h['tokens']} tokens)")
        for row in h["layers"]:
            if row.get("mantel") and row["mantel"]["p_value"] > 0.05:
                ax.plot(row["depth"], row["r"], marker="o", mfc="white", color="k", ms=7, ls="")
    ax.axhline(0, color="#999", lw=0.8)
    ax.set_xlabel("relative depth (layer / blocks of the shallower model; 0 = embedding output)")
    ax.set_ylabel(f"Pearson r of {metric} distances")
    ax.set_title("hidden-state geometry by layer (open circles: Mantel p > 0.05)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _align(sv, rows_a: int, rows_b: int, bad_a=(), bad_b=(), zero_a=None, zero_b=None):
    """The shared tokens usable in both matrices: inside both row ranges, finite, non-zero rows."""
    keep = (sv.idx_a < rows_a) & (sv.idx_b < rows_b)
    n_range = int((~keep).sum())
    fin_a = np.ones(rows_a, bool)
    fin_a[np.asarray(bad_a, dtype=np.int64)] = False
    fin_b = np.ones(rows_b, bool)
    fin_b[np.asarray(bad_b, dtype=np.int64)] = False
    fin = fin_a[sv.idx_a[keep]] & fin_b[sv.idx_b[keep]]
    n_nonfinite = int((~fin).sum())
    keep[keep] = fin
    n_zero = 0
    if zero_a is not None:
        nz = ~zero_a[sv.idx_a[keep]] & ~zero_b[sv.idx_b[keep]]  # zero rows (e.g. padding): no direction
        n_zero = int((~nz).sum())
        keep[keep] = nz
    strings = [t for t, kp in zip(sv.strings, keep) if kp]
    return sv.idx_a[keep], sv.idx_b[keep], strings, {"zero": n_zero, "nonfinite": n_nonfinite, "range": n_range}


def _need_tokens(n: int, a: str, b: str, what: str):
    if n < 3:
        raise VerilensError(f"{a} and {b} share only {n} usable tokens for {what}: at least 3 are needed for a "
                            "correlation between distance matrices; compare models whose tokenizers overlap")


def _mantel_entry(Ea, Eb, metric, permutations, mantel_tokens, seed):
    V = Ea.shape[0]
    mt = V if mantel_tokens is None else min(V, mantel_tokens)
    if mt < V:
        sub = np.sort(np.random.default_rng(seed).choice(V, size=mt, replace=False))
        Ea, Eb = Ea[sub], Eb[sub]
    res = mantel(Ea, Eb, metric, permutations=permutations, seed=seed, zero_rows="skip")
    return {"tokens": int(res.n_tokens), "permutations": permutations, "r": res.r, "p_value": res.p_value,
            "method": res.method}


def _matrix_pair(Ea, Eb, strings, metric, *, k, permutations, mantel_tokens, seed) -> dict:
    info = distance_correlation(Ea, Eb, metric, zero_rows="skip", return_info=True)
    rho = distance_correlation(Ea, Eb, metric, rank=True, zero_rows="skip", seed=seed, sample_pairs=200_000)
    entry = {"tokens": len(strings), "pairs": info.n_pairs, "pearson_r": info.r, "spearman_rho_sampled": rho,
             "method": info.method, "backend": info.backend, "skipped_zero_rows_in_correlation": len(info.skipped_rows)}
    if permutations > 0:
        entry["mantel"] = _mantel_entry(Ea, Eb, metric, permutations, mantel_tokens, seed)
    lm = _local_metric(metric)
    loc_n = min(len(strings), 5000)
    sub = np.sort(np.random.default_rng(seed + 1).choice(len(strings), size=loc_n, replace=False))
    A_, B_ = _prep(Ea[sub], "E_a", lm), _prep(Eb[sub], "E_b", lm)
    kk = min(k, loc_n - 1)
    jac = jaccard_rows(_knn_prepped(A_, kk, lm, None)[0], _knn_prepped(B_, kk, lm, None)[0])
    lle = lle_agreement(Ea[sub], Eb[sub], k=kk, metric=lm)
    fwd = fit_map(Ea, Eb, alpha=1.0)
    entry["local"] = {"metric": lm, "tokens": loc_n, "k": kk, "knn_jaccard_mean": float(jac.mean()),
                      "knn_jaccard_median": float(np.median(jac)),
                      "knn_jaccard_random_baseline": kk / (loc_n - 1), **lle.summary()}
    # held out: with few shared tokens next to the width the fit-row R² is near 1 for any pair
    entry["emb2emb_r2"] = {"a_to_b": heldout_r2(Ea, Eb, alpha=1.0, seed=seed), "a_to_b_fit_rows": fwd.r2}
    entry["examples"] = _neighbour_examples(Ea, Eb, strings, k=5, seed=seed, metric=lm)
    return entry


def run_geometry(models, out, what="embed", metric: str = "cosine", max_tokens: int | None = None,
                 k: int = 10, permutations: int = 0, mantel_tokens: int | None = None, seed: int = 0,
                 progress: bool = True, skip_nonfinite_rows: bool = False, layers="all",
                 layer_match: str = "relative", context: str = "", batch_size: int = 256,
                 which: str | None = None) -> dict:
    """Compare the geometry of two or more models, every pair; returns the report dict.

    what: "embed", "unembed", "hidden", a comma list of them or "all". Tokens: each pair's
    full shared vocabulary; `max_tokens` samples that many (seeded) instead; `mantel_tokens`
    likewise for the Mantel test only (default: all). Hidden states: `layers` ("all" or
    "0,3,6" / "0-6", numbered in the shallower model of each pair), `layer_match`
    ("relative" or "index"), `context` (text between the start token and each token),
    `batch_size` (sequences per forward pass); see verilens.geometry.hidden.
    A matrix with NaN / inf rows is an error naming them unless `skip_nonfinite_rows`
    leaves those tokens out (counted on the console, in report.json and report.html).
    `which` is the old name of `what`."""
    if which is not None:
        what = which
    whats = parse_what(what)
    models = [str(m) for m in models]
    if len(models) < 2:
        raise VerilensError("name at least two models to compare")
    if len(set(models)) != len(models):
        raise VerilensError("a model is named twice; name each model once")
    if metric not in METRICS:
        raise VerilensError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if max_tokens is not None and max_tokens < 3:
        raise VerilensError("--max-tokens must be at least 3 (or leave it out: all shared tokens)")
    if mantel_tokens is not None and mantel_tokens < 3:
        raise VerilensError("--mantel-tokens must be at least 3 (or leave it out: all tokens)")
    if layer_match not in MATCHES:
        raise VerilensError(f"--layer-match must be one of {', '.join(MATCHES)}, not {layer_match!r}")
    if batch_size < 1:
        raise VerilensError("--batch-size must be at least 1")
    layer_list = parse_layers(layers) if "hidden" in whats else None
    check_out_folder(out)
    out = Path(out)

    def say(msg):
        if progress and dist.is_main():  # under torchrun rank 0 speaks for the job
            print(f"[verilens geometry] {msg}", flush=True)

    srcs = []
    for m in models:
        say(f"loading {m}")
        srcs.append(load_model_source(m))
    names = []
    for s in srcs:  # short, unique labels
        nm = Path(s.name).name or s.name
        base, c = nm, 2
        while nm in names:
            nm, c = f"{base} ({c})", c + 1
        names.append(nm)

    headless = [nm for s, nm in zip(srcs, names) if not s.has_lm_head]
    if whats == ["unembed"] and len(srcs) - len(headless) < 2:
        raise VerilensError(f"--what unembed: {', '.join(headless)} has no LM head (an encoder: no unembedding "
                            "matrix), so no pair can be compared; use --what embed or --what hidden, or add models "
                            "with an LM head")
    plans = {}
    if "hidden" in whats:  # every layer request checked before any heavy work
        for i, j in combinations(range(len(srcs)), 2):
            plans[i, j] = layer_plan(srcs[i], srcs[j], layer_list, layer_match, (names[i], names[j]))

    mat_whats = [w for w in whats if w in MATRIX_WHATS]
    # the embedding rows also decide which tokens the hidden-state curve uses
    need = set(mat_whats) | ({"embed"} if "hidden" in whats else set())
    mats, bad_rows, zero_rows = {}, {}, {}
    for s, nm in zip(srcs, names):
        for w in sorted(need):
            if w == "unembed" and not s.has_lm_head:
                continue
            M = s.matrix(w)
            bad = np.flatnonzero(~np.isfinite(M.numpy()).all(1))
            if len(bad) and not skip_nonfinite_rows:
                shown = ", ".join(str(int(r)) for r in bad[:10]) + (f", ... ({len(bad)} in all)" if len(bad) > 10 else "")
                raise VerilensError(f"{s.name}: {len(bad)} rows of its {w} matrix hold NaN or inf (rows {shown}); "
                                    "repair the checkpoint, or pass --skip-nonfinite-rows to leave those tokens out "
                                    "(counted)")
            if len(bad):
                say(f"  WARNING: {len(bad)} rows of {s.name}'s {w} matrix hold NaN or inf: those tokens are left out")
            mats[nm, w], bad_rows[nm, w] = M, bad
            zero_rows[nm, w] = torch_norm_zero(M)
    lm = _local_metric(metric)

    model_info = []
    for s, nm in zip(srcs, names):
        info = {"name": nm, "source": s.source, "kind": s.kind, "blocks": s.n_layers,
                "lm_head": s.has_lm_head}
        for w in mat_whats:
            if (nm, w) not in mats:
                info[w] = {"available": False, "reason": "no LM head (an encoder): no unembedding matrix"}
                continue
            M = mats[nm, w]
            V = M.shape[0]
            usable = np.flatnonzero(np.isfinite(M.numpy()).all(1) & ~zero_rows[nm, w])
            sample = np.random.default_rng(seed).choice(usable, size=min(len(usable), max_tokens or V, 10000),
                                                        replace=False)
            idim = intrinsic_dimension(M[np.sort(sample)], k=min(max(3, 2 * k), len(sample) - 1), metric=lm)
            info[w] = {"available": True, "vocab_rows": V, "dim": int(M.shape[1]),
                       "nonfinite_rows": int(len(bad_rows[nm, w])),
                       "intrinsic_dimension": {"estimator": "Levina-Bickel MLE (MacKay-Ghahramani pooled)",
                                               "metric": lm, "k": idim.k, "global": idim.global_mle,
                                               "median_per_token": float(np.nanmedian(idim.per_token)),
                                               "tokens": int(len(sample)), "undefined": idim.undefined}}
        model_info.append(info)

    n = len(srcs)
    R = {w: np.eye(n) for w in mat_whats}
    pairs = []
    for i, j in combinations(range(n), 2):
        a, b, na, nb = srcs[i], srcs[j], names[i], names[j]
        t0 = time.time()
        sv = shared_vocab(a.tokenizer, b.tokenizer, max_tokens=max_tokens, seed=seed)
        entry = {"a": na, "b": nb, "shared_vocab": sv.stats}
        say(f"{na} vs {nb}: {len(sv.strings)} shared tokens")
        for w in mat_whats:
            if (na, w) not in mats or (nb, w) not in mats:
                missing = [x for x in (na, nb) if (x, w) not in mats]
                entry[w] = {"available": False,
                            "reason": f"{' and '.join(missing)} has no LM head (an encoder): no unembedding matrix"}
                R[w][i, j] = R[w][j, i] = np.nan
                say(f"  {w}: not available ({entry[w]['reason']})")
                continue
            Ma, Mb = mats[na, w], mats[nb, w]
            ia, ib, strings, cnt = _align(sv, Ma.shape[0], Mb.shape[0], bad_rows[na, w], bad_rows[nb, w],
                                          zero_rows[na, w], zero_rows[nb, w])
            if cnt["zero"] or cnt["nonfinite"] or cnt["range"]:
                say(f"  {w}: left out {cnt['zero']} zero rows, {cnt['nonfinite']} NaN/inf rows, {cnt['range']} "
                    "tokens past a matrix's rows")
            _need_tokens(len(strings), na, nb, w)
            e = _matrix_pair(Ma[ia], Mb[ib], strings, metric, k=k, permutations=permutations,
                             mantel_tokens=mantel_tokens, seed=seed)
            e.update({"available": True, "skipped_zero_rows": cnt["zero"] + e.pop("skipped_zero_rows_in_correlation"),
                      "skipped_nonfinite_rows": cnt["nonfinite"], "skipped_out_of_range": cnt["range"]})
            entry[w] = e
            R[w][i, j] = R[w][j, i] = e["pearson_r"]
            mtxt = f", Mantel p = {e['mantel']['p_value']:.3g}" if "mantel" in e else ""
            say(f"  {w}: r = {e['pearson_r']:.4f}{mtxt}, Spearman (sampled) = {e['spearman_rho_sampled']:.4f}, "
                f"kNN Jaccard@{e['local']['k']} = {e['local']['knn_jaccard_mean']:.3f} ({len(strings)} tokens)")
        if "hidden" in whats:
            entry["hidden"] = _hidden_pair(a, b, na, nb, sv, mats, bad_rows, zero_rows, plans[i, j], metric,
                                           permutations=permutations, mantel_tokens=mantel_tokens, seed=seed,
                                           context=context, batch_size=batch_size, layer_match=layer_match, say=say)
        entry["seconds"] = round(time.time() - t0, 2)
        pairs.append(entry)

    report = {"what": whats, "metric": metric, "max_tokens": max_tokens, "mantel_tokens": mantel_tokens,
              "permutations": permutations, "k": k, "seed": seed, "models": model_info, "pairs": pairs,
              "matrix": {"names": names, **{w: [[None if not np.isfinite(x) else float(x) for x in row]
                                                for row in R[w]] for w in mat_whats}}}
    if "hidden" in whats:
        report["hidden"] = {"layers": layers if isinstance(layers, str) else list(layers), "layer_match": layer_match,
                            "context": context, "batch_size": batch_size,
                            "input": "[start] + context + [token] (causal LMs: start = BOS, else EOS; read at the "
                                     "token) / [CLS] + context + [token] + [SEP] (encoders)"}
    if not dist.is_main():  # under torchrun rank 0 alone writes the report
        return report
    out.mkdir(parents=True, exist_ok=True)
    pngs = {}
    if mat_whats:
        pngs["heatmap.png"] = _heatmaps_png(names, {w: R[w] for w in mat_whats}, metric)
    if "hidden" in whats:
        pngs["layers.png"] = _layers_png(pairs, metric)
    for fname, png in pngs.items():
        _atomic_write(out / fname, png)
    _atomic_write(out / "report.json", json.dumps(report, indent=2, default=float).encode())
    _atomic_write(out / "report.html", _html(report, pngs).encode())
    say(f"wrote {', '.join(str(out / f) for f in [*pngs, 'report.json', 'report.html'])}")
    return report


def torch_norm_zero(M) -> np.ndarray:
    """Rows of zero norm (no direction under the cosine metric)."""
    return (M.norm(dim=1) == 0).numpy()


def _hidden_pair(a, b, na, nb, sv, mats, bad_rows, zero_rows, plan, metric, *, permutations, mantel_tokens, seed,
                 context, batch_size, layer_match, say) -> dict:
    """The per-layer curve of one pair (module doc of verilens.geometry.hidden)."""
    Ma, Mb = mats[na, "embed"], mats[nb, "embed"]
    ia, ib, strings, cnt = _align(sv, Ma.shape[0], Mb.shape[0], bad_rows[na, "embed"], bad_rows[nb, "embed"],
                                  zero_rows[na, "embed"], zero_rows[nb, "embed"])
    _need_tokens(len(strings), na, nb, "hidden")
    La, Lb = a.n_layers, b.n_layers
    Ls = min(La, Lb)
    rows = []
    t0 = time.time()
    with Scratch() as tmp:
        say(f"  hidden: {len(strings)} tokens through {na} ({len(set(p[0] for p in plan))} layers) and {nb} "
            f"({len(set(p[1] for p in plan))} layers)")
        Ha = hidden_states(a, ia, [p[0] for p in plan], context=context, batch_size=batch_size, folder=tmp, say=say)
        Hb = hidden_states(b, ib, [p[1] for p in plan], context=context, batch_size=batch_size, folder=tmp, say=say)
        fwd_s = round(time.time() - t0, 2)
        for la, lb in plan:
            X, Y = Ha[la], Hb[lb]
            info = distance_correlation(X, Y, metric, zero_rows="skip", return_info=True)
            row = {"layer_a": la, "layer_b": lb, "depth": (la if La <= Lb else lb) / Ls if Ls else 0.0,
                   "r": info.r, "method": info.method, "tokens": info.n_tokens, "pairs": info.n_pairs,
                   "mean_cosine_a": mean_cosine(X), "mean_cosine_b": mean_cosine(Y)}
            if permutations > 0:
                row["mantel"] = _mantel_entry(X, Y, metric, permutations, mantel_tokens, seed)
            rows.append(row)
            del X, Y  # unmapped: one layer pair in the process at a time
            mtxt = f", Mantel p = {row['mantel']['p_value']:.3g}" if "mantel" in row else ""
            say(f"  hidden: layer {la} of {na} vs layer {lb} of {nb}: r = {info.r:.4f}{mtxt}")
        del Ha, Hb
    return {"tokens": len(strings), "layer_match": layer_match, "blocks": {"a": La, "b": Lb},
            "skipped_zero_rows": cnt["zero"], "skipped_nonfinite_rows": cnt["nonfinite"],
            "skipped_out_of_range": cnt["range"], "forward_seconds": fwd_s, "layers": rows}


def _html(report: dict, pngs: dict) -> str:
    e = html.escape

    def tok(s):
        return "<code>" + e(repr(s)[1:-1]) + "</code>"

    def img(fname, alt):
        return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(pngs[fname]).decode()}">'

    mat_whats = [w for w in report["what"] if w in MATRIX_WHATS]
    sections = []
    for w in mat_whats:
        rows = []
        for p in report["pairs"]:
            x = p[w]
            if not x.get("available"):
                rows.append(f"<tr><td>{e(p['a'])}</td><td>{e(p['b'])}</td><td colspan=9>not available: "
                            f"{e(x['reason'])}</td></tr>")
                continue
            m = x.get("mantel")
            loc = x["local"]
            mtxt = "" if not m else f"{m['p_value']:.3g} ({m['permutations']} perm., {m['tokens']} tokens)"
            rows.append(
                f"<tr><td>{e(p['a'])}</td><td>{e(p['b'])}</td><td>{x['tokens']}</td><td>{x['pearson_r']:.4f}</td>"
                f"<td>{e(x['method'])}</td><td>{x['spearman_rho_sampled']:.4f}</td><td>{mtxt}</td>"
                f"<td>{loc['knn_jaccard_mean']:.3f} (chance {loc['knn_jaccard_random_baseline']:.4f})</td>"
                f"<td>{loc['weight_cosine_mean']:.3f}</td><td>{x['emb2emb_r2']['a_to_b']:.3f}</td>"
                f"<td>{x['skipped_zero_rows']} / {x['skipped_nonfinite_rows']}</td></tr>")
        mrows = "".join(
            f"<tr><td>{e(m['name'])}</td><td>{m[w]['vocab_rows']}</td><td>{m[w]['dim']}</td>"
            f"<td>{m[w]['intrinsic_dimension']['global']:.2f}</td>"
            f"<td>{m[w]['intrinsic_dimension']['median_per_token']:.2f}</td></tr>"
            if m[w].get("available") else f"<tr><td>{e(m['name'])}</td><td colspan=4>{e(m[w]['reason'])}</td></tr>"
            for m in report["models"])
        ex = []
        for p in report["pairs"]:
            if not p[w].get("available"):
                continue
            lines = "".join(
                f"<tr><td>{tok(x['token'])}</td><td>{' '.join(tok(t) for t in x['a'])}</td>"
                f"<td>{' '.join(tok(t) for t in x['b'])}</td></tr>" for x in p[w]["examples"])
            ex.append(f"<h4>{e(p['a'])} vs {e(p['b'])}</h4><table><tr><th>token</th><th>neighbours in {e(p['a'])}"
                      f"</th><th>neighbours in {e(p['b'])}</th></tr>{lines}</table>")
        sections.append(
            f"<h2>{e(w)}: {'input embeddings' if w == 'embed' else 'unembeddings (LM head rows)'}</h2>"
            f"<table><tr><th>A</th><th>B</th><th>tokens</th><th>Pearson r</th><th>method</th><th>Spearman rho</th>"
            f"<th>Mantel p</th><th>kNN Jaccard@{report['k']}</th><th>LLE weight cosine</th>"
            f"<th>Emb2Emb R² (held out)</th><th>left out: zero / NaN-inf rows</th></tr>{''.join(rows)}</table>"
            f"<h3>Models</h3><table><tr><th>model</th><th>rows</th><th>dim</th><th>intrinsic dim. (pooled)</th>"
            f"<th>median per token</th></tr>{mrows}</table>"
            f"<details><summary>Nearest neighbours</summary>{''.join(ex)}</details>")
    hidden = ""
    if "hidden" in report["what"]:
        hrows = []
        for p in report["pairs"]:
            h = p["hidden"]
            for row in h["layers"]:
                m = row.get("mantel")
                mtxt = "" if not m else f"{m['p_value']:.3g} ({m['permutations']} perm., {m['tokens']} tokens)"
                hrows.append(f"<tr><td>{e(p['a'])}</td><td>{e(p['b'])}</td><td>{row['layer_a']}</td>"
                             f"<td>{row['layer_b']}</td><td>{row['depth']:.3f}</td><td>{row['tokens']}</td>"
                             f"<td>{row['r']:.4f}</td><td>{e(row['method'])}</td><td>{mtxt}</td>"
                             f"<td>{row['mean_cosine_a']:.3f} / {row['mean_cosine_b']:.3f}</td></tr>")
        hcfg = report["hidden"]
        hidden = (f"<h2>hidden: geometry by layer</h2><p>Each shared token in a fixed context: "
                  f"{e(hcfg['input'])}; context {e(repr(hcfg['context']))}. Layer 0 = the embedding output, layer l = "
                  f"the output of block l; layers matched by {e(hcfg['layer_match'])} depth.</p>"
                  f"{img('layers.png', 'r by layer')}"
                  f"<table><tr><th>A</th><th>B</th><th>layer of A</th><th>layer of B</th><th>depth</th><th>tokens</th>"
                  f"<th>Pearson r</th><th>method</th><th>Mantel p</th><th>mean cosine A / B (anisotropy)</th></tr>"
                  f"{''.join(hrows)}</table>")
    heat = img("heatmap.png", "correlation heatmap") if "heatmap.png" in pngs else ""
    cap = "all shared tokens" if report["max_tokens"] is None else f"sampled to at most {report['max_tokens']}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>verilens geometry</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:14px}}th{{background:#f3f3f3}}code{{background:#f6f6f6}}</style>
</head><body><h1>Geometry across models</h1>
<p>Compared: <b>{e(', '.join(report['what']))}</b>; distance: <b>{e(report['metric'])}</b>; tokens per pair: {cap}.
Pearson r is over all token pairs of the shared set (exact: closed form, or every pair streamed);
Spearman's rho on a sample of pairs; Mantel p one-sided, (1 + #{{r_perm &gt;= r}}) / (1 + permutations).</p>
{heat}{''.join(sections)}{hidden}
</body></html>"""
