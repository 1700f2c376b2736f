"""Figures of the Megapixel-MNIST benchmark (PIL only: matplotlib is not a dependency)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ats_wsi.data.megamnist import MegaMNIST
from megamnist_train import AttentionSamplingClassifier


def _grey(image: np.ndarray, side: int):
    """float [H, W] in [0, 1] -> RGB PIL image, longest side ``side`` (area resampling)."""
    from PIL import Image

    img = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    scale = side / max(img.size)
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.BOX), scale


def _heat(values: np.ndarray, size: tuple[int, int]):
    """float [h, w] -> RGB PIL image of ``size`` (w, h), black-red-yellow-white by value / max."""
    from PIL import Image

    v = values / max(float(values.max()), 1e-12)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8)).resize(size, Image.NEAREST)


@torch.no_grad()
def save_attention_figure(model: AttentionSamplingClassifier, ds: MegaMNIST, index: int, path: Path) -> None:
    """Image with true digit boxes and sampled patches, the attention map, and the patches."""
    from PIL import Image, ImageDraw

    model.eval()
    x, label = ds[index]
    device = next(model.parameters()).device
    logits, _, result = model(x[None].to(device))
    attention = result.attention[0].cpu().numpy()
    xy = result.xy[0].cpu().numpy()
    patches = result.patches[0, :, 0].cpu().numpy()
    side = 500
    image, scale = _grey(x[0].numpy(), side)
    draw = ImageDraw.Draw(image)
    layout = ds.layout(index)
    for (bx, by, bw, bh), c in zip(layout.boxes, layout.classes):
        colour = (0, 200, 0) if c == layout.label else (60, 140, 255)
        draw.rectangle([bx * scale - 2, by * scale - 2, (bx + bw) * scale + 2, (by + bh) * scale + 2], outline=colour)
    ph, pw = patches.shape[-2:]
    for px, py in xy:
        draw.rectangle([px * scale, py * scale, (px + pw) * scale, (py + ph) * scale], outline=(255, 40, 40), width=2)
    heat = _heat(attention, image.size)
    zoom = 3
    strip_h = ph * zoom + 10
    canvas = Image.new("RGB", (image.width * 2 + 10, image.height + strip_h + 30), (255, 255, 255))
    canvas.paste(image, (0, 20))
    canvas.paste(heat, (image.width + 10, 20))
    for k, p in enumerate(patches):
        tile, _ = _grey(p, max(ph, pw) * zoom)
        canvas.paste(tile, (k * (pw * zoom + 6), image.height + 30))
    text = ImageDraw.Draw(canvas)
    text.text((0, 2), f"label {label}, predicted {int(logits.argmax())}: digits of the label (green), "
                      f"others (blue), sampled patches (red)", fill=(0, 0, 0))
    text.text((image.width + 10, 2 + 0), "attention (1/10 view)", fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def save_data_figure(path: Path, seed: int = 0) -> None:
    """One "easy" and one "hard" image side by side, each with a zoom on a digit."""
    from PIL import Image, ImageDraw

    panels = []
    for setting in ("easy", "hard"):
        ds = MegaMNIST(1, setting, seed=seed, split="train")
        image = ds.render(0)[0]
        layout = ds.layout(0)
        view, scale = _grey(image, 500)
        draw = ImageDraw.Draw(view)
        for bx, by, bw, bh in layout.boxes:
            draw.rectangle([bx * scale - 3, by * scale - 3, (bx + bw) * scale + 3, (by + bh) * scale + 3],
                           outline=(0, 200, 0))
        x0, y0 = layout.digit_xy[0]
        crop = image[max(0, y0 - 50):y0 + 78, max(0, x0 - 50):x0 + 78]
        zoom, _ = _grey(crop, 250)
        panel = Image.new("RGB", (500 + 10 + 250, 520), (255, 255, 255))
        panel.paste(view, (0, 20))
        panel.paste(zoom, (510, 20))
        ImageDraw.Draw(panel).text(
            (0, 2), f"{setting}: {image.shape[1]} x {image.shape[0]}, label {layout.label}, "
                    f"digits {layout.classes.tolist()}; right: full resolution around a digit", fill=(0, 0, 0))
        panels.append(panel)
    canvas = Image.new("RGB", (panels[0].width, sum(p.height for p in panels) + 10), (255, 255, 255))
    canvas.paste(panels[0], (0, 0))
    canvas.paste(panels[1], (0, panels[0].height + 10))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
