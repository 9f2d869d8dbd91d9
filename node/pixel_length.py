"""Receive-time check of uncompressed pixel data against the image's own description.

A truncated Pixel Data (or one byte of it, or a 256 x 256 array under a 512 x 512 header)
decodes as a data set but not as an image: accepted, it would fail its whole series at
inference. Its length is cheap to check when the instance arrives (C-STORE and STOW-RS):

    Rows x Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated / 8

rounded up to whole bytes for BitsAllocated 1, two thirds of that for native
YBR_FULL_422 (PS3.5 8.1.1, 8.2). Fewer bytes are refused, and so are a frame's worth or more
of extra bytes; trailing padding short of a frame (an odd length's padding byte, a vendor's
padding) is what decoders ignore, and is accepted. Float Pixel Data and Double
Float Pixel Data are checked the same way (32 and 64 bits allocated). An image description
(Rows and Columns) without any pixel data element is refused too. Encapsulated
(compressed) pixel data is not checked this way; a deflated data set is native once
inflated, and is checked.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

#: The pixel data elements and the BitsAllocated each requires (None: any).
_PIXEL_ELEMENTS = (
    (Tag(0x7FE0, 0x0010), "PixelData", None),
    (Tag(0x7FE0, 0x0008), "FloatPixelData", 32),
    (Tag(0x7FE0, 0x0009), "DoubleFloatPixelData", 64),
)
_DESCRIPTION = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel")


def _int(dataset: Dataset, keyword: str, default: int | None = None) -> int | None:
    value = dataset.get(keyword)
    if value is None or value == "":
        return default
    return int(value)


def pixel_data_problem(
    dataset: Dataset, transfer_syntax: str, *, pixel_length: int | None = None
) -> str | None:
    """Why the uncompressed pixel data of ``dataset`` does not match its description, or
    None when it does (or there is none, or it is encapsulated).

    The reason names attributes and sizes only, never a value of the patient's.
    ``pixel_length``: the pixel data element's length when its value is left out of
    ``dataset`` (the listener's receive-time scan).
    """
    present = [(tag, name, bits) for tag, name, bits in _PIXEL_ELEMENTS if tag in dataset]
    if not present:
        # An image (Rows and Columns) without its pixels fails its series at inference.
        if "Rows" in dataset and "Columns" in dataset:
            return "Rows and Columns without PixelData, FloatPixelData or DoubleFloatPixelData"
        return None
    if UID(transfer_syntax).is_encapsulated:
        return None
    if len(present) > 1:
        return f"more than one pixel data element ({', '.join(n for _, n, _ in present)})"
    ((tag, name, required_bits),) = present
    try:
        value = dataset[tag].value
        sizes = {keyword: _int(dataset, keyword) for keyword in _DESCRIPTION}
        frames = _int(dataset, "NumberOfFrames", 1) or 1
        photometric = str(dataset.get("PhotometricInterpretation", "") or "")
    except (TypeError, ValueError) as exc:
        return f"the Image Pixel description cannot be read: {exc}"
    missing = [keyword for keyword, size in sizes.items() if size is None]
    if missing:
        return f"{name} without {', '.join(missing)}"
    rows, columns, bits, samples = (int(sizes[k] or 0) for k in _DESCRIPTION)
    if required_bits is not None and bits != required_bits:
        return f"{name} with BitsAllocated {bits} ({required_bits} required)"
    if bits != 1 and (bits < 8 or bits % 8):
        return f"BitsAllocated {bits} is neither 1 nor a multiple of 8"

    def length(pixels: int) -> int:
        size = (pixels + 7) // 8 if bits == 1 else pixels * (bits // 8)
        return size // 3 * 2 if name == "PixelData" and photometric == "YBR_FULL_422" else size

    expected = length(rows * columns * samples * frames)
    if pixel_length is not None:
        actual = pixel_length
    else:
        actual = len(value) if isinstance(value, bytes | bytearray) else 0
    # Trailing bytes short of a frame are padding (decoders ignore them); a frame or more
    # means the header describes another image.
    if expected <= actual < expected + max(length(rows * columns * samples), 2):
        return None
    return (
        f"{name} has {actual} bytes, {expected} expected for {rows} x {columns} pixels, "
        f"{samples} sample(s), {frames} frame(s), {bits} bits allocated"
    )
