"""Training-time data augmentation for image tasks: small random affine distortions, batched.

Only the training batches are distorted (the test set and the data-dependent initialisation never are); each
sample gets its own random shift, rotation and scale, drawn from a seeded generator. The image is resampled with
:func:`torch.nn.functional.grid_sample` (bilinear, zero background), so a distorted pixel is a convex combination
of the original pixels and zero: features in [0, 1] stay in [0, 1], and a device never sees a new range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .errors import ConfigError, ShapeError


@dataclass(frozen=True)
class RandomAffine:
    """Random per-sample affine distortion of flattened (row-major) images of ``image_shape`` = (H, W).

    Attributes:
        image_shape: (H, W) in pixels; features are the H·W pixels in row-major order.
        shift: largest translation along each axis, pixels (uniform in [−shift, shift]).
        rotate: largest rotation, degrees (uniform in [−rotate, rotate]).
        scale: largest relative zoom (uniform factor in [1 − scale, 1 + scale]).
    """

    image_shape: tuple[int, int]
    shift: float = 0.0
    rotate: float = 0.0
    scale: float = 0.0

    def __post_init__(self) -> None:
        if len(self.image_shape) != 2 or min(self.image_shape) < 1:
            raise ConfigError(f"augment: image_shape must be (H, W) ≥ 1, got {self.image_shape}")
        if self.shift < 0 or self.rotate < 0 or not 0 <= self.scale < 1:
            raise ConfigError(f"augment: need shift ≥ 0, rotate ≥ 0 and 0 ≤ scale < 1, got shift={self.shift}, "
                              f"rotate={self.rotate}, scale={self.scale}")

    @property
    def active(self) -> bool:
        return self.shift > 0 or self.rotate > 0 or self.scale > 0

    def matrices(self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
        """(n, 2, 3) affine matrices in ``affine_grid``'s normalised coordinates (output → input sampling)."""
        h, w = self.image_shape

        def u(size: float) -> Tensor:  # uniform in [−size, size]
            return (torch.rand(n, generator=generator, dtype=dtype) * 2 - 1) * size

        a, s = u(self.rotate * math.pi / 180), 1 + u(self.scale)
        tx, ty = u(self.shift * 2 / w), u(self.shift * 2 / h)  # one pixel = 2/W in normalised units
        c, si = s * torch.cos(a), s * torch.sin(a)
        return torch.stack([torch.stack([c, -si, tx], 1), torch.stack([si, c, ty], 1)], 1)

    def apply(self, x: Tensor, theta: Tensor) -> Tensor:
        """Resample the (B, H·W) images ``x`` with the (B, 2, 3) matrices ``theta``."""
        h, w = self.image_shape
        if x.dim() != 2 or x.shape[1] != h * w:
            raise ShapeError(f"augment: expected images of {h}×{w} = {h * w} features, got shape {tuple(x.shape)}")
        img = x.reshape(len(x), 1, h, w)
        grid = F.affine_grid(theta.to(x.dtype), [len(x), 1, h, w], align_corners=False)
        out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.reshape(len(x), h * w)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A randomly distorted copy of the batch ``x`` (B, H·W); ``x`` itself when nothing is enabled."""
        if not self.active:
            return x
        return self.apply(x, self.matrices(len(x), generator))
