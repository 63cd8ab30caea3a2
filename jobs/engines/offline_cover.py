"""Offline cover engine: generative cover art from a seeded palette, with the title on it.

A cover is a 512x512 PNG: a gradient sky, one of several seeded compositions (sunset over a
grid, waves, rings, stacked hills, a Bauhaus block pattern, a starfield with a moon), a fine
grain, and the song's title set in Pillow's bundled font on a translucent band so it stays
legible on any background. Mood and genre words in the tags tint the palette (warm, cold,
dark, neon, pastel, earthy); the same title, tags and seed always give the same bytes.
"""
from __future__ import annotations

import colorsys
import io
import math
import re
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["OfflineCover"]

SIZE = 512
PNG_COMPRESS_LEVEL = 3
"""zlib level of the cover PNGs (both cover engines). Measured on a 512x512 cover: level 3 takes
about 70 ms and the same bytes as Pillow's default 6 (about 180 ms); ``optimize=True`` (about
330 ms) re-encodes the image to save 3 %, which is not worth it on a job's hot path."""

# Tints: (hue centre 0..1, hue spread, saturation, lightness) and the words that call them.
_TINTS: dict[str, tuple[tuple[float, float, float, float], tuple[str, ...]]] = {
    "neon": ((0.86, 0.22, 0.85, 0.55), ("synthwave", "retrowave", "80s", "neon", "cyberpunk",
                                        "vaporwave", "edm", "techno", "house", "trance", "club")),
    "dark": ((0.70, 0.15, 0.45, 0.22), ("dark", "sinister", "gothic", "metal", "ominous",
                                        "trap", "drill", "haunting", "night")),
    "cold": ((0.58, 0.10, 0.55, 0.45), ("sad", "melancholic", "lonely", "rain", "rainy", "winter",
                                        "cold", "blue", "ambient", "calm", "ocean")),
    "warm": ((0.07, 0.08, 0.75, 0.55), ("happy", "summer", "sunny", "upbeat", "warm", "funk",
                                        "disco", "latin", "reggae", "tropical", "joyful")),
    "fire": ((0.02, 0.05, 0.85, 0.45), ("rock", "energetic", "angry", "aggressive", "intense",
                                        "punk", "fire", "epic")),
    "pastel": ((0.92, 0.35, 0.40, 0.75), ("dreamy", "dream pop", "lullaby", "cute", "playful",
                                          "k-pop", "romantic", "love", "sweet")),
    "earth": ((0.10, 0.10, 0.40, 0.45), ("folk", "acoustic", "country", "lofi", "lo-fi", "jazz",
                                         "blues", "soul", "chill", "nostalgic", "autumn")),
}


def _h(*parts: object) -> int:
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode("utf-8"))


