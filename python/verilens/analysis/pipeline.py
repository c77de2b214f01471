"""`verilens analyze`: the whole self-verification analysis of PAPER.md, model -> report.

Steps (each cached in DIR/cache, so an interrupted run resumes where it stopped):
 1. traces      greedy generations, parsed; verdict sites of those with both verdicts
 2. probes      one 2-way probe per layer on resid_post at the verdict sites
 3. glu         GLU value vectors aligned with the probe (variants A and B)
 4. lens        logit lens of the probe class vectors and the top GLU value vectors
 5. heads       previous-token heads (attention to the target from correct attempts)
 6. channel     channel scores of every head for the variant-B neurons
 7. interventions  the paper's protocol: none / GLU / heads / random heads
 8. subspace    project the probe out (correct attempts), steer along it (wrong ones)
Then DIR/report.json, DIR/figures/*.png and DIR/report.html (verilens.analysis.report).

Defaults scale the paper's choices for a 36-layer Qwen2.5-3B to the model's depth and
width; `Settings.paper()` is the authors' exact choices.

Under torchrun (`torchrun --nproc_per_node N -m verilens analyze ...`) the sweeps are split
across the ranks (analysis/sweep.py): traces by batch of problems, the verdict activations
by batch of traces, interventions and the subspace's projection and steering by (batch of
contexts, condition); rank 0 does the rest, gathers, and writes the report. The numbers are
those of one process with the same settings (docs/scale.md)."""
from __future__ import annotations

import random
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .. import dist
from ..countdown import generate_problems, load_problems
from ..errors import VerilensError
from ..hooks import interventions as iv
from . import attribution, channel, glu, heads, lens, outcomes, probes, sweep
from .rundir import RunDir
from .traces import Site, Trace, check_sites, correct_contexts, make_prompt, verdict_sites, wrong_contexts

PAPER_LAYERS = 36  # Qwen2.5-3B: the depth the paper's layer choices refer to
PAPER_D_MLP = 11008


@dataclass
class Settings:
    """Every choice of an analysis run (written into report.json). None = scaled default."""

    n: int = 200  # problems to generate traces for
    seed: int = 0
    template: str = "base"  # "base" | "qwen-instruct" | "icl" (in-context examples, for general models)
    shots: int = 3  # solved examples in an "icl" prompt
    max_new_tokens: int = 400
    batch_size: int = 32
    glu_layers: list | None = None  # variant A/B layer range; default: the upper half (18..35 of 36)
    glu_top_k: int | None = None  # per layer; paper 50 of 11008, scaled by d_mlp (at least 8)
    glu_top_n: int | None = None  # variant B pool size; paper 200, scaled by the number of neurons (at least 16)
    head_threshold: float = 0.1
    head_top: int = 50
    top_k_heads: int = 3
    random_seeds: int = 30  # sets either hold a head the verdict needs or not: the mean needs many (demo)
    n_contexts: int = 300
    # each random head set is scored on the first of the contexts only: a set either holds a head the
    # verdict needs or not (its rate near 0 or 1), so the mean's error is the spread between sets
    random_contexts: int = 64
    intervention_tokens: int = 100
    project_layers: list | None = None  # default: the upper half
    steer_layers: list | None = None  # default: the paper's 24..35 of 36, scaled
    steer_alphas: list | None = None  # default: 1x, 2x and 4x the sites' class gap along the valid vector (valid_gap)
    partial: bool = False  # score a fourth outcome, "partial", for general reasoning models
    paper_settings: bool = False

    @classmethod
    def paper(cls, **kw) -> "Settings":
        """The authors' exact choices. Their layer ranges (GLU 18..35, steering 24..35 of
        Qwen2.5-3B's 36) are left to `resolved`, which scales them with depth exactly as the
        defaults do: on a 36-layer model they are the authors' lists, and any other depth gets
        the same fractions instead of an out-of-range error."""
        # the authors' code (docs/analysis.md, "--paper-settings"): traces of 200 tokens (src/probe.py
        # max_response_length); continuations of 30 tokens: run() says 100, but every continuation
        # their notebook prints, from which the published table comes, is 30 tokens long
        base = dict(glu_top_k=50, glu_top_n=200, head_threshold=0.1, head_top=50, top_k_heads=3, n_contexts=300,
                    max_new_tokens=200, intervention_tokens=30, steer_alphas=[20.0], paper_settings=True)
        return cls(**{**base, **kw})

    def resolved(self, model) -> "Settings":
        """A copy with every None replaced by its default for `model`."""
        L, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
        if self.template not in ("base", "qwen-instruct", "icl"):
            raise VerilensError(f"template must be base, qwen-instruct or icl, not {self.template!r}")
        s = Settings(**asdict(self))
        if s.random_contexts < 1:
            raise VerilensError(f"random_contexts must be at least 1, not {s.random_contexts}")
        s.glu_layers = s.glu_layers if s.glu_layers is not None else glu.upper_half(L)
        s.glu_top_k = s.glu_top_k or max(8, round(50 * d_mlp / PAPER_D_MLP))
        s.glu_top_n = s.glu_top_n or max(16, round(200 * L * d_mlp / (PAPER_LAYERS * PAPER_D_MLP)))
        s.project_layers = s.project_layers if s.project_layers is not None else glu.upper_half(L)
        s.steer_layers = s.steer_layers if s.steer_layers is not None else list(range(round(L * 24 / 36), L))
        for name in ("glu_layers", "project_layers", "steer_layers"):
            bad = [l for l in getattr(s, name) if not 0 <= l < L]
            if bad:
                raise VerilensError(f"{name}: layers {bad} out of range for a {L}-layer model")
        return s



