"""Image file I/O for the evaluation pipeline: uint8 RGB arrays in and out; and the
in-memory JPEG round trip (:func:`jpeg_roundtrip`) that every real-codec JPEG step of the
project (the test protocol, the training degradations on CPU) goes through.

Every image in the project is an ``HxWx3`` ``uint8`` RGB array. Reading is
done with Pillow (not OpenCV) so the channel order is RGB from the start.

Conversions applied by :func:`read_image`:

- 8-bit greyscale (``L``), bilevel (``1``), palette (``P``), ``LA``, ``RGBA``
  and ``CMYK`` are converted with Pillow's ``convert("RGB")``: greyscale is
  replicated into three equal channels, the alpha channel is *dropped* (not
  composited over a background).
- 16-bit greyscale (``I;16*``, or ``I`` holding values in ``[0, 65535]``) is
  scaled to 8 bits with rounding, ``round(v / 257)`` (65535 -> 255), then
  replicated to three channels. Other high-depth modes (float ``F``, ``I``
  outside the 16-bit range) raise :class:`ImageReadError`. Note that Pillow
  itself already reduces 16-bit-per-channel *RGB* PNGs to 8 bits on open.
- EXIF orientation is not applied: pixels are returned as stored.

A truncated file is an error, not a partially grey image — unless some other
code set Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES = True``, which this
module does not touch.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from srcore.atomic import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded (corrupt, truncated, unsupported)."""


def _to_rgb_uint8(im: Image.Image, path: Path) -> np.ndarray:
    if im.mode in _SIXTEEN_BIT_MODES or im.mode == "I":
        v = np.asarray(im).astype(np.int64)
        if v.size and (v.min() < 0 or v.max() > 65535):
            raise ImageReadError(
                f"cannot read image {path}: mode {im.mode!r} with values outside the 16-bit range"
            )
        # round(v * 255 / 65535) == round(v / 257), half up, in exact integer arithmetic.
        grey = ((v * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode == "F":
        raise ImageReadError(f"cannot read image {path}: floating-point mode 'F' is not supported")
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a C-contiguous ``HxWx3`` ``uint8`` RGB array.

    Raises ``FileNotFoundError`` (naming the path) if the file does not exist
    and :class:`ImageReadError` (naming the path and the reason) if it cannot
    be decoded.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {p}")
    try:
        with Image.open(p) as im:
            # Image.open is lazy and only parses the header; load() decodes the
            # pixel data, which is where truncation/corruption surfaces.
            im.load()
            arr = _to_rgb_uint8(im, p)
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # UnidentifiedImageError and "image file is truncated" are OSErrors.
        raise ImageReadError(f"cannot read image {p}: {type(exc).__name__}: {exc}") from exc
    return np.ascontiguousarray(arr)


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write an ``HxWx3`` ``uint8`` RGB array as a PNG, atomically.

    The data go to a temporary file in the destination directory that is then
    ``os.replace``-d onto ``path``, so a reader (or a crashed writer) never
    sees a half-written image. Missing parent directories are created.
    """
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ValueError(f"write_image writes PNG only; got a {p.suffix or 'suffix-less'} path: {p}")
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{img.dtype} array of shape {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"write_image expects a uint8 HxWx3 RGB array, got {desc} (for {p})")
    atomic_write(p, lambda f: Image.fromarray(np.ascontiguousarray(img)).save(f, format="PNG"))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by name.

    Extensions are matched case-insensitively against ``IMAGE_EXTENSIONS``.
    Raises ``FileNotFoundError`` for a missing folder, ``NotADirectoryError``
    for a file, and ``ValueError`` if the folder holds no images — an empty
    test set is always a configuration mistake, never "zero images to score".
    """
    d = Path(folder)
    if not d.exists():
        raise FileNotFoundError(f"image folder not found: {d}")
    if not d.is_dir():
        raise NotADirectoryError(f"not a folder: {d}")
    files = sorted(
        (f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda f: f.name,
    )
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {d}")
    return files


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """An ``HxWx3`` ``uint8`` RGB array encoded as JPEG and decoded back, in memory.

    Pillow's codec (libjpeg-turbo) at ``quality``, every other option at Pillow's defaults
    (4:2:0 chroma subsampling, the IJG quantisation tables scaled by ``quality``, baseline).
    OpenCV's ``imencode`` / ``imdecode`` decode to the same pixels for these settings (checked
    on the benchmark photographs at qualities 1..100), so this is *the* JPEG of the project.
    """
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
