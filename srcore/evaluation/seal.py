"""SEAL's Set14-SE suite (Zhang et al., ICLR 2024; XPixelGroup/SEAL@64b81a6): a systematic
real-world evaluation beside the paper's eight fixed degradations.

The 14 Set14 HR images (GTmod12) under each of 100 representative real-world degradations
(cluster centres of the degradation space: 54 Real-ESRGAN-type, 46 BSRGAN-type) give
100 x 14 LR images, shipped already degraded and x4-downscaled: they are read as they are
(SEAL's generation noise is unseeded, so regenerating them would not match its line scores).
A root folder holds::

    Set14-GTmod12/<image>.png            HR references
    Set14_LQ_SE/deg_<i>/<image>.png      LR inputs of case i, i = 0..99
    metrics/line.csv                     per-case acceptance / excellence lines
    metrics/model.csv                    per-case scores of seven published models
    degradation_center_100.txt           line i+1: case i's degradation parameters

Scoring follows SEAL's convention (PSNR and SSIM on the BT.601 Y channel, crop border 0);
``evaluate_seal`` returns the per-image rows and the summary of ``seal_scores``. The LR size
of an image is the same in every case, so on a GPU the cases of one size go through the
network in batches; on a CPU one at a time, with the metrics in a thread beside it.
"""
from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from srcore.evaluation.scoring import EvaluationStopped
from srcore.evaluation.seal_scores import METRICS, Lines, read_lines, read_model_scores, seal_summary
from srcore.evaluation.suite import EvalCase, Suite
from srcore.imageio import list_images, read_image, write_image
from srcore.metrics import psnr, ssim, to_uint8

if TYPE_CHECKING:
    import torch

SET_NAME = "Set14-SE"
SCALE = 4
CROP_BORDER = 0
NUM_CASES = 100
HR_DIR, LR_DIR = "Set14-GTmod12", "Set14_LQ_SE"
LINES_CSV, MODELS_CSV = "metrics/line.csv", "metrics/model.csv"
DEGRADATIONS_TXT = "degradation_center_100.txt"


def case_name(index: int) -> str:
    return f"deg_{index}"


def case_index(name: str) -> int:
    return int(name.removeprefix("deg_"))


def check_seal_root(root: str | Path) -> list[str]:
    """The HR image names of a complete SEAL folder, sorted; else ``FileNotFoundError`` with
    one line naming the first missing folder or file (pre-flight: before any job starts)."""
    root = Path(root)
    hint = "(SEAL's Set14-SE: see the SEAL row of ../shared/data/README.md)"
    if not root.is_dir():
        raise FileNotFoundError(f"SEAL folder {str(root)!r} does not exist {hint}")
    for rel in (HR_DIR, LR_DIR):
        if not (root / rel).is_dir():
            raise FileNotFoundError(f"SEAL folder {str(root)!r} has no {rel}/ {hint}")
    try:
        names = [p.name for p in list_images(root / HR_DIR)]
    except ValueError as e:  # an empty folder
        raise FileNotFoundError(f"SEAL: {e} {hint}") from None
    for i in range(NUM_CASES):
        for name in names:
            if not (root / LR_DIR / case_name(i) / name).is_file():
                raise FileNotFoundError(f"SEAL LR image {str(root / LR_DIR / case_name(i) / name)!r} is missing {hint}")
    if not (root / LINES_CSV).is_file():
        raise FileNotFoundError(f"SEAL reference lines {str(root / LINES_CSV)!r} are missing {hint}")
    return names


class SealSuite(Suite):
    """Set14-SE as a suite: for each case (``deg_<i>``, all 100 or ``cases``) every image,
    LR from disk, HR from GTmod12 (read once)."""

    def __init__(self, root: str | Path, cases: Sequence[int] | None = None):
        self.root = Path(root)
        self.names = check_seal_root(self.root)
        self.cases = list(range(NUM_CASES) if cases is None else cases)
        bad = [i for i in self.cases if not 0 <= i < NUM_CASES]
        if bad:
            raise ValueError(f"SEAL cases {bad} do not exist; allowed: 0..{NUM_CASES - 1}")

    def __iter__(self) -> Iterator[EvalCase]:
        hrs = {name: read_image(self.root / HR_DIR / name) for name in self.names}
        for i in self.cases:
            for name, hr in hrs.items():
                lr = read_image(self.root / LR_DIR / case_name(i) / name)
                if tuple(s * SCALE for s in lr.shape[:2]) != hr.shape[:2]:
                    raise ValueError(f"SEAL {case_name(i)}/{name}: LR {lr.shape[:2]} x{SCALE} != HR {hr.shape[:2]}")
                yield EvalCase(SET_NAME, Path(name).stem, case_name(i), lr, hr)


def score_image(sr: np.ndarray, hr: np.ndarray) -> dict[str, float]:
    """SEAL's per-image scores (``METRICS``): PSNR and SSIM on Y, crop border 0."""
    return {"psnr_y": psnr(sr, hr, CROP_BORDER, test_y=True), "ssim_y": ssim(sr, hr, CROP_BORDER, test_y=True)}


