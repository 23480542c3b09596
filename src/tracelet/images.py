"""Turn what ``log_image`` accepts into PNG bytes, without any imaging library.

Accepted: a numpy array (H×W, H×W×1/3/4, uint8 or floats in [0, 1]), a torch tensor
(the same, or C×H×W), or a matplotlib figure (rendered with ``savefig``).
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: Any) -> bytes:
    """Encode an H×W×C uint8 numpy array (C in 1, 3, 4) as an 8-bit PNG."""
    height, width, channels = pixels.shape
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = pixels.reshape(height, width * channels)
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk: the one PNG reader, for tracelet and its readers."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def to_png(image: Any, argument: str = "image") -> bytes:
    """PNG bytes for ``image``; ``TypeError``/``ValueError`` name ``argument`` when it does not fit."""
    if hasattr(image, "savefig") and hasattr(image, "canvas"):
        buffer = io.BytesIO()
        image.savefig(buffer, format="png")
        return buffer.getvalue()

    import numpy as np

    if type(image).__module__.startswith("torch"):
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
            image = np.transpose(image, (1, 2, 0))
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{argument} must be a numpy array, a torch tensor or a matplotlib figure, "
            f"not {type(image).__name__}"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{argument} must have shape H×W or H×W×C with C in (1, 3, 4), got {image.shape}")
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
            raise TypeError(f"{argument} has dtype {image.dtype}; expected uint8 or real numbers")
        image = (np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return encode_png(np.ascontiguousarray(image))
