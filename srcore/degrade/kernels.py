"""Batched random blur kernels (Real-ESRGAN / BasicSR formulas).

All kernels are built on a ``pad_to`` x ``pad_to`` grid (21 by default) centred on the middle
pixel; a kernel of odd ``size`` < ``pad_to`` is zero outside its central ``size`` x ``size``
window, which is exactly BasicSR's "generate at ``size`` then zero-pad to 21". Every kernel is
normalised to sum 1. Coordinates follow BasicSR's ``mesh_grid``: ``x`` is the column offset
(to the right), ``y`` the row offset (down).

Kernel types (``KERNEL_TYPES``), with covariance ``S = R(theta) diag(sx^2, sy^2) R(theta)^T``
and ``Q = [x y] S^-1 [x y]^T``:

* ``iso`` / ``aniso``: Gaussian ``exp(-Q / 2)`` (iso: ``sy = sx``, ``theta = 0``);
* ``generalized_iso`` / ``generalized_aniso``: ``exp(-0.5 * Q**beta)``;
* ``plateau_iso`` / ``plateau_aniso``: ``1 / (1 + Q**beta)``;
* sinc (circular low-pass with cut-off ``omega`` rad/pixel):
  ``omega * J1(omega r) / (2 pi r)``, centre value ``omega^2 / (4 pi)`` (the limit at r = 0).

Random draws come from a ``torch.Generator`` on that generator's device. Every parameter is drawn
for every sample whether it is used or not, so a call always consumes the same amount of the
stream for a given ``n`` (changing a probability never shifts later draws).

The kernels are applied by ``srcore.degrade.filtering``. Building them reads nothing back to
the host and branches on no tensor's value (the sinc and pulse choices are ``torch.where``), so
on a GPU it never waits for the device; the coordinate grids and the identity kernel are built
once per device and kept (``mesh``, ``pulse_kernels``: never modify what they return in place).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
KERNEL_SIZES = tuple(range(7, 22, 2))  # Real-ESRGAN's odd kernel sizes, zero-padded to 21
ROTATION_RANGE = (-math.pi, math.pi)  # of anisotropic kernels


# --------------------------------------------------------------------------------------------
# deterministic kernel formulas (batched over the leading dimension)
# --------------------------------------------------------------------------------------------
def mesh(size: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(xx, yy): column and row offsets from the centre of an odd ``size`` grid, each (size, size);
    built once per (size, device, dtype) and shared: read-only."""
    return _mesh(size, torch.device(device or "cpu"), dtype)


