"""Triton kernels, one op per file, each with a torch reference `<op>_ref` beside it.

Installed as `verilens.kernels`. Importing this package never requires Triton; each
kernel module imports it on first use, so CPU-only installs work unchanged."""