def super_resolve_batch(model: torch.nn.Module, lrs: list[np.ndarray], device: torch.device) -> list[np.ndarray]:
    """SR of same-size uint8 LR images in one forward pass (the same arithmetic per image as
    ``scoring.super_resolve``)."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.stack(lrs)).permute(0, 3, 1, 2).to(device).float().div_(255)
        y = model(x).float().cpu()
    return [to_uint8(t) for t in y]


def default_batch_size(device: torch.device) -> int:
    # A CPU is compute-bound and runs one image at a time fastest (batches of 4-16 were 10-20 %
    # slower per image with a small SRResNet on 2 cores); a GPU wants batches.
    return 1 if device.type == "cpu" else 16


def _batches(cases: Iterable[tuple[int, EvalCase]], batch_size: int) -> Iterator[list[tuple[int, EvalCase]]]:
    """(suite position, case) chunks of at most ``batch_size`` cases of one LR size."""
    by_size = defaultdict(list)
    for k, case in cases:
        by_size[case.lr.shape].append((k, case))
    for group in by_size.values():
        for start in range(0, len(group), batch_size):
            yield group[start:start + batch_size]


def _score(case: EvalCase, sr: np.ndarray, save_dir: Path | None) -> dict:
    if save_dir is not None:
        write_image(save_dir / case.set / case.degradation / f"{case.image}.png", sr)
    return {"set": case.set, "image": case.image, "degradation": case.degradation, **score_image(sr, case.hr)}


def evaluate_cases(model: torch.nn.Module, cases: Iterable[EvalCase], device: torch.device | str = "cpu",
                   batch_size: int | None = None, workers: int = 1, save_dir: Path | None = None,
                   done: Iterable[dict] = (), should_stop: Callable[[], bool] = lambda: False,
                   on_progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Per-image rows ``{"set", "image", "degradation", *METRICS}`` of ``model`` (put in eval
    mode) in the suite's order. Same-size LR images run ``batch_size`` at a time (default: by
    device, ``default_batch_size``); ``workers`` threads score while the network runs (0: in line).
    Rows in ``done`` (a stopped evaluation's) are kept, not scored again; ``should_stop`` is asked
    before each batch, and ``EvaluationStopped`` carries every row scored until then;
    ``on_progress(count, total)`` follows the rows kept and scored."""
    import torch

    device = torch.device(device)
    batch_size = batch_size or default_batch_size(device)
    model.eval()
    save_dir = None if save_dir is None else Path(save_dir)
    cases = list(cases)
    finished = {(r["set"], r["image"], r["degradation"]): r for r in done}
    scored = {k: finished[key] for k, c in enumerate(cases) if (key := (c.set, c.image, c.degradation)) in finished}
    progress = on_progress or (lambda count, total: None)
    progress(len(scored), len(cases))
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        pending: deque = deque()
        for batch in _batches([(k, c) for k, c in enumerate(cases) if k not in scored], batch_size):
            if should_stop():
                scored.update((k, fut.result()) for k, fut in pending)
                raise EvaluationStopped([scored[k] for k in sorted(scored)], suite="seal")
            srs = super_resolve_batch(model, [c.lr for _, c in batch], device)
            for (k, case), sr in zip(batch, srs):
                if workers > 0:
                    pending.append((k, pool.submit(_score, case, sr, save_dir)))
                else:
                    scored[k] = _score(case, sr, save_dir)
            while len(pending) > 4 * batch_size:  # bounds the SR images held in memory
                k, fut = pending.popleft()
                scored[k] = fut.result()
            progress(len(scored) + len(pending), len(cases))
        scored.update((k, fut.result()) for k, fut in pending)
    return [scored[k] for k in sorted(scored)]


def case_means(rows: list[dict]) -> tuple[list[int], dict[str, np.ndarray]]:
    """(case indices in ascending order, ``{metric: per-case mean over the images}``)."""
    groups = defaultdict(list)
    for r in rows:
        groups[case_index(r["degradation"])].append(r)
    cases = sorted(groups)
    return cases, {m: np.array([np.mean([r[m] for r in groups[i]]) for i in cases]) for m in METRICS}


def seal_lines(root: str | Path) -> dict[str, Lines]:
    return read_lines(Path(root) / LINES_CSV)


def summarize_rows(rows: list[dict], lines: dict[str, Lines]) -> dict[str, float]:
    """SEAL summary (``seal_scores.seal_summary``) of per-image rows of any subset of cases."""
    cases, means = case_means(rows)
    return seal_summary(means, {m: lines[m].take(cases) for m in means})


def evaluate_seal(model: torch.nn.Module, root: str | Path, device: torch.device | str = "cpu",
                  batch_size: int | None = None, workers: int = 1, save_dir: Path | None = None,
                  cases: Sequence[int] | None = None, **resume) -> tuple[list[dict], dict[str, float]]:
    """Score ``model`` on Set14-SE (all 100 cases, or ``cases``): per-image rows and the flat
    summary ``{"<metric>/<stat>": value}`` (``seal_scores.STATS`` of each of ``METRICS``).
    ``resume``: ``done``, ``should_stop``, ``on_progress`` of ``evaluate_cases``."""
    rows = evaluate_cases(model, SealSuite(root, cases), device, batch_size, workers, save_dir, **resume)
    return rows, summarize_rows(rows, seal_lines(root))


def published_summaries(root: str | Path, line_filter: bool = True) -> dict[str, dict[str, float]]:
    """The summary of each published model in ``metrics/model.csv``: SEAL's reference rows."""
    lines = seal_lines(root)
    return {name: seal_summary(scores, lines, line_filter)
            for name, scores in read_model_scores(Path(root) / MODELS_CSV).items()}
