"""Hostile and unusual images (issue 19, defects 8 and 9): a decompression bomb is refused from its header, in one
line, by `predict` and listed as skipped by `eval`; 16-bit, 32-bit, float, CMYK, alpha and palette images decode to
the pixels of their 8-bit RGB equivalents (never clipped to white), without a warning."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilenet_zoo.errors import ImageError, ZooError
from mobilenet_zoo.model.preprocess import MAX_IMAGE_PIXELS, decode_image
from mobilenet_zoo.zoo.samples import BUNDLED_MODEL

DATA = Path(__file__).parents[1] / "data"
PHOTOS = {"bird.bmp": "n01592084", "cat.bmp": "n02124075", "parrot.jpg": "n01818515", "grace_hopper.bmp": "n02669723"}
BOMB_SIDE = 30000  # 900 Mpx: 900 MB as 1-bit pixels in Pillow, 2.7 GB as RGB; ~110 kB as a PNG


def write_png(path: Path, width: int, height: int, bit_depth: int, color_type: int, rows: Iterable[bytes]) -> Path:
    """A PNG from its filtered rows (each `b"\\0" + samples`), compressed as they come: a huge image in little memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for row in rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A valid 30000x30000 black 1-bit PNG of about 110 kB."""
    row = bytes(1 + BOMB_SIDE // 8)
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    return write_png(path, BOMB_SIDE, BOMB_SIDE, 1, 0, (row for _ in range(BOMB_SIDE)))


def strict_decode(path: Path) -> np.ndarray:
    """decode_image with every warning an error: a warning would be a second line on stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return decode_image(path)


# ---------------------------------------------------------------------------------------------- decompression bombs


def test_a_bomb_is_refused_from_its_header(bomb):
    started = time.perf_counter()
    with pytest.raises(
        ImageError, match=r"bomb\.png: image is 900,000,000 pixels \(900 Mpx\), more than the 89\.5 Mpx"
    ):
        strict_decode(bomb)
    assert time.perf_counter() - started < 2


def test_an_image_over_the_limit_that_pillow_only_warns_about_is_refused_too(tmp_path):
    """10000x10000 is over our limit but under Pillow's error limit: Pillow warns, then decodes it (~400 MB as RGB).
    The pixel data is left out: refused before decoding means it is never read."""
    path = write_png(tmp_path / "big.png", 10000, 10000, 1, 0, [b"\0" * 100])
    with pytest.raises(ImageError, match=r"big\.png: image is 10000x10000 pixels \(100 Mpx\), more than the 89\.5 Mpx"):
        strict_decode(path)


@pytest.mark.parametrize(("width", "refused"), [(9459, False), (9460, True)])
def test_the_limit_is_a_number_of_pixels(tmp_path, width, refused):
    """9459 x 9459 pixels are within the limit, 9460 x 9459 are not (both files hold no pixel data: the one within
    the limit gets as far as decoding, and is then found truncated)."""
    assert (width * 9459 > MAX_IMAGE_PIXELS) == refused
    path = write_png(tmp_path / "edge.png", width, 9459, 1, 0, [b"\0" * 100])
    message = "more than the 89.5 Mpx limit" if refused else "not a readable image"
    with pytest.raises(ImageError, match=message):
        strict_decode(path)


def test_the_uncompressed_bmp_path_obeys_the_same_limit(tmp_path):
    """A complete 24-bit BMP over the limit (a sparse file: 270 MB that take no disk) is refused before its pixels
    are read, like any other image."""
    width = height = 9500
    stride = width * 3 + (-width * 3) % 4
    header = b"BM" + struct.pack("<IHHI", 54 + stride * height, 0, 0, 54)
    header += struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, stride * height, 2835, 2835, 0, 0)
    path = tmp_path / "big.bmp"
    with open(path, "wb") as file:
        file.write(header)
        file.truncate(54 + stride * height)
    with pytest.raises(ImageError, match=r"big\.bmp: image is 9500x9500 pixels \(90\.2 Mpx\), more than the 89\.5 Mpx"):
        strict_decode(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("text.png", b"not an image\n", "not a readable image"),
        ("cut.png", None, "not a readable image"),
    ],
)
def test_unreadable_files_are_image_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:  # a real PNG cut in the middle of its pixels
        Image.open(DATA / "parrot.jpg").save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=rf"{name}: {message}"):
        strict_decode(path)
    assert issubclass(ImageError, ZooError)


