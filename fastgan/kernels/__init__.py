"""Triton kernels, one module per op (imported lazily: importing Triton is slow).

On CPU tensors they run under ``TRITON_INTERPRET=1``, which must be set
before these modules are imported.
"""
