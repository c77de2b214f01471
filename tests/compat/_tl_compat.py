"""Helpers shared by the TransformerLens compatibility tests (imported as `_tl_compat`:
tests/compat is on sys.path under pytest's default import mode)."""


def find_slice():
    """TransformerLens's `utils.Slice` as verilens provides it. The tests that pass a Slice
    need verilens to export one (the cache helpers accept it, as TransformerLens's do)."""
    for mod in ("verilens", "verilens.hooks", "verilens.hooks.cache", "verilens.utils"):
        try:
            m = __import__(mod, fromlist=["Slice"])
        except ImportError:
            continue
        if hasattr(m, "Slice"):
            return m.Slice
    raise AssertionError("verilens provides no Slice (TransformerLens: transformer_lens.utils.Slice); "
                         "looked in verilens, verilens.hooks, verilens.hooks.cache, verilens.utils")


def Slice(*args, **kwargs):  # noqa: N802 (TransformerLens's name)
    return find_slice()(*args, **kwargs)
