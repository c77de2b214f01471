"""The `verilens geometry` command (registered in verilens/cli.py)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def geometry(
    models: List[str] = typer.Argument(..., help="Two or more models: countdown-tiny, a model folder (causal LM "
                                                 "or encoder), a .gguf file, or smollm2-135m / all-minilm-l6-v2. "
                                                 "Every pair is compared."),
    out: Path = typer.Option(Path("verilens-geometry"), "--out", help="Output folder."),
    what: str = typer.Option("embed", "--what", "--which",
                             help="What to compare: embed (input embeddings), unembed (LM head rows; pairs with an "
                                  "encoder say 'not available'), hidden (hidden states by layer), a comma list, or "
                                  "all. (--which is the old name.)"),
    metric: str = typer.Option("cosine", help="Distance: cosine, dot, sqeuclidean (exact closed form) or euclidean "
                                              "(streamed over every pair)."),
    layers: str = typer.Option("all", "--layers",
                               help="With --what hidden: 'all', or layer numbers such as 0,3,6 or 0-6 (0 = the "
                                    "embedding output, L = the last block's output), numbered in the shallower model "
                                    "of each pair."),
    layer_match: str = typer.Option("relative", "--layer-match",
                                    help="Pair layers of models of different depth by relative depth (layer l of "
                                         "the shallower model with round(l * L_deep / L_shallow)) or by index."),
    context: str = typer.Option("", "--context", help="With --what hidden: text put between the start token and each "
                                                      "token (default: none)."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="With --what hidden: tokens per forward pass."),
    max_tokens: Optional[int] = typer.Option(None, min=0, help="Sample this many shared tokens per pair (default: "
                                                               "all of them; 0 = all)."),
    k: int = typer.Option(10, min=1, help="Neighbours for kNN overlap and LLE (intrinsic dimension uses 2k)."),
    permutations: int = typer.Option(0, min=0, help="Mantel permutations (0 = skip the test)."),
    mantel_tokens: Optional[int] = typer.Option(None, min=0, help="Sample this many tokens for the Mantel test "
                                                                  "(default: all; 0 = all)."),
    seed: int = typer.Option(0, help="Sampling and permutation seed."),
    skip_nonfinite_rows: bool = typer.Option(False, "--skip-nonfinite-rows",
                                             help="Leave out tokens whose embedding holds NaN or inf (counted) "
                                                  "instead of stopping with an error."),
):
    """Cross-model geometry: report.json, heatmap.png (layers.png for hidden) and report.html in --out."""
    from .report import run_geometry

    run_geometry(models, out, what=what, metric=metric, max_tokens=max_tokens or None, k=k,
                 permutations=permutations, mantel_tokens=mantel_tokens or None, seed=seed,
                 skip_nonfinite_rows=skip_nonfinite_rows, layers=layers, layer_match=layer_match,
                 context=context, batch_size=batch_size)
