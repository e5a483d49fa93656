"""Checks of written PNG files: the right kind of file, a readable size, not blank."""

from __future__ import annotations

from pathlib import Path


def assert_readable_png(path: Path, min_width: int = 600, min_height: int = 300) -> None:
    from PIL import Image, ImageStat

    path = Path(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as image:
        width, height = image.size
        assert width >= min_width and height >= min_height, (path, image.size)
        rgb = image.convert("RGB")
        # a blank (or nearly blank) image has a handful of colours and no spread
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 50, f"{path}: only {len(colours)} colours"
        assert max(ImageStat.Stat(rgb).stddev) > 20, f"{path} looks blank"
        # something besides the white background covers a real part of the image
        background = max(colours)[0] / (width * height)
        assert background < 0.9, f"{path}: {background:.0%} background"
