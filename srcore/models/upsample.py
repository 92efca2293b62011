"""BasicSR's pixel-shuffle upsampler (``arch_util.Upsample``), shared by EDSR, SwinIR and HAT.

Its parameters are ``upsample.0``, ``upsample.2``, ... (conv, shuffle, conv, shuffle): official
weights load as they are. The networks run it stage by stage (``stages``) so that a site
(``up<i>``) can follow each stage without a module inside the ``nn.Sequential`` shifting the keys.
"""

from __future__ import annotations

from torch import nn


def num_stages(scale: int) -> int:
    """x2^n: n conv + x2 shuffle stages; x3: one x3 stage."""
    return scale.bit_length() - 1 if scale & (scale - 1) == 0 else 1


class Upsample(nn.Sequential):
    """conv(num_feat -> 4 num_feat) + PixelShuffle(2), n times for x2^n; one x9 / x3 stage for x3."""

    def __init__(self, scale: int, num_feat: int):
        if scale & (scale - 1) == 0:
            layers = [m for _ in range(num_stages(scale)) for m in (nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1),
                                                                   nn.PixelShuffle(2))]
        elif scale == 3:
            layers = [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"scale={scale} is not supported by the pixel-shuffle upsampler; allowed: 2^n, 3")
        super().__init__(*layers)

    def stages(self) -> list[tuple[nn.Conv2d, nn.PixelShuffle]]:
        """(conv, shuffle) per stage, in order."""
        return [(self[i], self[i + 1]) for i in range(0, len(self), 2)]
