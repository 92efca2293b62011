"""Building blocks shared by the backbones (BasicSR's ``arch_util``): its weight init and its
residual block without BatchNorm, with regulariser sites on the residual branch.

A block owns its ``inblock`` site (the ``site`` attribute); its ``mid`` site is owned by the
backbone (``self.sites["mid<k>"]``, like every other site) and handed to ``forward``, so the
site bookkeeping of ``srcore.models.backbone`` covers it unchanged."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import init


@torch.no_grad()
def default_init_weights(modules, scale: float = 1.0, bias_fill: float = 0.0) -> None:
    """BasicSR's init: kaiming_normal_, weights scaled by ``scale`` (small residuals), constant bias."""
    for module in modules if isinstance(modules, (list, tuple)) else [modules]:
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                init.kaiming_normal_(m.weight)
                m.weight.mul_(scale)
                if m.bias is not None:
                    m.bias.fill_(bias_fill)


class ResidualBlockNoBN(nn.Module):
    """---conv-[mid]-ReLU-conv-[site]-(*res_scale)-+---   (BasicSR's ResidualBlockNoBN plus the
       |____________________________________________|      mid and inblock sites)
    """

    def __init__(self, num_feat: int = 64, res_scale: float = 1.0):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        # Parameter-free, and not in an nn.Sequential, so the conv keys keep their names.
        self.site = nn.Identity()
        default_init_weights([self.conv1, self.conv2], 0.1)

    def forward(self, x, mid: nn.Module | None = None):
        out = self.conv1(x)
        if mid is not None:
            out = mid(out)
        return x + self.site(self.conv2(self.relu(out))) * self.res_scale
