"""Images for training and testing.

Two sources: the built-in set (real photographs shipped inside the scikit-image,
scikit-learn and matplotlib wheels, so everything runs offline) and folders of HR
images (DIV2K, Set5, Set14, B100, Urban100, Manga109, ...).

Training patches are drawn "counter-based": the patch for sample ``key`` is a pure
function of ``(seed, key)``. A resumed job therefore sees exactly the batches the
uninterrupted job would have seen, whatever the number of loader workers.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from srcore.atomic import atomic_write
from srcore.imageio import list_images, read_image

BUILTIN = "builtin"

# name -> loader. The test split holds varied content (a face, an animal, an object
# and a portrait); the training split the rest. No image is in both.
_BUILTIN_TRAIN = ("rocket", "china", "flower", "motorcycle_left", "motorcycle_right",
                  "immunohistochemistry", "hubble_deep_field", "retina")
_BUILTIN_TEST = ("astronaut", "chelsea", "coffee", "grace_hopper")


def _cache_dir() -> Path:
    return Path(os.environ.get("SR_CACHE_DIR") or Path.home() / ".cache" / "reflash-dropout-sr")


def _builtin_image(name: str) -> np.ndarray:
    """One built-in photograph, decoded once and kept as .npy: importing scikit-learn and
    matplotlib and decoding the photographs costs ~1 s, paid by every job process."""
    path = _cache_dir() / "builtin" / f"{name}.npy"
    try:
        return np.load(path)
    except (OSError, ValueError):
        pass
    image = _decode_builtin_image(name)
    try:
        atomic_write(path, lambda f: np.save(f, image))
    except OSError:  # a read-only home: decode every time
        pass
    return image


def _decode_builtin_image(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image
        return np.ascontiguousarray(load_sample_image(f"{name}.jpg"))
    if name == "grace_hopper":
        import matplotlib.cbook
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            from PIL import Image
            return np.asarray(Image.open(f).convert("RGB"))
    import skimage.data
    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return np.ascontiguousarray(left if name.endswith("left") else right)
    return np.ascontiguousarray(getattr(skimage.data, name)())


def builtin_images(split: str) -> list[tuple[str, np.ndarray]]:
    """The built-in photographs of one split ('train' or 'test') as (name, HxWx3 uint8)."""
    names = {"train": _BUILTIN_TRAIN, "test": _BUILTIN_TEST}.get(split)
    if names is None:
        raise ValueError(f"builtin split {split!r} is unknown; allowed: 'train', 'test'")
    return [(n, _builtin_image(n)) for n in names]


def check_image_source(spec: str) -> None:
    """Fail early (before any job starts) if a data source cannot be used."""
    if spec == BUILTIN:
        return
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"data folder {str(folder)!r} does not exist (expected a folder of HR images, or 'builtin')")
    list_images(folder)  # raises when the folder holds no images


def image_sizes(spec: str, max_images: int | None = None) -> list[tuple[str, tuple[int, int]]]:
    """(name, (height, width)) of the images of a folder source, from their headers only (fast:
    nothing is decoded); the built-in photographs are all larger than any check needs: []."""
    if spec == BUILTIN:
        return []
    from PIL import Image

    sizes = []
    for path in list_images(Path(spec))[:max_images]:
        with Image.open(path) as im:
            sizes.append((path.name, (im.height, im.width)))
    return sizes


def load_images(spec: str, split: str, max_images: int | None = None) -> list[tuple[str, np.ndarray]]:
    """All images of a source ('builtin' or a folder) as (name, HxWx3 uint8), sorted by name."""
    return list(iter_images(spec, split, max_images))


def iter_images(spec: str, split: str, max_images: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """``load_images`` one image at a time: a folder's images are decoded as they are consumed,
    so a consumer that keeps only what it makes of each holds one of them at a time."""
    if spec == BUILTIN:
        yield from builtin_images(split)[:max_images]
        return
    for path in list_images(Path(spec))[:max_images]:
        yield path.stem, read_image(path)


def pad_to(img: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad (reflect-101, bottom/right) an image smaller than ``size``, as BasicSR's
    Real-ESRGAN dataset does before its random crop."""
    h, w = img.shape[:2]
    if h >= size and w >= size:
        return img
    return np.pad(img, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="reflect")


