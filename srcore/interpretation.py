"""The paper's interpretation tools (PAPER.md "Interpretation tools"), for any model built by
``srcore.models``: channel saliency maps, channel ablation, deep degradation representations.

Layers are named by the regulariser sites every backbone shares (``srcore.regularizers.sites``),
which sit exactly where the paper looks: ``first`` (the head), ``b1`` ... ``bN`` (after each
body block), ``hr`` (before conv_hr) and ``last`` (before conv_last). The models are evaluated
in eval mode, where every site is the identity, so tapping a site changes nothing.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn as nn

from srcore.metrics import psnr_from_mse

# -- taps ------------------------------------------------------------------------------------


def layer_names(model: nn.Module) -> list[str]:
    """The paper's layers, in forward order: first, b1..bN, hr, last."""
    return [n for n in model.site_modules() if n in ("first", "hr", "last") or re.fullmatch(r"b\d+", n)]


class Taps:
    """Forward hooks that keep (or replace) the features at the named layers."""

    def __init__(self, model: nn.Module, layers: Iterable[str], edit=None):
        self.features: dict[str, torch.Tensor] = {}
        self.handles = []
        sites = model.site_modules()
        for name in layers:
            if name not in sites:
                raise KeyError(f"layer {name!r} is unknown; allowed: {', '.join(layer_names(model))}")
            self.handles.append(sites[name].register_forward_hook(self._hook(name, edit)))

    def _hook(self, name, edit):
        def hook(module, inputs, output):
            if edit is not None:
                output = edit(name, output)
            self.features[name] = output
            return output
        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


# -- channel saliency maps ---------------------------------------------------------------------


def gradient_magnitude_objective(sr: torch.Tensor) -> torch.Tensor:
    """Sum over pixels of the output's gradient magnitude sqrt(dx^2 + dy^2) (the CSM objective)."""
    dx = sr[..., :-1, 1:] - sr[..., :-1, :-1]
    dy = sr[..., 1:, :-1] - sr[..., :-1, :-1]
    return torch.sqrt(dx * dx + dy * dy + 1e-12).sum()


def channel_saliency(model: nn.Module, lr: torch.Tensor, layers: list[str] | None = None) -> dict[str, np.ndarray]:
    """Per layer, one importance value per channel, averaged over the images of ``lr`` (N,3,H,W):
    back-propagate the objective once to the layer's features, take |gradient|, divide by its
    maximum over C x H x W (per image), sum over H x W."""
    layers = layers or layer_names(model)
    model.eval()
    out: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    for image in lr.split(1):
        # the input carries the graph: an EMA copy or a frozen model has no trainable parameters
        image = image.detach().clone().requires_grad_(True)
        with Taps(model, layers) as taps, torch.enable_grad():
            sr = model(image)
            feats = [taps.features[n] for n in layers]
            grads = torch.autograd.grad(gradient_magnitude_objective(sr), feats)
        for name, g in zip(layers, grads):
            g = g[0].abs()
            out[name].append((g / g.max().clamp_min(1e-30)).sum(dim=(1, 2)).detach().cpu().double().numpy())
    return {name: np.mean(v, axis=0) for name, v in out.items()}


def gini(values: np.ndarray) -> float:
    """0 when every channel matters equally, towards 1 when one channel carries everything."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = v.size
    if n == 0 or v.sum() == 0:
        return 0.0
    return float(np.abs(v[:, None] - v[None, :]).sum() / (2 * n * n * v.mean()))


def normalized_entropy(values: np.ndarray) -> float:
    """1 for a perfectly even distribution over channels."""
    p = np.asarray(values, dtype=np.float64)
    p = p / p.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(len(values))) if len(values) > 1 else 1.0


def coefficient_of_variation(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(v.std() / v.mean()) if v.mean() else 0.0


def evenness(values: np.ndarray) -> dict[str, float]:
    return {"gini": gini(values), "entropy": normalized_entropy(values), "cv": coefficient_of_variation(values)}


# -- channel ablation ------------------------------------------------------------------------


def ablate_channel(features: torch.Tensor, channel: int) -> torch.Tensor:
    """Zero one channel and rescale the others so the total activation (sum of |x|) is kept."""
    total = features.abs().sum()
    out = features.clone()
    out[:, channel] = 0
    rest = out.abs().sum()
    return out * (total / rest.clamp_min(1e-30))


def psnr(a: torch.Tensor, b: torch.Tensor, border: int = 4) -> float:
    """PSNR of two [0, 1] image batches on 8-bit levels, by ``srcore.metrics``' formula. The
    squared error is averaged by torch in the tensors' dtype (no uint8 arrays per ablated
    channel), as the ablation always has."""
    a = (a.clamp(0, 1) * 255).round()
    b = (b.clamp(0, 1) * 255).round()
    if border:
        a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    return psnr_from_mse(((a - b) ** 2).mean().item())


@torch.no_grad()
def channel_ablation(model: nn.Module, lr: torch.Tensor, hr: torch.Tensor, layer: str = "last",
                     border: int = 4) -> np.ndarray:
    """PSNR drop (dB, vs the intact network) when each channel of ``layer`` is removed."""
    model.eval()
    base = np.mean([psnr(model(x), y, border) for x, y in zip(lr.split(1), hr.split(1))])
    with Taps(model, [layer]) as taps:
        model(lr[:1])
        channels = taps.features[layer].shape[1]
    drops = np.zeros(channels)
    for c in range(channels):
        with Taps(model, [layer], edit=lambda name, f, c=c: ablate_channel(f, c)):
            drops[c] = base - np.mean([psnr(model(x), y, border) for x, y in zip(lr.split(1), hr.split(1))])
    return drops


# -- deep degradation representations -------------------------------------------------------------


@torch.no_grad()
def degradation_features(model: nn.Module, images_by_degradation: dict[str, list[torch.Tensor]],
                         layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Features of every LR image at ``layer``, averaged over space (one C-vector each), with
    the index of its degradation."""
    model.eval()
    rows, labels = [], []
    with Taps(model, [layer]) as taps:
        for k, (deg, images) in enumerate(images_by_degradation.items()):
            for x in images:
                model(x)
                rows.append(taps.features[layer].mean(dim=(2, 3))[0].double().cpu().numpy())
                labels.append(k)
    return np.stack(rows), np.asarray(labels)