def _rgb(h: float, s: float, l: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hls_to_rgb(h % 1.0, min(max(l, 0), 1), min(max(s, 0), 1))
    return int(r * 255), int(g * 255), int(b * 255)


class _Palette:
    """Five colours from a tint and the seed: two sky colours, an accent, a shape and an ink."""

    def __init__(self, tags: str, rng: np.random.Generator):
        text = (tags or "").lower()
        best: tuple[int, str] | None = None
        for name, (_, words) in _TINTS.items():
            for w in words:
                m = re.search(r"(?<![a-z0-9])" + re.escape(w) + r"(?![a-z0-9])", text)
                if m and (best is None or m.start() < best[0]):
                    best = (m.start(), name)
        if best is None:
            hue, spread, sat, light = float(rng.random()), 0.25, 0.6, 0.5
        else:
            (hue, spread, sat, light), _ = _TINTS[best[1]]
            hue = hue + float(rng.uniform(-0.04, 0.04))
        self.name = best[1] if best else "free"
        j = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
        self.sky_top = _rgb(hue + j(-spread, 0), sat * j(0.7, 1.0), light * j(0.35, 0.6))
        self.sky_bottom = _rgb(hue + j(0, spread), sat * j(0.8, 1.1), light * j(0.9, 1.3))
        self.accent = _rgb(hue + 0.5 * spread + j(0.05, 0.15), min(1, sat * 1.2), min(0.85, light * 1.35 + 0.1))
        self.shape = _rgb(hue - spread * j(0.3, 0.8), sat * j(0.6, 1.0), light * j(0.45, 0.8))
        self.shape2 = _rgb(hue + spread * j(0.3, 0.9), sat * j(0.5, 0.9), light * j(0.6, 1.1))
        self.dark = light < 0.35


class OfflineCover:
    """The generative painter behind the CoverEngine interface (CPU, no weights)."""

    name = "offline-painter"
    offline = True
    size = SIZE

    def paint(self, title: str, tags: str, seed: int) -> bytes:
        rng = np.random.default_rng(_h("cover", seed, title, tags))
        pal = _Palette(tags, rng)
        img = self._sky(pal, rng)
        style = int(rng.integers(6))
        layer = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        [self._sunset_grid, self._waves, self._rings, self._hills, self._bauhaus, self._stars][style](d, pal, rng)
        img = Image.alpha_composite(img, layer)
        img = self._grain(img, rng)
        img = self._title(img, title, pal, rng)
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return buf.getvalue()

    def paint_many(self, title: str, tags: str, seeds: list[int]) -> list[bytes]:
        """One cover per seed (the painter has no batch to share: a loop)."""
        return [self.paint(title, tags, seed) for seed in seeds]

    # ------------------------------------------------------------------ layers

    @staticmethod
    def _sky(pal: _Palette, rng: np.random.Generator) -> Image.Image:
        y = np.linspace(0.0, 1.0, SIZE, dtype=np.float32)[:, None]
        x = np.linspace(-1.0, 1.0, SIZE, dtype=np.float32)[None, :]
        tilt = float(rng.uniform(-0.25, 0.25))
        t = np.clip(y + tilt * x, 0, 1) ** float(rng.uniform(0.7, 1.4))
        top = np.array(pal.sky_top, np.float32)
        bottom = np.array(pal.sky_bottom, np.float32)
        rgb = top[None, None, :] * (1 - t[..., None]) + bottom[None, None, :] * t[..., None]
        alpha = np.full((SIZE, SIZE, 1), 255, np.float32)
        return Image.fromarray(np.concatenate([rgb, alpha], axis=2).clip(0, 255).astype(np.uint8), "RGBA")

    @staticmethod
    def _sunset_grid(d: ImageDraw.ImageDraw, pal: _Palette, rng: np.random.Generator) -> None:
        horizon = int(SIZE * rng.uniform(0.55, 0.68))
        r = int(SIZE * rng.uniform(0.18, 0.28))
        cx = int(SIZE * rng.uniform(0.35, 0.65))
        d.ellipse([cx - r, horizon - r, cx + r, horizon + r], fill=pal.accent + (255,))
        # sun stripes
        for k in range(5):
            yy = horizon - r // 2 + k * r // 8
            d.rectangle([cx - r, yy, cx + r, yy + max(2, k + 1)], fill=pal.sky_bottom + (255,))
        d.rectangle([0, horizon, SIZE, SIZE], fill=pal.shape + (255,))
        for k in range(1, 14):
            yy = horizon + int((SIZE - horizon) * (k / 13) ** 1.8)
            d.line([0, yy, SIZE, yy], fill=pal.shape2 + (200,), width=2)
        for k in range(-12, 13):
            d.line([cx + k * 14, horizon, cx + k * 110, SIZE], fill=pal.shape2 + (200,), width=2)

    @staticmethod
    def _waves(d: ImageDraw.ImageDraw, pal: _Palette, rng: np.random.Generator) -> None:
        n = int(rng.integers(5, 9))
        xs = np.linspace(0, SIZE, 80)
        for k in range(n):
            base = SIZE * (0.3 + 0.7 * k / n)
            amp = rng.uniform(10, 40)
            freq = rng.uniform(1.0, 3.0)
            ph = rng.uniform(0, 6.28)
            ys = base + amp * np.sin(xs / SIZE * freq * 2 * np.pi + ph)
            pts = [(float(x), float(y)) for x, y in zip(xs, ys)] + [(SIZE, SIZE), (0, SIZE)]
            mix = k / max(1, n - 1)
            col = tuple(int(a * (1 - mix) + b * mix) for a, b in zip(pal.shape2, pal.shape))
            d.polygon(pts, fill=col + (int(170 + 80 * mix),))
        r = int(rng.uniform(30, 60))
        cx, cy = int(rng.uniform(80, 430)), int(rng.uniform(60, 150))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=pal.accent + (235,))

    @staticmethod
    def _rings(d: ImageDraw.ImageDraw, pal: _Palette, rng: np.random.Generator) -> None:
        cx, cy = SIZE * rng.uniform(0.3, 0.7), SIZE * rng.uniform(0.3, 0.6)
        n = int(rng.integers(7, 14))
        for k in range(n, 0, -1):
            r = k * SIZE * 0.55 / n
            col = pal.accent if k % 2 else pal.shape
            d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=col + (230,), width=int(rng.integers(3, 10)))
        for _ in range(int(rng.integers(3, 7))):
            a = rng.uniform(0, 2 * math.pi)
            rr = rng.uniform(60, 220)
            px, py = cx + rr * math.cos(a), cy + rr * math.sin(a)
            s = rng.uniform(6, 18)
            d.ellipse([px - s, py - s, px + s, py + s], fill=pal.shape2 + (255,))

    @staticmethod
    def _hills(d: ImageDraw.ImageDraw, pal: _Palette, rng: np.random.Generator) -> None:
        r = int(rng.uniform(35, 70))
        cx, cy = int(rng.uniform(90, 420)), int(rng.uniform(70, 190))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=pal.accent + (255,))
        n = int(rng.integers(3, 6))
        for k in range(n):
            base = SIZE * (0.45 + 0.5 * k / n)
            xs = np.linspace(0, SIZE, 9)
            ys = base - rng.uniform(0, 90, size=xs.shape)
            pts = [(float(x), float(y)) for x, y in zip(xs, ys)] + [(SIZE, SIZE), (0, SIZE)]
            mix = (k + 1) / n
            col = tuple(int(a * (1 - mix) + b * mix * 0.6) for a, b in zip(pal.shape2, pal.shape))
            d.polygon(pts, fill=col + (255,))

    @staticmethod
    def _bauhaus(d: ImageDraw.ImageDraw, pal: _Palette, rng: np.random.Generator) -> None:
        cells = int(rng.integers(3, 6))
        step = SIZE / cells
        colours = [pal.accent, pal.shape, pal.shape2, pal.sky_top]
        for i in range(cells):
            for j in range(cells):
                x0, y0 = i * step, j * step
                c = colours[int(rng.integers(len(colours)))] + (235,)
                kind = int(rng.integers(4))
                if kind == 0:
                    d.ellipse([x0 + 6, y0 + 6, x0 + step - 6, y0 + step - 6], fill=c)
                elif kind == 1:
                    d.pieslice([x0 - step, y0, x0 + step, y0 + 2 * step], -90, 0, fill=c)
                elif kind == 2:
                    d.polygon([(x0, y0 + step), (x0 + step, y0 + step), (x0 + step / 2, y0)], fill=c)
                else:
                    d.rectangle([x0 + step * 0.2, y0 + step * 0.2, x0 + step * 0.8, y0 + step * 0.8], fill=c)

    @staticmethod
    def _stars(d: ImageDraw.ImageDraw, pal: _Palette, rng: np.random.Generator) -> None:
        for _ in range(220):
            x, y = rng.uniform(0, SIZE), rng.uniform(0, SIZE)
            s = rng.choice([0.6, 1.0, 1.5, 2.2], p=[0.5, 0.3, 0.15, 0.05])
            a = int(rng.uniform(120, 255))
            d.ellipse([x - s, y - s, x + s, y + s], fill=(255, 255, 240, a))
        r = int(rng.uniform(50, 90))
        cx, cy = int(rng.uniform(120, 390)), int(rng.uniform(100, 220))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=pal.accent + (255,))
        off = int(r * rng.uniform(0.3, 0.6))
        d.ellipse([cx - r + off, cy - r - off // 3, cx + r + off, cy + r - off // 3], fill=pal.sky_top + (255,))

    @staticmethod
    def _grain(img: Image.Image, rng: np.random.Generator) -> Image.Image:
        a = np.asarray(img).astype(np.int16)
        noise = rng.integers(-9, 10, size=(SIZE, SIZE, 1), dtype=np.int16)
        a[..., :3] = np.clip(a[..., :3] + noise, 0, 255)
        return Image.fromarray(a.astype(np.uint8), "RGBA")

    # ------------------------------------------------------------------ title

    @staticmethod
    def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
        try:
            return ImageFont.load_default(size=size)
        except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
            return ImageFont.load_default()

    def _title(self, img: Image.Image, title: str, pal: _Palette, rng: np.random.Generator) -> Image.Image:
        title = re.sub(r"\s+", " ", (title or "").strip())[:120] or "Tunesmith"
        margin = 36
        width = SIZE - 2 * margin
        size = 54 if len(title) <= 14 else 44 if len(title) <= 28 else 34 if len(title) <= 50 else 26
        lines: list[str] = []
        font = self._font(size)
        draw = ImageDraw.Draw(img)
        while True:
            lines = self._wrap(draw, title, font, width)
            if len(lines) <= 3 or size <= 20:
                break
            size -= 4
            font = self._font(size)
        if len(lines) > 3:
            lines = lines[:3]
            lines[-1] = lines[-1].rstrip(" .,;:") + "…"
        line_h = int(size * 1.2)
        block_h = line_h * len(lines)
        top = bool(rng.random() < 0.3)
        y0 = margin if top else SIZE - margin - block_h
        band = Image.new("RGBA", img.size, (0, 0, 0, 0))
        bd = ImageDraw.Draw(band)
        bd.rounded_rectangle([margin - 16, y0 - 14, SIZE - margin + 16, y0 + block_h + 10], radius=14,
                             fill=(10, 10, 16, 150))
        band = band.filter(ImageFilter.GaussianBlur(2))
        img = Image.alpha_composite(img, band)
        draw = ImageDraw.Draw(img)
        for i, line in enumerate(lines):
            w = draw.textlength(line, font=font)
            x = (SIZE - w) / 2
            y = y0 + i * line_h
            draw.text((x + 2, y + 2), line, font=font, fill=(0, 0, 0, 200))
            draw.text((x, y), line, font=font, fill=(250, 248, 240, 255))
        return img

    @staticmethod
    def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
        words = text.split(" ")
        lines: list[str] = []
        cur = ""
        for word in words:
            trial = f"{cur} {word}".strip()
            if draw.textlength(trial, font=font) <= width or not cur:
                cur = trial
            else:
                lines.append(cur)
                cur = word
        if cur:
            lines.append(cur)
        # A single word wider than the line: cut it with an ellipsis.
        out = []
        for line in lines:
            while draw.textlength(line, font=font) > width and len(line) > 2:
                line = line[:-2] + "…"
            out.append(line)
        return out
