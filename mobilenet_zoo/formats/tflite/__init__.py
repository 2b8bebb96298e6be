"""TFLite: one flatbuffer writer for float and uint8 models (a `serving_default` signature, a free batch, logits
and probabilities) and for the forms of TF's converter (int8 per-channel with uint8 / float32 edges, float16,
dynamic-range), a reader by structure (ours, the released files, TF converter files), and the interpreter
runner (integer models on the builtin kernels, TFLite's integer spec).

Private module: `_flatbuffer`.
"""

from __future__ import annotations

from pathlib import Path

from mobilenet_zoo.formats import FormatSpec, private_getattr, reader, register_format, runner, sniffer, writer

SPEC = register_format(
    FormatSpec(
        "tflite",
        "TFLite",
        target_suffix=".tflite",
        suffixes=(".tflite",),
        runtime="tflite",
        runtime_module="ai_edge_litert",
        extra="tflite",
        writes_int8=True,
    )
)


@reader("tflite")
def read(path: Path):
    """A float, uint8 or int8 MobileNet V1 .tflite as the canonical model, by structure."""
    from mobilenet_zoo.formats.tflite import _flatbuffer

    return _flatbuffer.read(Path(path))


@writer("tflite")
@writer("tflite", quantized=True)
def write(model, out: Path) -> Path:
    """Float (float32, float16, dynamic-range), uint8 and int8 models alike (one flatbuffer writer)."""
    from mobilenet_zoo.formats.tflite import _flatbuffer

    return _flatbuffer.write(model, Path(out))


@runner("tflite")
def load_runner(path: Path, *, xnnpack: bool = False):
    """The interpreter (uint8 on its builtin kernels; `xnnpack`: on TFLite's default runtime)."""
    from mobilenet_zoo.formats.tflite import _flatbuffer

    return _flatbuffer.load_runner(Path(path), xnnpack=xnnpack)


@sniffer("tflite")
def content_problem(path: Path) -> str | None:
    """A flatbuffer with TFLite's file identifier (bytes 4..8)."""
    from mobilenet_zoo.formats._signatures import head

    return None if head(path, 4, 4) == b"TFL3" else "not a TFLite model (no TFL3 file identifier)"


__getattr__ = private_getattr(__name__, "_flatbuffer")
