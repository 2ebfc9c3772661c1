"""Decoding stored images (bytes, `datasets` Image dicts, PIL) for score, train and eval."""

from __future__ import annotations

import re
from typing import Any


def decode_image(value: Any, rgb: bool = True) -> Any:
    """Image bytes (or a datasets {'bytes': ...} dict, or a PIL image) -> a loaded PIL image, in RGB unless
    rgb=False (scorers take the file's own mode: some references resize a palette or RGBA image before RGB).

    Raises ValueError with a short reason that is the same on every run when the value is not a readable image.
    """
    from io import BytesIO

    from PIL import Image

    if isinstance(value, dict):
        value = value.get("bytes")
    if isinstance(value, Image.Image):
        return value.convert("RGB") if rgb else value
    if value is None:
        raise ValueError("image is null")
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"image is a {type(value).__name__}, expected bytes")
    if not len(value):
        raise ValueError("image is empty (0 bytes)")
    try:
        im = Image.open(BytesIO(value))
        im.load()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        reason = re.sub(r"\s*<[^>]* at 0x[0-9a-f]+>", "", str(e))  # drop object reprs ("<_io.BytesIO object at 0x...>")
        raise ValueError(f"cannot decode image: {type(e).__name__}: {reason}") from None
    return im if im.mode == "RGB" or not rgb else im.convert("RGB")
