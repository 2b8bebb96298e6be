"""Data shipped in the package: a real uint8 model and real images, so the tool works offline.

- `mobilenet_v1_0.25_128_quant.tflite`: trained ImageNet model (Apache-2.0, see data/LICENSE-models.txt).
- `samples/`: four photos (CC BY 2.0, see data/samples/COPYRIGHT-images.txt).
- `photos/`: 30 real photos at 256x256 (Apache-2.0, see data/photos/NOTICE.txt): the images the accuracy gate of
  `verify` measures on by default (30, where the 4 samples would fail a 92% model against a 90% gate by chance).
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parents[1] / "data"
BUNDLED_MODEL = DATA / "mobilenet_v1_0.25_128_quant.tflite"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def sample_images() -> list[Path]:
    """The bundled photos, sorted by name."""
    return image_files(DATA / "samples")


def gate_images() -> list[Path]:
    """The accuracy gate's default images: the bundled photos, sorted by name."""
    return image_files(DATA / "photos")


def image_files(folder: Path) -> list[Path]:
    """Image files directly in a folder, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def resolve_images(paths: list[Path] | None) -> list[Path]:
    """Image files given directly or inside given folders; the bundled photos when none are given."""
    from mobilenet_zoo.errors import ZooError

    if not paths:
        return sample_images()
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(image_files(path))
        elif path.exists():
            found.append(path)
        else:
            raise ZooError(f"image not found: {path}")
    if not found:
        raise ZooError("no images found in " + ", ".join(map(str, paths)))
    return found
