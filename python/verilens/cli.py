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
    out: Path = typer.Option(Path("verilens-demo"), help="Output folder."),
    n: int = typer.Option(8, help="Problems to generate traces for."),
    seed: int = typer.Option(0, help="Problem seed (test split)."),
    eval_n: int = typer.Option(50, help="Problems for the eval numbers (use verilens eval for the full 500)."),
):
    """Run countdown-tiny on a few problems: traces, parsed verdicts and eval numbers."""
    from .demo import run_demo

    run_demo(out, n=n, seed=seed, eval_n=eval_n)


@app.command()
def train(
    model: str = typer.Argument("countdown-tiny", help="Only countdown-tiny can be trained."),
    out: Path = typer.Option(Path("runs/countdown-tiny"), help="Run folder (checkpoints; resumes if present)."),
    seed: int = typer.Option(0, help="Seed: the shipped model is seed 0."),
    steps: Optional[int] = typer.Option(None, help="Override the number of optimiser steps."),
    checkpoint_every: int = typer.Option(50, help="Steps between checkpoints."),
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
    path = run_train(out, spec, checkpoint_every=checkpoint_every)
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
