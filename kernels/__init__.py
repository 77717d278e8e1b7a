"""Triton kernels for the batched shared layers, installed as ``graft_fx.kernels``.

Empty until the kernels issue lands: the realigned graph runs on PyTorch's own ops for now.
"""
