"""What a phone uploads at a cut: the crossing tensor, encoded as the client chooses.

An `Upload` says how a client encodes what it sends. At the raw-input cut, when the model's input is
an RGB image (one row is ``(3, H, W)``), a phone sends a JPEG at ``jpeg_quality``, as a camera app
would; with ``jpeg_quality=None`` it sends the input tensor like any activation. An activation is
sent as ``fp32`` (4 bytes per element), ``fp16`` (2 bytes) or ``int8`` (1 byte, plus one fp32 scale
and one fp32 zero point for the whole tensor: per-tensor affine quantisation, as PyTorch's
``quantize_per_tensor``). A floating-point tensor already narrower than the encoding is sent as it
is, and so is a tensor of integers or booleans (token ids, masks): narrowing those would change
them. The library's default, ``Upload()``, sends every tensor as fp32, so a float32 model uploads
exactly its cut's ``activation_bytes``. The time to encode on the phone and decode on the server
(about a millisecond for a 224x224 JPEG) is not modelled.

JPEG size. ``header + bits_per_pixel(quality) * H * W / 8`` bytes: a fixed ~600-byte header (JFIF
markers, two quantisation tables, libjpeg's four standard Huffman tables), and a payload whose bits
per pixel (`JPEG_BITS_PER_PIXEL`, linear between the listed qualities) were measured with Pillow
(libjpeg, 4:2:0 chroma subsampling, its defaults) on matplotlib's sample photograph
``grace_hopper.jpg`` after the usual ImageNet preprocessing (shorter side to 256, centre crop
224x224); tests/serving/test_uploads.py measures it again. At quality 90 a 224x224 image is about
16 kB. Cross-checks, all approximate: Wallace ("The JPEG still picture compression standard",
Communications of the ACM 34(4), 1991) gives 0.75-1.5 bits per pixel for "excellent" and 1.5-2 for
"usually indistinguishable from the original" colour images, where qualities 75 and 85 fall here;
ImageNet's ILSVRC-2012 training photos average about 110 kB (1.28 M images, a 138 GB archive) at
roughly 400x350 pixels, about 6 bits per pixel: stored near full quality, an upper reference. Larger
images compress a little better: this overestimates a 384x384 crop by 8% at quality 90, by up to
23% at low qualities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import GraftError

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}  # the activation encodings
INT8_PARAMETER_BYTES = 8  # one fp32 scale and one fp32 zero point per tensor
JPEG_HEADER_BYTES = 600
# (quality, payload bits per pixel), measured as the module docstring says.
JPEG_BITS_PER_PIXEL = ((1, 0.21), (10, 0.40), (25, 0.66), (50, 0.98), (75, 1.46), (85, 1.97), (90, 2.49),
                       (95, 3.60), (100, 6.98))


@dataclass(frozen=True)
class CutTensor:
    """The tensor that crosses one cut, for one sample: ``row_shape`` (no batch dim), ``dtype``,
    and whether it is the model's own input (the raw-input cut)."""

    row_shape: tuple[int, ...]
    dtype: torch.dtype
    is_input: bool = False

    @property
    def elements(self) -> int:
        return math.prod(self.row_shape)

    @property
    def is_image(self) -> bool:
        """An RGB image as torchvision models take it: the model's input, one row ``(3, H, W)``."""
        return self.is_input and len(self.row_shape) == 3 and self.row_shape[0] == 3


def jpeg_bytes(height: int, width: int, quality: int) -> int:
    """Bytes of a ``height`` x ``width`` RGB photograph saved as a JPEG at ``quality`` (1..100)."""
    qualities, rates = zip(*JPEG_BITS_PER_PIXEL)
    bits_per_pixel = float(np.interp(quality, qualities, rates))
    return JPEG_HEADER_BYTES + math.ceil(bits_per_pixel * height * width / 8)


@dataclass(frozen=True)
class Upload:
    """How a client encodes its upload: ``activations`` is ``fp32``, ``fp16`` or ``int8``;
    ``jpeg_quality`` (1..100) sends an image input as a JPEG, None sends it as a tensor.

    Raises GraftError naming the field when either is out of range. Default: fp32, no JPEG.
    """

    activations: str = "fp32"
    jpeg_quality: int | None = None

    def __post_init__(self):
        if self.activations not in BYTES_PER_ELEMENT:
            raise GraftError(f"Upload.activations {self.activations!r}: expected one of "
                             f"{', '.join(BYTES_PER_ELEMENT)}")
        q = self.jpeg_quality
        if q is not None and (isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 100):
            raise GraftError(f"Upload.jpeg_quality {q!r}: expected a whole number from 1 to 100, or None")

    def nbytes(self, tensor: CutTensor) -> int:
        """Bytes a client uploads to send ``tensor`` (see the module docstring)."""
        if self.jpeg_quality is not None and tensor.is_image:
            return jpeg_bytes(tensor.row_shape[1], tensor.row_shape[2], self.jpeg_quality)
        width, own = BYTES_PER_ELEMENT[self.activations], tensor.dtype.itemsize
        if not tensor.dtype.is_floating_point or own <= width:
            return tensor.elements * own
        return tensor.elements * width + (INT8_PARAMETER_BYTES if self.activations == "int8" else 0)