def _pooled(tables):
    """The random sets' tables of one rule as one: mean fractions, summed counts."""
    kinds = list(dict.fromkeys(k for t in tables for k in t["counts"]))  # a set may lack "unknown" or "partial"
    return {**{k: sum(t.get(k, 0.0) for t in tables) / len(tables) for k in kinds},
            "counts": {k: sum(t["counts"].get(k, 0) for t in tables) for k in kinds}, "n": sum(t["n"] for t in tables)}


def _mean(values):
    """Mean of the known values (None where there are none)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _versions() -> dict:
    from importlib.metadata import version

    from .. import __version__

    return {"verilens": __version__, "torch": torch.__version__, "transformers": version("transformers")}


def _problems(settings: Settings, problems_file, on_bad_row: str):
    if problems_file is None:
        return generate_problems(settings.n, seed=settings.seed, split="test")
    probs = load_problems(problems_file, on_bad_row=on_bad_row)
    rng = random.Random(settings.seed)
    return rng.sample(probs, min(settings.n, len(probs)))


def analyze(model, out, settings: Settings | None = None, problems_file=None, on_bad_row: str = "skip",
            probe_file=None, resume: bool = False, force: bool = False, progress: bool = True, log=print,
            compare=()) -> dict:
    """Run the analysis of `model` (a HookedModel) into `out`; returns the report dict.

    `probe_file`: use this probe ([n_layers, d_model, 2], e.g. the authors' released one)
    instead of training one; its accuracy on this run's verdict sites is reported.
    `compare`: folders (or report.json files) of other finished runs, whose probe accuracy
    and intervention rates report.html shows beside this run's (report.json's "compare").
    They change no number of this run, so a finished run resumed with other ones only
    writes its report again."""
    from .report import comparison, write_report

    if not model.cfg.gated_mlp:
        raise VerilensError(f"{model.name} has no GLU MLP (gate_proj/up_proj/down_proj); the analysis needs one")
    if dist.launched() and not dist.active():  # called from a script under torchrun (the CLI starts it earlier)
        dist.init(cuda=torch.device(model.device).type == "cuda")
    settings, given_probe = dist.agree(lambda: (  # the probe's shape is checked first
        (settings or Settings()).resolved(model),
        probes.load_probe(probe_file, model) if probe_file is not None else None), what="could not start")
    if settings.paper_settings and given_probe is None:  # their probe training's minimum, before any trace
        probes.online_split(settings.n, seed=settings.seed)
    others = dist.agree(lambda: [comparison(p) for p in compare], what="could not start")
    settings_json = {"model": model.name, "probe_file": None if probe_file is None else str(Path(probe_file).resolve()),
                     **asdict(settings)}
    _check_ranks(settings_json, settings, problems_file, probe_file)
    run = RunDir(out, settings_json, resume=resume, force=force)
    times = {}
    torch.manual_seed(settings.seed)
    main = dist.is_main()
    if not main:  # rank 0 speaks for the job
        progress, log = False, (lambda msg: None)

    def timed(name, fn, split=False):
        t0 = time.perf_counter()
        log(f"[verilens] {name} ...")
        r = run.step(name, fn, split=split)
        times[name] = round(time.perf_counter() - t0, 2)
        return r

    # 1. traces
    def step_traces():
        problems = _problems(settings, problems_file, on_bad_row)
        prompts = [make_prompt(p, settings.template, settings.shots) for p in problems]
        # the authors' code decodes without the format rule (countdown.decoding)
        gens = sweep.generate(run, "traces", model, prompts, settings.max_new_tokens, settings.batch_size, progress,
                              format_rules=not settings.paper_settings)
        return [Trace(p, pr, g).to_dict() for p, pr, g in zip(problems, prompts, gens)]

    traces = [Trace.from_dict(d) for d in timed("traces", step_traces, split=True)]
    sites = [Site(**d) for d in timed("sites", lambda: [asdict(s) for s in verdict_sites(model, traces)])]
    check_sites(sites, traces)
    trace_stats = _trace_stats(traces, sites)

    # 2. probes. The paper's text reads the verdict at " ("; the authors' src/probe.py records
    # activations during generate() and indexes them one position off, so their probe (and with
    # it their GLU selection and steering) reads the token before " (": --paper-settings uses
    # that one. Both accuracies are reported either way.
    before_marker = settings.paper_settings

    def step_probes():
        # the verdict tokens and, for the probes one token earlier (the claimed value's last
        # token: a model may compute the verdict there and move it to " (" only in its last
        # layers), the tokens before them, in one pass over the traces
        before = [replace(s, token=s.token - 1) for s in sites]
        both = sweep.site_activations(run, "probes", model, traces, sites + before,
                                      batch_size=max(1, settings.batch_size // 2), progress=progress)
        # one training, on rank 0 (the activations are gathered there only)
        return dist.on_main(lambda: train(both[: len(sites)], both[len(sites):]))

    def train(acts, acts_b):
        labels = torch.tensor([s.label for s in sites])
        gen = torch.tensor([s.trace for s in sites])
        if given_probe is not None:
            acc, acc_b = [(torch.einsum("nld,ldc->nlc", x, given_probe).argmax(-1) == labels[:, None]).float().mean(0)
                          for x in (acts, acts_b)]
            return {"W": given_probe, "val_accuracy": acc, "train_accuracy": acc_b if before_marker else acc,
                    "valid_gap": valid_gap(given_probe, acts_b if before_marker else acts, labels),
                    "n_train": torch.tensor(0),
                    "n_val": torch.tensor(len(gen.unique())), "val_accuracy_before": acc_b}
        if settings.paper_settings:  # their src/probe.py loop (probes.train_probes_online)
            res, res_b = [probes.train_probes_online(x, labels, gen, len(traces), seed=settings.seed)
                          for x in (acts, acts_b)]
            if res.steps < 50:  # their lr (1e-4) moves a probe little per step; their runs make thousands
                warnings.warn(f"the authors' probe training made {res.steps} steps on {len(traces)} problems (one per "
                              f"batch of 128 after 256 for validation): the probe is still near its random start; "
                              f"use a few thousand problems (--n; --n-problems under torchrun) for a trained one")
        else:
            res, res_b = [probes.train_probes(x, labels, gen, seed=settings.seed) for x in (acts, acts_b)]
        used = res_b if before_marker else res
        return {"W": used.W, "val_accuracy": torch.tensor(res.val_accuracy),
                "train_accuracy": torch.tensor(used.train_accuracy),
                "valid_gap": valid_gap(used.W, acts_b if before_marker else acts, labels),
                "n_train": torch.tensor(res.n_train), "n_val": torch.tensor(res.n_val),
                "val_accuracy_before": torch.tensor(res_b.val_accuracy)}

    pr = timed("probes", step_probes, split=True)
    W = pr["W"]
    if main:
        probes.save_probe(W, run.out / "probe.pt")
    class_cos = torch.nn.functional.cosine_similarity(W[:, :, 0], W[:, :, 1], dim=-1)

    # 3. GLU selection
    def step_glu():
        a_valid = glu.select_variant_a(model, W, settings.glu_layers, 1, settings.glu_top_k)
        a_invalid = glu.select_variant_a(model, W, settings.glu_layers, 0, settings.glu_top_k)
        b = glu.select_variant_b(model, W, settings.glu_layers, 1, settings.glu_top_k, settings.glu_top_n)
        return {"glu_valid": a_valid, "glu_invalid": a_invalid, "variant_b": b}

    sel = timed("glu", step_glu)
    glu_valid = [tuple(x) for x in sel["glu_valid"]]
    glu_invalid = [tuple(x) for x in sel["glu_invalid"]]
    variant_b = [(l, i) for l, i, _ in sel["variant_b"]]

    # 4. logit lens
    def step_lens():
        Lp = settings.glu_layers[-1]  # the last layer of the range reads closest to the output
        out = {"layer": Lp, "probe_valid": lens.top_tokens(model, W[Lp, :, 1]),
               "probe_invalid": lens.top_tokens(model, W[Lp, :, 0]), "neurons": []}
        for l, i, c in sel["variant_b"][:5]:
            v = model.layer_weights(l)["W_out"][i].float()  # neuron i's value vector
            out["neurons"].append({"neuron": [l, i], "cosine": c, **lens.top_tokens(model, v, k=10)})
        return out

    lens_res = timed("lens", step_lens)

    # 5. previous-token heads
    contexts = correct_contexts(traces, settings.n_contexts)
    if not contexts:
        raise VerilensError("no accepted attempt hits the target: no context for the heads and interventions")

    def step_heads():
        dens = heads.target_attention_density(model, [c for c, _ in contexts], [t for _, t in contexts],
                                              batch_size=max(1, settings.batch_size // 2),
                                              keys="last" if settings.paper_settings else "all")
        return {"density": dens}

    density = timed("heads", step_heads)["density"]
    prev_heads = heads.select_heads(density, settings.head_threshold, settings.head_top)

    # 6. channel scores
    def step_channel():
        return {"paper": channel.channel_scores(model, variant_b, "paper"),
                "composition": channel.channel_scores(model, variant_b, "composition")}

    ch = timed("channel", step_channel)
    pool = prev_heads or [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    ranked = sorted(pool, key=lambda lh: -float(ch["paper"][lh[0], lh[1]]))
    top_heads = ranked[: settings.top_k_heads]
    random_sets = _random_head_sets(model, prev_heads, settings)

    # 7. interventions; outcomes are scored by both rules, the run's rule first (outcomes.py)
    rule, stop = ("authors", "authors") if settings.paper_settings else ("verilens", "text")
    ctx_texts = [c for c, _ in contexts]
    conditions = {
        "none": [],
        "glu_valid": [iv.ablate_neurons(glu_valid, positions="last")],
        "glu_valid_invalid": [iv.ablate_neurons(glu_valid + glu_invalid, positions="last")],
        "prev_token_heads": [iv.ablate_heads(prev_heads)] if prev_heads else None,
        f"top{settings.top_k_heads}_heads": [iv.ablate_heads(top_heads)],
    }
    for k, hs in enumerate(random_sets):
        conditions[f"random_heads_{k}"] = [iv.ablate_heads(hs)]

    def step_interventions():
        conds = {k: v for k, v in conditions.items() if v is not None and not k.startswith("random_heads_")}
        rand = {k: v for k, v in conditions.items() if k.startswith("random_heads_")}
        sweeps = {"": (ctx_texts, conds, settings.partial, rule, "outcome")}
        if rand:  # with "none" on the same contexts: the sets' activation drops are against it
            sweeps["random"] = (ctx_texts[: settings.random_contexts], {"none": [], **rand}, settings.partial, rule,
                                "outcome")
        done = sweep.conditions(run, "interventions", model, sweeps, settings.intervention_tokens,
                                settings.batch_size, neurons=variant_b, stop=stop, progress=progress)
        res = {}
        for label, runs in done.items():
            for name, (table, conts) in runs.items():
                if label and name == "none":
                    continue
                table["neuron_activation_drop"] = outcomes.activation_drop(runs["none"][0]["neuron_activation"],
                                                                           table["neuron_activation"])
                table["examples"] = conts[:3]
                res[name] = table
        return res

    inter = timed("interventions", step_interventions, split=True)
    # which components write the verdict on these contexts (attention or GLU neurons)
    attr = timed("attribution", lambda: attribution.verdict_attribution(model, ctx_texts))
    rand = [v for k, v in inter.items() if k.startswith("random_heads_")]
    if rand:
        inter["random_heads"] = {**_pooled(rand), "seeds": len(rand), "contexts": rand[0]["n"],
                                 # a set either holds a head the verdict needs or not, so the sets'
                                 # rates are near 0 or near 1 and their mean needs many sets
                                 "success_sem": (torch.tensor([r["success"] for r in rand]).std().item()
                                                 / len(rand) ** 0.5 if len(rand) > 1 else None),
                                 "neuron_activation_drop": _mean([r["neuron_activation_drop"] for r in rand]),
                                 "rule": rule, "by_rule": {name: _pooled([r["by_rule"][name] for r in rand])
                                                           for name in outcomes.RULES}}

    # 8. the subspace, causally
    def step_subspace():
        dirs = {l: W[l].T for l in settings.project_layers}  # both class vectors of each layer
        wrong = [c for c, _ in wrong_contexts(traces, settings.n_contexts)]
        gap = float(pr["valid_gap"][settings.steer_layers].mean())
        alphas = settings.steer_alphas or [round(f * gap, 3) for f in (1.0, 2.0, 4.0)]
        vec = {l: W[l, :, 1] / W[l, :, 1].norm() for l in settings.steer_layers}
        # at the " (" token only, on the steps whose last input is " (" (the paper's "on ' (' tokens")
        steered = {"baseline": [], **{str(a): [iv.steer(vec, settings.steer_layers, alpha=a, positions="last")]
                                      for a in alphas}}
        both = {"projection": (ctx_texts, {"condition": [iv.project_out(dirs, settings.project_layers)]},
                               settings.partial, rule, "outcome")}
        if wrong:  # accepted or not: the first verdict decides (outcomes.accepted_rate)
            both["steering"] = (wrong, steered, False, rule, "verdict")
        done = sweep.conditions(run, "subspace", model, both, settings.intervention_tokens, settings.batch_size,
                                stop=stop, progress=progress)
        proj, _ = done["projection"]["condition"]
        runs = done["steering"] if wrong else {k: (None, []) for k in steered}
        rate = {k: outcomes.accepted_rate(conts, rule) for k, (_, conts) in runs.items()}
        return {"projection": {"layers": settings.project_layers, **proj},
                "steering": {"layers": settings.steer_layers, "valid_gap": gap, "baseline_accepted": rate.pop("baseline"),
                             "n": len(wrong), "by_alpha": {a: {"accepted": r, "n": len(wrong)} for a, r in rate.items()}}}

    sub = timed("subspace", step_subspace, split=True)

    report = {
        "model": {"name": model.name, "source": model.source, **asdict(model.cfg)},
        "settings": asdict(settings),
        "versions": _versions(),
        "traces": trace_stats,
        "probe_accuracy": [float(x) for x in pr["val_accuracy"]],
        "probe_train_accuracy": [float(x) for x in pr["train_accuracy"]],
        # validation accuracy of probes trained on the token before " (" (the claim's last token)
        "probe_accuracy_before_marker": [float(x) for x in pr["val_accuracy_before"]] if "val_accuracy_before" in pr
        else None,
        # which of the two probes probe.pt holds and the GLU selection, projection and steering use
        "probe_position": "before_marker" if before_marker else "marker",
        "probe_class_cosine": [float(x) for x in class_cos],
        "probe_generations": {"train": int(pr["n_train"]), "val": int(pr["n_val"])},
        "glu": {"glu_valid": glu_valid, "glu_invalid": glu_invalid, "variant_b": sel["variant_b"]},
        "logit_lens": lens_res,
        "heads": {"density": density.tolist(), "prev_token_heads": prev_heads,
                  "channel_scores": ch["paper"].tolist(), "composition_scores": ch["composition"].tolist(),
                  "top_heads": top_heads, "random_head_sets": random_sets},
        "n_contexts": len(ctx_texts),
        "interventions": inter,
        "verdict_attribution": attr,
        "subspace": sub,
        "seconds": times,
        "compare": others,
    }
    if main:
        write_report(report, run.out)
    dist.barrier()  # every rank ends after the report is written
    return report


def _check_ranks(settings_json, settings, problems_file, probe_file) -> None:
    """Under torchrun: the same settings and input files on every rank, and no more ranks
    than the largest sweep has units (each rank must have work in some step); else the same
    clear error on every rank, before anything is written."""
    if not dist.active():
        return
    import hashlib

    def digest(path):
        return None if path is None else hashlib.sha256(open(path, "rb").read()).hexdigest()

    dist.check_same({**settings_json, "problems_file": digest(problems_file), "probe_file": digest(probe_file),
                     "verilens": _versions()["verilens"]}, "settings")

    def ceil(a, b):
        return -(-a // b)

    batches = ceil(settings.n_contexts, settings.batch_size)  # of contexts, correct or wrong
    random_batches = ceil(min(settings.n_contexts, settings.random_contexts), settings.batch_size)
    most = max(ceil(settings.n, settings.batch_size),  # traces
               ceil(settings.n, max(1, settings.batch_size // 2)),  # verdict activations
               batches * 5 + random_batches * (1 + settings.random_seeds) * bool(settings.random_seeds),  # interventions
               batches * (2 + len(settings.steer_alphas or (1, 2, 4))))  # projection, steering and its baseline
    if dist.world_size() > most:
        raise VerilensError(f"{dist.world_size()} ranks but at most {most} work units in any step of this run "
                            f"(--n-problems {settings.n}, --n-contexts {settings.n_contexts}, --batch-size "
                            f"{settings.batch_size}, {settings.random_seeds} random head sets): use at most {most} "
                            "processes (--nproc_per_node x nodes), or a smaller --batch-size")


def _trace_stats(traces, sites) -> dict:
    n_parsed = sum(bool(t.attempts) for t in traces)
    kept = len({s.trace for s in sites})
    return {"n": len(traces), "parsed": n_parsed, "both_verdicts": kept, "sites": len(sites),
            "valid_sites": sum(s.label for s in sites), "invalid_sites": sum(1 - s.label for s in sites)}


def valid_gap(W, acts, labels) -> torch.Tensor:
    """[n_layers]: how far apart the valid and invalid sites lie along each layer's unit valid
    vector (the mean projection of the valid sites minus that of the invalid ones): the
    steering strength's unit. A residual norm is no unit for it: in a pretrained model a few
    very large coordinates carry the norm (countdown-smol: gap ~0.06 x norm at layers 20-29,
    countdown-tiny ~0.5 x), and a step of half the norm breaks the model's text."""
    v = W[:, :, 1] / W[:, :, 1].norm(dim=-1, keepdim=True)
    proj = torch.einsum("nld,ld->nl", acts.float(), v.float())
    valid = labels.bool()
    return proj[valid].mean(0) - proj[~valid].mean(0)


def _random_head_sets(model, prev_heads, settings) -> list:
    """`random_seeds` sets of `top_k_heads` random heads, never previous-token heads."""
    excluded = set(map(tuple, prev_heads))
    pool = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads) if (l, h) not in excluded]
    k = min(settings.top_k_heads, len(pool))
    return [sorted(random.Random(settings.seed * 1000 + s).sample(pool, k)) for s in range(settings.random_seeds)] \
        if k else []
