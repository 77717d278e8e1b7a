"""Triton kernels for the batched shared layers, installed as ``graft_fx.kernels``.

One op per file: its Triton kernel, its plain-torch reference, and its registration as a
``torch.library.custom_op`` in the ``graft`` namespace with a fake (meta) implementation and a
FLOP formula, so that it composes with torch.compile, torch.export and the project's own shape
analysis. `dispatch` decides whether an op runs its kernel or its reference. Importing the
package registers every op (``torch.ops.graft.*``).

- `gather`: ``torch.cat(xs)`` along the rows in one launch;
- `gather_linear`: a Linear over the rows of several tensors, read where they lie;
- `segment_matmul`: contiguous row segments, each multiplied by its own weight ``[G, K, N]``;
- `segment_conv2d`: contiguous row segments, each convolved with its own weights (one grouped
  convolution over channel-stacked rows when the segments are equal; no Triton kernel);
- `segment_affine`: contiguous row segments, each scaled and shifted by its own parameters (no
  Triton kernel: one indexed ``addcmul`` is a single pass already).
"""

from . import gather, gather_linear, segment_affine, segment_conv2d, segment_matmul  # noqa: F401 - registers the ops
