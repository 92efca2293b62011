"""A disk cache of the paper's test LR images, shared by every job of a sweep and across sweeps.

A test LR image is a pure function of (the HR image's content, the degradation, the scale, the
noise seed, the protocol's code): ``srcore.evaluation.paper.make_test_lr``. Every job used to
rebuild it; with a cache folder (``eval.lr_cache``) the first job to need an entry writes it and
every later one reads it.

- **Keys** are content hashes: SHA-256 over ``PROTOCOL`` (bump it whenever ``make_test_lr``
  changes what it returns), the versions of the libraries whose arithmetic the LR depends on
  (OpenCV's blur, Pillow's resize and JPEG codec with its libjpeg, numpy's normal generator),
  the degradation, scale and seed, and the HR image's shape and bytes. The names of the set and
  the image are not in it (they only enter through the noise seed), so two folders holding the
  same image under the same seed share an entry, and a changed image never hits a stale one.
- **Files** ``<folder>/<key[:2]>/<key>.lr``: a 16-byte magic, the LR's height, width and channels
  (uint32), the SHA-256 of the pixels, then the pixels (uint8, C order). A file whose magic,
  size or pixel hash is wrong (a truncated copy, a bit flip, another program's file) is never
  used: it is rebuilt and overwritten, with a warning.
- **Writes** are atomic: a temporary file in the same folder, then ``os.replace``. Two processes
  filling the same entry (jobs of one sweep, or two sweeps) both write complete, identical files
  and the last rename wins; a reader sees the old file, the new one or none, never half of one.
  No ``fsync``: a file cut short by a power loss fails its hash check and is rebuilt.
"""
from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PROTOCOL = "paper-test-lr/1"  # bump when make_test_lr's output changes for the same inputs
MAGIC = b"srcore-test-lr1\n"
_HEADER = struct.Struct("<16s3I32s")  # magic, h, w, c, sha256(pixels)
SUFFIX = ".lr"


@lru_cache(maxsize=1)
def code_version() -> str:
    """The protocol version and the versions of the libraries its arithmetic depends on."""
    import cv2
    import PIL
    from PIL import features

    return "|".join((PROTOCOL, f"cv2={cv2.__version__}", f"PIL={PIL.__version__}",
                     f"jpeg={features.version('jpg')}", f"numpy={np.__version__}"))


def image_digest(hr: np.ndarray) -> str:
    """SHA-256 of an image's dtype, shape and bytes: the HR part of a key, computed once per
    image and shared by its degradations."""
    h = hashlib.sha256(f"{hr.dtype.str}{hr.shape}".encode())
    h.update(np.ascontiguousarray(hr).data)
    return h.hexdigest()


def entry_key(hr_digest: str, degradation: str, scale: int, seed: int) -> str:
    text = "\0".join((code_version(), hr_digest, degradation, str(int(scale)), str(int(seed))))
    return hashlib.sha256(text.encode()).hexdigest()


class LRCache:
    """The cache folder; ``get(hr, digest, degradation, scale, seed, make)`` returns the cached LR
    or ``make()``'s, storing it."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()
        self.hits = self.misses = self.rebuilt = 0

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}{SUFFIX}"

    def read(self, key: str) -> np.ndarray | None:
        """The entry's LR, or None when it is missing or fails a check (then it is counted in
        ``rebuilt`` and logged)."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) >= _HEADER.size:
            magic, h, w, c, digest = _HEADER.unpack_from(data)
            pixels = memoryview(data)[_HEADER.size:]
            if (magic == MAGIC and len(pixels) == h * w * c and hashlib.sha256(pixels).digest() == digest):
                return np.frombuffer(data, np.uint8, offset=_HEADER.size).reshape(h, w, c)
        log.warning("test-LR cache: %s is corrupt (size %d); rebuilding it", path, len(data))
        self.rebuilt += 1
        return None

    def write(self, key: str, lr: np.ndarray) -> None:
        lr = np.ascontiguousarray(lr, dtype=np.uint8)
        if lr.ndim != 3:
            raise ValueError(f"test-LR cache stores HxWxC images, got shape {lr.shape}")
        pixels = lr.tobytes()
        header = _HEADER.pack(MAGIC, *lr.shape, hashlib.sha256(pixels).digest())
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(header)
                f.write(pixels)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, digest: str, degradation: str, scale: int, seed: int, make) -> np.ndarray:
        key = entry_key(digest, degradation, scale, seed)
        lr = self.read(key)
        if lr is not None:
            self.hits += 1
            return lr
        self.misses += 1
        lr = make()
        try:
            self.write(key, lr)
        except OSError as e:  # a full or read-only disk costs speed, never the evaluation
            log.warning("test-LR cache: cannot write %s (%s); going on without it", self.path(key), e)
        return lr
