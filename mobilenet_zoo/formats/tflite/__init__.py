"""TFLite: one flatbuffer writer for float and uint8 models (a `serving_default` signature, a free batch, logits
and probabilities) and for the forms of TF's converter (int8 per-channel with uint8 / float32 edges, float16,
dynamic-range), a reader by structure (ours, the released files, TF converter files), and the interpreter
runner (integer models on the builtin kernels, TFLite's integer spec).

Private module: `_flatbuffer`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from mobilenet_zoo.formats import (
    FormatSpec,
    ToleranceProfile,
    private_getattr,
    reader,
    register_format,
    runner,
    sniffer,
    writer,
)

# The float forms of TF's converter, as their reference: LiteRT runs a float16 file in float32 on the dequantized
# weights, so any float target holding those weights lands within 1 LSB of the 1/256 probabilities (its logits stay
# within the float tolerance: a damaged weight moves them). A dynamic-range file runs hybrid kernels that quantize
# the activations to int8 on the fly: a float target on its dequantized weights lands within half the distance
# between the file and its float source (measured on the verify inputs when that source is known: `--source`, or
# the one `convert` recorded), else within 29 LSB: half the 59 LSB the genuine 1.0_224 graph's dynamic-range file
# lands from it (measured: float targets 12 LSB at most on 35 real photos and 8 random inputs); its top-1 changes on
# near-ties only.
FLOAT16_TOLERANCE = ToleranceProfile(
    "tflite-float16",
    lsb=1,
    float_in_lsb=True,
    top5_identical=False,
    near_ties_only=True,
    basis="float16 weights run in float32: 1 LSB of the 1/256 probabilities, logits as float",
)
DYNAMIC_RANGE_TOLERANCE = ToleranceProfile(
    "tflite-int8-dynamic",
    lsb=29,
    float_source_factor=0.5,
    float_in_lsb=True,
    float_logits=False,
    top5_identical=False,
    near_ties_only=True,
    basis="hybrid kernels: half the file's distance from its float source (29 LSB: half of 59 on the genuine graph)",
)
FORM_TOLERANCES = {"float16": FLOAT16_TOLERANCE.name, "int8-dynamic": DYNAMIC_RANGE_TOLERANCE.name}

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
        tolerances=(FLOAT16_TOLERANCE, DYNAMIC_RANGE_TOLERANCE),
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
    """The interpreter (uint8 on its builtin kernels; `xnnpack`: on TFLite's default runtime, its `peer_runner`).
    A float16 or dynamic-range file is judged (and judges its targets) by its form's tolerance profile."""
    from mobilenet_zoo.formats.tflite import _flatbuffer

    loaded = _flatbuffer.load_runner(Path(path), xnnpack=xnnpack)
    loaded.tolerance_profile = FORM_TOLERANCES.get(loaded.weight_storage)
    if loaded.integer_core and not xnnpack:  # verify shows XNNPACK's distance beside; the QDQ profile scales it
        loaded.peer_runner = partial(load_runner, Path(path), xnnpack=True)
    return loaded


@sniffer("tflite")
def content_problem(path: Path) -> str | None:
    """A flatbuffer with TFLite's file identifier (bytes 4..8)."""
    from mobilenet_zoo.formats._signatures import head

    return None if head(path, 4, 4) == b"TFL3" else "not a TFLite model (no TFL3 file identifier)"


__getattr__ = private_getattr(__name__, "_flatbuffer")
