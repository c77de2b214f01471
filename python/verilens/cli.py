"""The `verilens` command. Every subcommand has --help."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import VerilensError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="verilens: how a reasoning model checks its own work (CountDown), on any causal LM.",
)


@app.command()
def demo(
    out: Path = typer.Option(Path("verilens-demo"), help="Output folder (report.html, report.json, figures/)."),
    n: int = typer.Option(400, help="Problems to generate traces for."),
    seed: int = typer.Option(0, help="Problem seed (test split)."),
    force: bool = typer.Option(False, help="Overwrite an existing output folder."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in the output folder."),
):
    """The whole self-verification analysis on the built-in countdown-tiny, offline (a few minutes)."""
    from .demo import run_demo

    run_demo(out, n=n, seed=seed, force=force, resume=resume)


@app.command()
def analyze(
    model: str = typer.Option("countdown-tiny", help="countdown-tiny, a model folder or a .gguf file."),
    out: Path = typer.Option(..., help="Output folder (report.html, report.json, figures/, cache/)."),
    problems: Optional[Path] = typer.Option(None, help="Problems file (parquet/JSON/JSONL with nums, target); "
                                                       "default: generated test-split problems."),
    n: int = typer.Option(200, help="Problems to generate traces for."),
    seed: int = typer.Option(0, help="Seed (problems, probes, random heads)."),
    template: str = typer.Option("base", help="Prompt: base, qwen-instruct, or icl (solved examples in context, "
                                              "for general reasoning models; use with --partial)."),
    shots: int = typer.Option(3, help="Solved examples in an icl prompt."),
    max_new_tokens: int = typer.Option(400, help="Length of the generated traces."),
    batch_size: int = typer.Option(32, help="Batch size for generation and forward passes."),
    n_contexts: int = typer.Option(300, help="Intervention contexts (correct attempts)."),
    paper_settings: bool = typer.Option(False, "--paper-settings", help="The authors' exact choices (36-layer model)."),
    partial: bool = typer.Option(False, help="Score a 'partial' outcome (general reasoning models that self-correct)."),
    bad_rows: str = typer.Option("skip", help="Bad rows in --problems: skip (report them) or error."),
    probe: Optional[Path] = typer.Option(None, help="Use this probe file ([n_layers, d_model, 2] .pt, e.g. the "
                                                    "authors' release) instead of training one."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default cpu)."),
    dtype: Optional[str] = typer.Option(None, help="float32, bfloat16 or float16."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out."),
    force: bool = typer.Option(False, help="Overwrite --out."),
):
    """Find how a model verifies its CountDown attempts: probes, GLU neurons, heads, interventions, report."""
    from .analysis.pipeline import Settings, analyze as run_analyze
    from .models import load

    kw = dict(n=n, seed=seed, template=template, shots=shots, max_new_tokens=max_new_tokens, batch_size=batch_size,
              n_contexts=n_contexts, partial=partial)
    settings = Settings.paper(**kw) if paper_settings else Settings(**kw)
    m = load(model, device=device, dtype=dtype)
    run_analyze(m, out, settings, problems_file=problems, on_bad_row=bad_rows, probe_file=probe, resume=resume,
                force=force, progress=sys.stderr.isatty())
    typer.echo(f"report: {out / 'report.html'} (numbers: {out / 'report.json'})")


@app.command()
def train(
    model: str = typer.Argument("countdown-tiny", help="Only countdown-tiny can be trained."),
    out: Path = typer.Option(Path("runs/countdown-tiny"), help="Run folder (checkpoints; resumes if present)."),
    seed: int = typer.Option(0, help="Seed: the shipped model is seed 0."),
    steps: Optional[int] = typer.Option(None, help="Override the number of optimiser steps."),
    checkpoint_every: int = typer.Option(50, help="Steps between checkpoints."),
    threads: int = typer.Option(1, help="CPU threads. 1 reproduces the shipped weights bit for bit; more threads "
                                        "sum in another order, so the weights drift apart (an equivalent model)."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
):
    """Reproduce the built-in model from a seed (progress bar, checkpoints, resume)."""
    from dataclasses import replace

    from .models.tiny import NAME, TinySpec
    from .models.train import train as run_train

    if model != NAME:
        raise VerilensError(f"only {NAME} can be trained by verilens, not {model!r}")
    spec = TinySpec(seed=seed)
    if steps is not None:
        spec = replace(spec, steps=steps)
    path = run_train(out, spec, checkpoint_every=checkpoint_every, threads=threads,
                     device=device)
    typer.echo(f"model written to {path}; load it with verilens.load({str(path)!r})")


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument("countdown-tiny", help="countdown-tiny, a model folder or a .gguf file."),
    n: int = typer.Option(500, help="Number of test-split problems."),
    seed: int = typer.Option(0, help="Problem seed."),
    template: str = typer.Option("base", help="Prompt template: base or qwen-instruct."),
    max_new_tokens: int = typer.Option(400, help="Generation length."),
    batch_size: int = typer.Option(50, help="Generation batch size."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default cpu)."),
):
    """Greedy CountDown eval; prints JSON (parse_rate, verdict_agreement, ...)."""
    from .models import load
    from .models.evaluate import evaluate

    m = load(model, device=device)
    metrics = evaluate(m, n=n, seed=seed, template=template, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, progress=sys.stderr.isatty())
    typer.echo(json.dumps(metrics, indent=2))


from .geometry.cli import geometry as _geometry_cmd  # noqa: E402

app.command("geometry")(_geometry_cmd)


def main():
    try:
        app()
    except VerilensError as e:
        typer.secho(f"verilens: error: {e}", err=True, fg=typer.colors.RED)
        sys.exit(2)


if __name__ == "__main__":
    main()
