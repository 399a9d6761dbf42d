"""The one pair of pixel conversions, uint8 <-> the model's [-1, 1] range, and augmentation.

Datasets stay uint8 (compact, exact); batches are converted on the training device. The
exported graphs (see ``export/``) embed the same two functions, so every consumer sees the
same pixels.
"""

from __future__ import annotations

import torch

VALUE_RANGE = (-1.0, 1.0)


def uint8_to_model(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] in 0..255 -> float32 in [-1, 1]."""
    return images.to(torch.float32).mul_(2.0 / 255.0).sub_(1.0)


def model_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 0..255 (rounded, clamped)."""
    return ((images.detach().clamp(-1.0, 1.0) + 1.0) * 127.5).round_().to(torch.uint8)


def random_translate(
    images: torch.Tensor, max_fraction: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Shift each image by a random integer offset of up to ``max_fraction`` of its size.

    Works on uint8 (before normalisation) or float images. Pixels that enter from outside
    repeat the nearest edge pixel, so no constant (grey or black) border is introduced.
    """
    if max_fraction <= 0:
        return images
    b, _, h, w = images.shape
    my, mx = int(round(max_fraction * h)), int(round(max_fraction * w))
    if my == 0 and mx == 0:
        return images
    cpu = torch.device("cpu")
    dy = torch.randint(-my, my + 1, (b,), generator=generator, device=cpu)
    dx = torch.randint(-mx, mx + 1, (b,), generator=generator, device=cpu)
    return translate(images, dy, dx)


def translate(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shift image i by ``dy[i]`` rows (down) and ``dx[i]`` columns (right), integer offsets.

    Pixels that enter from outside repeat the nearest edge pixel (no constant border).
    """
    b, _, h, w = images.shape
    dy, dx = dy.to(images.device, torch.int64), dx.to(images.device, torch.int64)
    rows = (torch.arange(h, device=images.device)[None, :] - dy[:, None]).clamp_(0, h - 1)
    cols = (torch.arange(w, device=images.device)[None, :] - dx[:, None]).clamp_(0, w - 1)
    batch = torch.arange(b, device=images.device)[:, None, None]
    # advanced indexing gives [B, H, W, C]; move channels back
    shifted = images.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return shifted.permute(0, 3, 1, 2).contiguous()
