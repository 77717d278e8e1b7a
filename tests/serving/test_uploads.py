"""Upload encodings: bytes per element by hand, what is sent as it is, the JPEG size model against
Pillow on a real photograph, and the errors that name the bad field."""

import io

import pytest
import torch
from matplotlib import cbook
from PIL import Image

from graft_fx import GraftError
from graft_fx.serving.uploads import JPEG_BITS_PER_PIXEL, CutTensor, Upload, jpeg_bytes

ACTIVATION = CutTensor((64, 8, 8), torch.float32)  # 4096 elements
IMAGE = CutTensor((3, 224, 224), torch.float32, is_input=True)


@pytest.mark.parametrize("encoding, nbytes", [("fp32", 4 * 4096), ("fp16", 2 * 4096), ("int8", 4096 + 8)])
def test_a_float32_activation_at_each_encoding(encoding, nbytes):
    assert Upload(encoding).nbytes(ACTIVATION) == nbytes


def test_the_default_sends_a_float32_tensor_as_it_is_even_an_image():
    assert Upload().nbytes(IMAGE) == 3 * 224 * 224 * 4
    assert Upload("fp16").nbytes(IMAGE) == 3 * 224 * 224 * 2


def test_narrower_floats_and_integers_are_sent_as_they_are():
    half = CutTensor((4096,), torch.float16)
    assert Upload("fp32").nbytes(half) == Upload("fp16").nbytes(half) == 2 * 4096
    assert Upload("int8").nbytes(half) == 4096 + 8
    ids = CutTensor((128,), torch.int64, is_input=True)
    assert Upload("int8", jpeg_quality=90).nbytes(ids) == 8 * 128
    assert Upload("fp16").nbytes(CutTensor((128,), torch.bool)) == 128


def test_an_image_input_is_sent_as_a_jpeg_and_nothing_else_is():
    upload = Upload("fp16", jpeg_quality=90)
    assert upload.nbytes(IMAGE) == jpeg_bytes(224, 224, 90) == 600 + 15_618  # 2.49 bits per pixel
    assert upload.nbytes(CutTensor((3, 224, 224), torch.float32)) == 2 * 3 * 224 * 224  # not the input
    assert upload.nbytes(CutTensor((1, 28, 28), torch.float32, is_input=True)) == 2 * 28 * 28  # not RGB
    assert upload.nbytes(CutTensor((3, 32, 48), torch.uint8, is_input=True)) == jpeg_bytes(32, 48, 90)


def test_jpeg_size_grows_with_quality_and_pixels():
    sizes = [jpeg_bytes(224, 224, q) for q in range(1, 101)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert jpeg_bytes(448, 224, 75) - 600 == pytest.approx(2 * (jpeg_bytes(224, 224, 75) - 600), abs=1)
    assert jpeg_bytes(224, 224, 80) == pytest.approx((jpeg_bytes(224, 224, 75) + jpeg_bytes(224, 224, 85)) / 2,
                                                     abs=1)


def _pillow_jpeg_bytes(size: int, quality: int) -> int:
    """Pillow's JPEG of matplotlib's sample photograph, shorter side to size * 256/224, centre crop."""
    image = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    scale = size * 256 / 224 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    buffer = io.BytesIO()
    image.crop((left, top, left + size, top + size)).save(buffer, "JPEG", quality=quality)
    return len(buffer.getvalue())


@pytest.mark.parametrize("quality", [q for q, _ in JPEG_BITS_PER_PIXEL])
def test_the_jpeg_table_is_what_pillow_makes_of_a_photograph(quality):
    """The table's source, measured again; a larger crop compresses a little better, so the
    table overestimates it."""
    assert jpeg_bytes(224, 224, quality) == pytest.approx(_pillow_jpeg_bytes(224, quality), rel=0.03)
    assert 1.0 <= jpeg_bytes(384, 384, quality) / _pillow_jpeg_bytes(384, quality) <= 1.25


@pytest.mark.parametrize("kwargs, message", [
    ({"activations": "bf16"}, "Upload.activations 'bf16': expected one of fp32, fp16, int8"),
    ({"jpeg_quality": 0}, "Upload.jpeg_quality 0: expected a whole number from 1 to 100, or None"),
    ({"jpeg_quality": 101}, "Upload.jpeg_quality 101"),
    ({"jpeg_quality": 90.0}, "Upload.jpeg_quality 90.0"),
    ({"jpeg_quality": True}, "Upload.jpeg_quality True"),
])
def test_bad_fields_are_named(kwargs, message):
    with pytest.raises(GraftError, match=message):
        Upload(**kwargs)
