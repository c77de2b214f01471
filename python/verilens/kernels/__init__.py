"""verilens' kernels, one op per file, each a registered torch op in the `verilens`
namespace (torch.library.custom_op: a CPU implementation, a CUDA implementation,
register_fake, and autograd where the op has gradients), with its Triton kernel, its
launcher and its pure-torch reference `<op>_ref` beside it:

    head_masked_o_proj.py     verilens::head_masked_o_proj
    masked_glu.py             verilens::masked_glu
    channel_scores.py         verilens::channel_paper_terms, verilens::composition_numerators
    distance_correlation.py   verilens::dcor_tile_sums, verilens::dcor_stream_sums
    _launch.py                the launch plumbing they share

Call them through `verilens.ops` (one `backend` vocabulary) or `torch.ops.verilens.*`.
Importing this package registers the ops and never imports Triton (each kernel is built
on first use), so CPU-only installs work unchanged."""
from . import channel_scores, distance_correlation, head_masked_o_proj, masked_glu  # noqa: F401  (registration)