@functools.lru_cache(maxsize=None)
def _mesh(size: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    ax = torch.arange(size, device=device, dtype=dtype) - (size // 2)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def _as_vec(v, ref: torch.Tensor | None = None) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float32, device=None if ref is None else ref.device)
    return t.reshape(-1)


def quadratic_form(sigma_x, sigma_y, theta, size: int = 21) -> torch.Tensor:
    """Q = x^T S^-1 x on the grid for S = R(theta) diag(sx^2, sy^2) R(theta)^T: (n, size, size)."""
    sx = _as_vec(sigma_x)
    sy, th = _as_vec(sigma_y, sx), _as_vec(theta, sx)
    sx, sy, th = torch.broadcast_tensors(sx, sy, th)
    xx, yy = mesh(size, sx.device, torch.float64)
    sx, sy, th = (t.double()[:, None, None] for t in (sx, sy, th))
    c, s = torch.cos(th), torch.sin(th)
    # coordinates in the kernel's principal frame: R^T [x, y]
    u = c * xx + s * yy
    v = -s * xx + c * yy
    return (u / sx) ** 2 + (v / sy) ** 2


def _size_mask(size, pad_to: int, device) -> torch.Tensor:
    """(n, pad_to, pad_to) boolean: inside the central size x size window."""
    size = torch.as_tensor(size, device=device).reshape(-1)
    xx, yy = mesh(pad_to, device, torch.float32)
    half = (size // 2).to(torch.float32)[:, None, None]
    return (xx.abs() <= half) & (yy.abs() <= half)


def _finish(k: torch.Tensor, size, pad_to: int) -> torch.Tensor:
    if size is not None:
        k = k * _size_mask(size, pad_to, k.device)
    return (k / k.sum(dim=(-2, -1), keepdim=True)).to(torch.float32)


def bivariate_gaussian(sigma_x, sigma_y, theta, size=None, pad_to: int = 21) -> torch.Tensor:
    """Normalised Gaussian kernels exp(-Q/2), (n, pad_to, pad_to); ``size`` (int or (n,)) odd window."""
    return _finish(torch.exp(-0.5 * quadratic_form(sigma_x, sigma_y, theta, pad_to)), size, pad_to)


def bivariate_generalized_gaussian(sigma_x, sigma_y, theta, beta, size=None, pad_to: int = 21) -> torch.Tensor:
    """Normalised generalized Gaussian kernels exp(-0.5 Q^beta) (beta = 1: Gaussian)."""
    q = quadratic_form(sigma_x, sigma_y, theta, pad_to)
    b = _as_vec(beta, q).double()[:, None, None]
    return _finish(torch.exp(-0.5 * q.pow(b)), size, pad_to)


def bivariate_plateau(sigma_x, sigma_y, theta, beta, size=None, pad_to: int = 21) -> torch.Tensor:
    """Normalised plateau kernels 1 / (1 + Q^beta)."""
    q = quadratic_form(sigma_x, sigma_y, theta, pad_to)
    b = _as_vec(beta, q).double()[:, None, None]
    return _finish(1.0 / (1.0 + q.pow(b)), size, pad_to)


def sinc_kernels(cutoff, size=21, pad_to: int | None = None) -> torch.Tensor:
    """Circular low-pass (2-D sinc) kernels with cut-off ``cutoff`` (rad/pixel, (n,) or scalar),
    ``size`` odd (int or (n,)), zero-padded to ``pad_to`` (default: max size): (n, pad_to, pad_to).
    A given ``pad_to`` is trusted to hold every size (it is not read back to be checked)."""
    w = _as_vec(cutoff).double()
    size_t = torch.as_tensor(size, device=w.device).reshape(-1)
    if pad_to is None:
        pad_to = int(size_t.max())
    if pad_to % 2 == 0:
        raise ValueError(f"pad_to={pad_to} must be odd")
    xx, yy = mesh(pad_to, w.device, torch.float64)
    r = torch.sqrt(xx**2 + yy**2)
    w = w[:, None, None]
    r_safe = torch.where(r == 0, torch.ones_like(r), r)
    k = w * torch.special.bessel_j1(w * r_safe) / (2 * math.pi * r_safe)
    k = torch.where(r == 0, w**2 / (4 * math.pi), k)
    return _finish(k, size_t.expand(w.shape[0]), pad_to)


def pulse_kernels(n: int, pad_to: int = 21, device=None) -> torch.Tensor:
    """Identity kernels (a 1 in the centre): (n, pad_to, pad_to), a read-only expanded view of
    one kernel kept per device."""
    return _pulse(pad_to, torch.device(device or "cpu")).expand(n, pad_to, pad_to)


@functools.lru_cache(maxsize=None)
def _pulse(pad_to: int, device: torch.device) -> torch.Tensor:
    k = torch.zeros(pad_to, pad_to, device=device)
    k[pad_to // 2, pad_to // 2] = 1
    return k


# --------------------------------------------------------------------------------------------
# random parameters and kernels
# --------------------------------------------------------------------------------------------
def _choice(u: torch.Tensor, probs: Sequence[float]) -> torch.Tensor:
    """Index i with probability probs[i], from uniforms u (inverse CDF)."""
    p = torch.tensor([float(x) for x in probs], dtype=torch.float64, device=u.device)
    cdf = torch.cumsum(p / p.sum(), 0)
    return torch.searchsorted(cdf, u.contiguous(), right=True).clamp_max(len(probs) - 1)


def _beta_from(u_branch: torch.Tensor, u_val: torch.Tensor, beta_range: Sequence[float]) -> torch.Tensor:
    """BasicSR's shape draw: with prob 1/2 U[lo, min(1, hi)], else U[max(1, lo), hi]."""
    lo, hi = float(beta_range[0]), float(beta_range[1])
    lo_a, hi_a = lo, min(1.0, hi)
    lo_b, hi_b = max(1.0, lo), hi
    if hi_a < lo_a:  # range entirely above 1
        lo_a, hi_a = lo_b, hi_b
    if hi_b < lo_b:  # range entirely below 1
        lo_b, hi_b = lo_a, hi_a
    a = lo_a + (hi_a - lo_a) * u_val
    b = lo_b + (hi_b - lo_b) * u_val
    return torch.where(u_branch < 0.5, a, b)


def sample_kernel_params(n: int, g: torch.Generator, kernel_list: Sequence[str], kernel_prob: Sequence[float], *,
                         sigma_range, betag_range, betap_range, sinc_prob: float = 0.0,
                         rotation_range=ROTATION_RANGE, sizes: Sequence[int] = KERNEL_SIZES) -> dict:
    """Per-sample parameters of Real-ESRGAN's random blur kernels, on ``g.device``: the type by
    ``kernel_prob``, sigmas in ``sigma_range``, shape betas in ``betag_range`` (generalized) /
    ``betap_range`` (plateau), a sinc instead with probability ``sinc_prob``.

    Returns a dict of (n,) tensors: ``type`` (index into ``KERNEL_TYPES``), ``size`` (odd),
    ``sigma_x``, ``sigma_y``, ``theta``, ``beta`` (1 for the Gaussian types), ``sinc`` (bool: a
    circular low-pass kernel replaces the mixed kernel) and ``omega`` (its cut-off, U[pi/3, pi]
    for size < 13 else U[pi/5, pi]). Isotropic types have ``sigma_y = sigma_x`` and ``theta = 0``.
    """
    unknown = [k for k in kernel_list if k not in KERNEL_TYPES]
    if unknown or len(kernel_list) != len(kernel_prob):
        raise ValueError(f"kernel_list={list(kernel_list)} / kernel_prob={list(kernel_prob)}: "
                         f"names must be in {KERNEL_TYPES} and the lengths must match")
    u = torch.rand(n, 9, generator=g, device=g.device, dtype=torch.float64).unbind(1)
    type_idx = torch.tensor([KERNEL_TYPES.index(k) for k in kernel_list], device=g.device)
    kind = type_idx[_choice(u[0], kernel_prob)]
    sizes_t = torch.tensor([int(s) for s in sizes], device=g.device)
    size = sizes_t[(u[1] * len(sizes)).long().clamp_max(len(sizes) - 1)]
    lo, hi = float(sigma_range[0]), float(sigma_range[1])
    sx = lo + (hi - lo) * u[2]
    sy = lo + (hi - lo) * u[3]
    theta = float(rotation_range[0]) + (float(rotation_range[1]) - float(rotation_range[0])) * u[4]
    iso = (kind == 0) | (kind == 2) | (kind == 4)
    sy = torch.where(iso, sx, sy)
    theta = torch.where(iso, torch.zeros_like(theta), theta)
    beta_g = _beta_from(u[5], u[6], betag_range)
    beta_p = _beta_from(u[5], u[6], betap_range)
    beta = torch.where(kind >= 4, beta_p, torch.where(kind >= 2, beta_g, torch.ones_like(beta_g)))
    sinc = u[7] < sinc_prob
    omega_lo = torch.where(size < 13, torch.full_like(u[8], math.pi / 3), torch.full_like(u[8], math.pi / 5))
    omega = omega_lo + (math.pi - omega_lo) * u[8]
    return {"type": kind, "size": size, "sigma_x": sx.float(), "sigma_y": sy.float(), "theta": theta.float(),
            "beta": beta.float(), "sinc": sinc, "omega": omega.float()}


def kernels_from_params(p: dict, pad_to: int = 21, device=None) -> torch.Tensor:
    """Build the (n, pad_to, pad_to) kernels described by :func:`sample_kernel_params`."""
    p = {k: v.to(device) if device is not None else v for k, v in p.items()}
    kind, size = p["type"], p["size"]
    gen = bivariate_generalized_gaussian(p["sigma_x"], p["sigma_y"], p["theta"], p["beta"], size, pad_to)
    pla = bivariate_plateau(p["sigma_x"], p["sigma_y"], p["theta"], p["beta"], size, pad_to)
    gau = bivariate_gaussian(p["sigma_x"], p["sigma_y"], p["theta"], size, pad_to)
    k = torch.where((kind >= 4)[:, None, None], pla, torch.where((kind >= 2)[:, None, None], gen, gau))
    # every sample's sinc is built and picked by where: no device read to ask whether any is on
    return torch.where(p["sinc"][:, None, None], sinc_kernels(p["omega"], size, pad_to), k)


def random_mixed_kernels(n: int, g: torch.Generator, kernel_list: Sequence[str], kernel_prob: Sequence[float], *,
                         sigma_range, betag_range, betap_range, sinc_prob: float = 0.0,
                         rotation_range=ROTATION_RANGE, sizes: Sequence[int] = KERNEL_SIZES,
                         pad_to: int = 21) -> torch.Tensor:
    """n random mixed kernels (type by ``kernel_prob``, random odd size from ``sizes`` zero-padded
    to ``pad_to``); with ``sinc_prob`` > 0 a sinc kernel replaces a sample's kernel with that
    probability (Real-ESRGAN's first/second-stage kernels). (n, pad_to, pad_to) on ``g.device``."""
    if pad_to % 2 == 0 or max(int(s) for s in sizes) > pad_to:  # checked here, on the host, not on the device
        raise ValueError(f"pad_to={pad_to} must be odd and >= every kernel size {list(sizes)}")
    p = sample_kernel_params(n, g, kernel_list, kernel_prob, sigma_range=sigma_range, betag_range=betag_range,
                             betap_range=betap_range, sinc_prob=sinc_prob, rotation_range=rotation_range, sizes=sizes)
    return kernels_from_params(p, pad_to)


def sample_final_sinc_params(n: int, g: torch.Generator, prob: float, sizes: Sequence[int] = KERNEL_SIZES,
                             omega_range=(math.pi / 3, math.pi)) -> dict:
    """Real-ESRGAN's final sinc filter, per sample: ``on`` (bool, prob ``prob``; off = identity),
    ``size`` (odd, from ``sizes``) and ``omega`` (U[omega_range])."""
    u = torch.rand(n, 3, generator=g, device=g.device, dtype=torch.float64).unbind(1)
    sizes_t = torch.tensor([int(s) for s in sizes], device=g.device)
    size = sizes_t[(u[1] * len(sizes)).long().clamp_max(len(sizes) - 1)]
    omega = float(omega_range[0]) + (float(omega_range[1]) - float(omega_range[0])) * u[2]
    return {"on": u[0] < prob, "size": size, "omega": omega.float()}


def final_sinc_kernels(p: dict, pad_to: int = 21, device=None) -> torch.Tensor:
    """Kernels of :func:`sample_final_sinc_params` (pulse where ``on`` is False)."""
    p = {k: v.to(device) if device is not None else v for k, v in p.items()}
    n = p["on"].shape[0]
    return torch.where(p["on"][:, None, None], sinc_kernels(p["omega"], p["size"], pad_to),
                       pulse_kernels(n, pad_to, p["on"].device))
