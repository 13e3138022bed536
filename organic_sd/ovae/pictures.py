"""Pictures of [-1, 1] images: one as a PIL image, several side by side with labels."""

from __future__ import annotations

import numpy as np
import torch

PANEL_GAP = 4  # pixels between pictures in side_by_side.png


def to_pil(x: torch.Tensor):
    """(1, 3, H, W) or (3, H, W) in [-1, 1] -> RGB PIL image."""
    from PIL import Image

    a = x.reshape(-1, *x.shape[-2:]).detach().float().cpu().clamp(-1, 1)
    a = ((a + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(a), "RGB")


def side_by_side(panels: list[tuple[str, torch.Tensor]]):
    """Pictures in a row, each with its label above it."""
    from PIL import Image, ImageDraw

    ims = [(label, to_pil(x)) for label, x in panels]
    H = max(im.height for _, im in ims)
    W = sum(im.width for _, im in ims) + PANEL_GAP * (len(ims) - 1)
    out = Image.new("RGB", (W, H + 14), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    x0 = 0
    for label, im in ims:
        out.paste(im, (x0, 14))
        draw.text((x0 + 2, 1), label, fill=(0, 0, 0))
        x0 += im.width + PANEL_GAP
    return out