def synset_folder(root: Path) -> Path:
    """ImageNet-val layout of the real photos."""
    for name, synset in PHOTOS.items():
        (root / synset).mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / name, root / synset / name)
    return root


def test_eval_lists_a_bomb_as_skipped_and_counts_the_photos(cli, bomb, tmp_path):
    model = DATA / "mobilenet_v1_0.25_128_quant.tflite"
    clean = synset_folder(tmp_path / "clean")
    hostile = synset_folder(tmp_path / "hostile")
    shutil.copy(bomb, hostile / PHOTOS["parrot.jpg"] / "huge.png")
    code, out, err = cli("eval", model, clean, "--json")
    assert code == 0, err
    expected = json.loads(out)
    code, out, err = cli("eval", model, hostile, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["images"] == 4 and report["top1"]["hits"] == expected["top1"]["hits"]
    assert report["top5"]["hits"] == expected["top5"]["hits"]
    [skipped] = report["skipped"]
    assert skipped["path"].endswith("huge.png") and "900,000,000 pixels (900 Mpx)" in skipped["reason"]


def run_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mobilenet_zoo", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def test_predict_on_a_bomb_is_one_error_line(bomb):
    started = time.perf_counter()
    result = run_cli("predict", BUNDLED_MODEL, bomb)
    elapsed = time.perf_counter() - started
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "bomb.png: image is 900,000,000 pixels (900 Mpx)" in line
    assert "unexpected" not in line
    assert elapsed < 60  # the interpreter's start-up; decoding the bomb would take minutes and gigabytes


# ---------------------------------------------------------------------------------------------- modes


def test_a_16_bit_photo_is_not_read_as_white(cli, tmp_path):
    gray8 = np.asarray(Image.open(DATA / "parrot.jpg").convert("L"))
    Image.fromarray(gray8).save(tmp_path / "gray8.png")
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    Image.fromarray(np.full_like(gray8, 255)).save(tmp_path / "white.png")
    with Image.open(tmp_path / "gray16.png") as image:
        assert image.mode == "I;16"
    names = ["gray8.png", "gray16.png", "white.png"]
    code, out, err = cli("predict", BUNDLED_MODEL, *(tmp_path / n for n in names), "--top", "1", "--json")
    assert code == 0, err
    top1 = {Path(r["image"]).name: r["top"][0]["class"] for r in json.loads(out)}
    assert top1["gray16.png"] == top1["gray8.png"] != top1["white.png"]


def _gray(shape=(24, 32)) -> np.ndarray:
    return np.random.default_rng(8).integers(0, 256, shape, dtype=np.uint8)


def _rgb(shape=(24, 32, 3)) -> np.ndarray:
    return np.random.default_rng(9).integers(0, 256, shape, dtype=np.uint8)


def _rgb_of_gray(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _save(image: Image.Image, path: Path, mode: str, **options) -> Path:
    image.save(path, **options)
    with Image.open(path) as saved:
        assert saved.mode == mode, f"{path.name} reopens as {saved.mode}, not the {mode} this case is about"
    return path


def _png16(path: Path, samples: np.ndarray, color_type: int, mode: str) -> Path:
    """A 16-bit PNG (Pillow writes only grayscale ones) of HWC big-endian samples."""
    height, width = samples.shape[:2]
    rows = (b"\0" + samples[y].astype(">u2").tobytes() for y in range(height))
    return _save(Image.open(write_png(path, width, height, 16, color_type, rows)), path, mode)


def _palette_with_transparency(path: Path) -> tuple[Path, np.ndarray]:
    palette_image = Image.fromarray(_rgb()).quantize(16)
    colors = np.array(palette_image.getpalette()[: 16 * 3], np.uint8).reshape(16, 3)
    alphas = bytes(range(0, 256, 16))  # one alpha per palette entry: Pillow warns when it converts this to RGB
    _save(palette_image, path, "P", transparency=alphas)
    return path, colors[np.asarray(palette_image)]


def _alpha_image(pixels: np.ndarray, mode: str) -> Image.Image:
    alpha = Image.fromarray(_gray()[::-1].copy())
    return Image.merge(mode, [*Image.fromarray(pixels).split(), alpha])


# name -> (writes the file into a folder, the 8-bit RGB pixels it stands for)
MODE_CASES: dict[str, Callable[[Path], tuple[Path, np.ndarray]]] = {
    "L": lambda d: (_save(Image.fromarray(_gray()), d / "l.png", "L"), _rgb_of_gray(_gray())),
    "I;16": lambda d: (
        _save(Image.fromarray(_gray().astype(np.uint16) * 257), d / "i16.png", "I;16"),
        _rgb_of_gray(_gray()),
    ),
    "I;16 low bytes": lambda d: (  # 16-bit values keep their high byte (value >> 8)
        _save(Image.fromarray(_gray().astype(np.uint16) * 256 + 255), d / "i16.tif", "I;16"),
        _rgb_of_gray(_gray()),
    ),
    "I;16B": lambda d: (
        _save(Image.frombytes("I;16B", (32, 24), (_gray().astype(">u2") * 257).tobytes()), d / "i16b.tif", "I;16B"),
        _rgb_of_gray(_gray()),
    ),
    "I 16-bit values": lambda d: (
        _save(Image.fromarray(_gray().astype(np.int32) * 257), d / "i.tif", "I"),
        _rgb_of_gray(_gray()),
    ),
    "I 8-bit values": lambda d: (
        _save(Image.fromarray(_gray()).convert("I"), d / "i8.tif", "I"),
        _rgb_of_gray(_gray()),
    ),
    "I from a 16-bit PGM": lambda d: (
        _save(Image.fromarray(_gray().astype(np.uint16) * 257), d / "i.pgm", "I"),
        _rgb_of_gray(_gray()),
    ),
    "F 0..1": lambda d: (
        _save(Image.fromarray(_gray().astype(np.float32) / 255), d / "f1.tif", "F"),
        _rgb_of_gray(_gray()),
    ),
    "F 0..255": lambda d: (
        _save(Image.fromarray(_gray().astype(np.float32)), d / "f255.tif", "F"),
        _rgb_of_gray(_gray()),
    ),
    "CMYK": lambda d: (_save(Image.fromarray(_rgb()).convert("CMYK"), d / "cmyk.tif", "CMYK"), _rgb()),
    "LA": lambda d: (_save(_alpha_image(_gray(), "LA"), d / "la.png", "LA"), _rgb_of_gray(_gray())),
    "RGBA": lambda d: (_save(_alpha_image(_rgb(), "RGBA"), d / "rgba.png", "RGBA"), _rgb()),
    "P with transparency": lambda d: _palette_with_transparency(d / "p.png"),
    "1": lambda d: (
        _save(Image.fromarray(_gray() > 127), d / "bits.png", "1"),
        _rgb_of_gray(np.where(_gray() > 127, 255, 0).astype(np.uint8)),
    ),
    "RGB 16-bit": lambda d: (_png16(d / "rgb16.png", _rgb().astype(np.uint16) * 257, 2, "RGB"), _rgb()),
}


@pytest.mark.parametrize("case", MODE_CASES)
def test_each_mode_reads_as_its_8_bit_rgb_equivalent(tmp_path, case):
    path, expected = MODE_CASES[case](tmp_path)
    pixels = strict_decode(path)
    assert pixels.dtype == np.uint8 and pixels.shape == expected.shape
    assert np.abs(pixels.astype(int) - expected).max() <= 1
