"""TF32 on CUDA for one block of code: on for the model step when ``train.tf32`` asks for it,
off for the degradation's JPEG codec whatever the caller set (its rounding steps need full fp32
matmuls). One helper for both, on PyTorch's current API where it has one: from torch 2.9 the
``fp32_precision`` settings replace the ``allow_tf32`` flags, and mixing the two raises."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def cuda_tf32(device: torch.device, enabled: bool):
    """CUDA matmuls and cuDNN convolutions in TF32 (``enabled``) or strict fp32 inside the block,
    the previous settings restored after it; nothing on other devices."""
    if torch.device(device).type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None:
        saved = matmul.fp32_precision, conv.fp32_precision
        matmul.fp32_precision = conv.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
        return
    saved = matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