def calinski_harabasz(x: np.ndarray, labels: np.ndarray) -> float:
    """Between-cluster over within-cluster dispersion, scaled by (n - k) / (k - 1)."""
    x = np.asarray(x, dtype=np.float64)
    classes = np.unique(labels)
    n, k = len(x), len(classes)
    if k < 2 or n <= k:
        raise ValueError(f"Calinski-Harabasz needs 2 <= clusters < samples, got {k} clusters of {n} samples")
    mean = x.mean(axis=0)
    between = within = 0.0
    for c in classes:
        xc = x[labels == c]
        mc = xc.mean(axis=0)
        between += len(xc) * ((mc - mean) ** 2).sum()
        within += ((xc - mc) ** 2).sum()
    return float(between * (n - k) / (within * (k - 1))) if within else float("inf")


def embed_2d(x: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    if method == "pca":
        from sklearn.decomposition import PCA
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE
        return TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), random_state=seed,
                    init="pca").fit_transform(x)
    raise ValueError(f"embedding {method!r} is unknown; allowed: tsne, pca")


def interpret_model(model: nn.Module, images: list, layer: str = "last", embed: str = "pca",
                    degradations: list[str] | None = None, title: str = "",
                    crop: int = 48) -> tuple[dict, np.ndarray, np.ndarray]:
    """Everything for one model on test images [(name, HxWx3 uint8)]: per-layer CSM and its
    evenness, channel ablation at ``layer``, and the degradation clusters' CHI at ``layer``.
    Returns (result dict, 2-D embedding, cluster labels)."""
    from srcore.evaluation.paper import TEST_DEGRADATIONS, make_test_lr, mod_crop

    degradations = list(degradations or TEST_DEGRADATIONS)
    dtype = next(model.parameters()).dtype

    def to_tensor(img):
        return torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1)[None].to(dtype).div(255)

    hr = [mod_crop(img, 4) for _, img in images]
    clean = torch.cat([to_tensor(make_test_lr(h, "clean"))[..., :crop, :crop] for h in hr])
    csm = channel_saliency(model, clean)
    ablation = channel_ablation(model, clean, torch.cat([to_tensor(h)[..., :crop * 4, :crop * 4] for h in hr]), layer)
    by_deg = {}
    for deg in degradations:
        lr = [to_tensor(make_test_lr(h, deg, seed=k)) for k, h in enumerate(hr)]
        # several crops per image: enough points per cluster for a 2-D embedding
        by_deg[deg] = [x[..., i:i + crop, j:j + crop] for x in lr
                       for i in range(0, x.shape[-2] - crop + 1, crop) for j in range(0, x.shape[-1] - crop + 1, crop)]
    feats, labels = degradation_features(model, by_deg, layer)
    emb = embed_2d(feats, embed)
    result = {"title": title, "layer": layer, "embedding": embed, "n_images": len(images),
              "csm": {name: v.tolist() for name, v in csm.items()},
              "evenness": {name: evenness(v) for name, v in csm.items()},
              "ablation_drop_db": ablation.tolist(),
              "chi": calinski_harabasz(feats, labels), "chi_2d": calinski_harabasz(emb, labels),
              "degradations": degradations, "n_points": int(len(labels))}
    return result, emb, labels
