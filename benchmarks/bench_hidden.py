"""Hidden states of a long token list through every layer of SmolLM2-135M in bounded memory
(verilens.geometry.hidden: batches through HookedModel, each layer's [V, d] written to a memmap).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/bench_hidden.py [--tokens 30000] [--batch-size 256]

Prints the wall time of the forward passes, the peak RSS of the process before and after, and
the size of the per-layer files (what RAM would hold if every layer were kept in memory),
then the closed-form r of two layers' states (each file mapped while it is read)."""
import argparse
import resource
import time

import numpy as np


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=30000)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    from verilens.geometry import distance_correlation
    from verilens.geometry.hidden import Scratch, hidden_states
    from verilens.models.embeddings import load_model_source

    src = load_model_source(args.model)
    special = set(src.tokenizer.all_special_ids)
    ids = np.array([i for i in range(len(src.tokenizer)) if i not in special][:args.tokens])
    layers = list(range(src.n_layers + 1))
    base = rss_mb()
    print(f"{args.model}: {len(ids)} tokens, layers 0..{src.n_layers}, batch {args.batch_size}; "
          f"peak RSS after loading {base:.0f} MB", flush=True)
    with Scratch() as tmp:
        t0 = time.perf_counter()
        H = hidden_states(src, ids, layers, batch_size=args.batch_size, folder=tmp,
                          say=lambda m: print(m, flush=True))
        wall = time.perf_counter() - t0
        disk = sum(int(np.prod(sh)) * 4 for sh in H.shapes.values()) / 2**20
        print(f"forward passes: {wall:.1f} s; peak RSS {rss_mb():.0f} MB (+{rss_mb() - base:.0f} MB); "
              f"{len(H)} layer files of {H.shapes[0]} float32 = {disk:.0f} MB on disk", flush=True)
        t0 = time.perf_counter()
        r = distance_correlation(H[1], H[src.n_layers], "cosine")
        print(f"closed-form r(layer 1, layer {src.n_layers}) over all pairs = {r:.4f} in "
              f"{time.perf_counter() - t0:.1f} s; peak RSS {rss_mb():.0f} MB", flush=True)


if __name__ == "__main__":
    main()