class TrainPatches(Dataset):
    """Random HR training patches, each a pure function of (seed, key).

    Returns uint8 CHW tensors of ``patch`` x ``patch`` pixels (images smaller than
    that are reflect-padded first); degradation to LR happens later, on whole
    batches on the training device.
    """

    def __init__(self, images: Iterable[tuple[str, np.ndarray]], patch: int, seed: int, hflip: bool = True):
        # A private copy of each image, made as the iterable yields it: fed by a generator (the
        # job's loader), the host holds the set once plus what the generator holds. (Sharing the
        # caller's arrays instead was measured 40% slower per iteration at a tiny size on this
        # CPU, docs/speed.md: the copy stays.)
        self._pool = _ImagePool()  # shared by ``with_seed`` copies
        self.images = [torch.from_numpy(np.array(pad_to(im, patch), dtype=np.uint8)).permute(2, 0, 1)
                       for _, im in images]
        if not self.images:
            raise ValueError("the training set holds no images")
        self.patch, self.seed, self.hflip = patch, seed, hflip

    def nbytes(self) -> int:
        return sum(im.numel() for im in self.images)

    # the images (and their packed store) live in a pool that ``with_seed`` copies share, so that
    # packing one copy onto a device packs them all, once
    images = property(lambda self: self._pool.images, lambda self, v: setattr(self._pool, "images", v))
    _store = property(lambda self: self._pool.store, lambda self, v: setattr(self._pool, "store", v))

    def with_seed(self, seed: int) -> "TrainPatches":
        """The same images (shared, not copied: also where ``to`` packed them) cut by another
        seed's crops: what the jobs of a fused group with one training set each train on."""
        other = copy.copy(self)
        other.seed = seed
        return other

    def to(self, device: torch.device | str) -> "TrainPatches":
        """Move the images (uint8) to ``device``, packed in one buffer: crops are then cut there,
        from the same counter-based positions (resume stays exact), by one gather per batch
        (``batch``); only the crops' positions cross the bus. The host copies are released."""
        device = torch.device(device)
        store = torch.empty(self.nbytes(), dtype=torch.uint8, device=device)
        offsets, widths, views, at = [], [], [], 0
        for im in self.images:  # CHW views of HWC memory (from_numpy(...).permute): packed as HWC
            c, h, w = im.shape
            hwc = store[at:at + im.numel()].view(h, w, c)
            hwc.copy_(im.permute(1, 2, 0))
            views.append(hwc.permute(2, 0, 1))
            offsets.append(at)
            widths.append(w)
            at += im.numel()
        self.images = views
        self._store = (store, np.array(offsets, dtype=np.int64), np.array(widths, dtype=np.int64))
        return self

    @property
    def device(self) -> torch.device:
        return self.images[0].device

    @property
    def packed(self) -> bool:
        """Whether the images sit in one buffer (``to``), so ``batch`` cuts a batch in one gather."""
        return self._store is not None

    def __len__(self) -> int:
        return 2**62  # keys are unbounded; the sampler decides which ones are drawn

    def draw(self, key: int) -> tuple[int, int, int, bool]:
        """Where sample ``key`` is cut: (image index, top, left, horizontal flip)."""
        rng = np.random.default_rng([self.seed, key])
        index = int(rng.integers(len(self.images)))
        _, h, w = self.images[index].shape
        top, left = int(rng.integers(h - self.patch + 1)), int(rng.integers(w - self.patch + 1))
        return index, top, left, bool(self.hflip and rng.random() < 0.5)

    def __getitem__(self, key: int) -> torch.Tensor:
        index, top, left, flip = self.draw(key)
        crop = self.images[index][:, top:top + self.patch, left:left + self.patch]
        if flip:
            crop = crop.flip(-1)
        return crop.contiguous()

    def batch(self, keys) -> torch.Tensor:
        """The crops of ``keys`` as one (B, 3, patch, patch) uint8 batch, equal to stacking
        ``self[key]`` (what a DataLoader collates). Packed images (``to``): the positions and
        flips are drawn on the host, as ``self[key]`` draws them, and the crops gathered on the
        device in a fixed handful of operations whatever B."""
        draws = [self.draw(k) for k in keys]
        if not self.packed:
            return torch.stack([self[k] for k in keys])
        store, offsets, widths = self._store
        index, top, left, flip = (np.array(v, dtype=np.int64) for v in zip(*draws))
        row = widths[index] * 3  # HWC: one image row is 3 * width bytes
        base = offsets[index] + top * row + left * 3
        where = torch.from_numpy(np.stack([base, row, flip])).to(store.device, non_blocking=True)
        p = torch.arange(self.patch, device=store.device)
        xs = torch.where(where[2, :, None].bool(), self.patch - 1 - p, p) * 3  # (B, P): mirrored columns
        at = (where[0, :, None, None, None] + torch.arange(3, device=store.device)[:, None, None]
              + p[:, None] * where[1, :, None, None, None] + xs[:, None, None, :])
        return store[at]


class _ImagePool:
    def __init__(self):
        self.images: list[torch.Tensor] = []
        self.store = None


class KeyRange(Sampler):
    """Sample keys for iterations ``start+1 .. stop`` (1-based), ``batch_size`` keys each. With
    ``world_size`` ranks (a job on several GPUs, ``srcore.distributed``), rank ``rank``'s share of
    each iteration's keys: the ``batch_size / world_size`` keys from ``rank * batch_size /
    world_size`` on, so the ranks together draw the keys of one rank alone."""

    def __init__(self, start_iteration: int, stop_iteration: int, batch_size: int, rank: int = 0,
                 world_size: int = 1):
        self.first, self.last = start_iteration * batch_size, stop_iteration * batch_size
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def __iter__(self):
        if self.world_size == 1:
            return iter(range(self.first, self.last))
        return iter(shard_keys(range(self.first, self.last), self.batch_size, self.rank, self.world_size))

    def __len__(self) -> int:
        return (self.last - self.first) // self.world_size


def shard_keys(keys: range, batch_size: int, rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s keys of ``keys`` (whole iterations of ``batch_size`` keys): the
    ``rank``-th of ``world_size`` equal slices of each iteration's keys."""
    local = batch_size // world_size
    return [k for start in range(keys.start, keys.stop, batch_size)
            for k in range(start + rank * local, start + (rank + 1) * local)]
