"""The `verilens geometry` command (registered in verilens/cli.py)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def geometry(
    models: List[str] = typer.Argument(..., help="Two or more models: countdown-tiny, a model folder (causal LM "
                                                 "or encoder), a .gguf file, or smollm2-135m / all-minilm-l6-v2."),
    out: Path = typer.Option(Path("verilens-geometry"), "--out", help="Output folder."),
    which: str = typer.Option("embed", "--which", help="embed (input embeddings) or unembed (output embeddings)."),
    metric: str = typer.Option("cosine", help="cosine or euclidean."),
    max_tokens: Optional[int] = typer.Option(20000, min=0, help="Sample at most this many shared tokens per pair "
                                                         "(0 = all)."),
    k: int = typer.Option(10, min=1, help="Neighbours for kNN overlap and LLE (intrinsic dimension uses 2k)."),
    permutations: int = typer.Option(0, min=0, help="Mantel permutations (0 = skip the test)."),
    mantel_tokens: int = typer.Option(2000, min=3, help="Tokens sampled for the Mantel test."),
    seed: int = typer.Option(0, help="Sampling seed."),
    skip_nonfinite_rows: bool = typer.Option(False, "--skip-nonfinite-rows",
                                             help="Leave out tokens whose embedding holds NaN or inf (counted) "
                                                  "instead of stopping with an error."),
):
    """Cross-model embedding geometry: report.json, heatmap.png and report.html in --out."""
    from .report import run_geometry

    run_geometry(models, out, which=which, metric=metric, max_tokens=max_tokens or None, k=k,
                 permutations=permutations, mantel_tokens=mantel_tokens, seed=seed,
                 skip_nonfinite_rows=skip_nonfinite_rows)
