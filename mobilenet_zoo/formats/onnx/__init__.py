"""ONNX: float graphs built node by node (BatchNorm folded, TF SAME pads), uint8 graphs in two forms (`exact`:
TFLite's integer arithmetic, bit-exact; `qdq`: onnxruntime's quantized kernels), and a reader of any MobileNet V1
ONNX graph (ours, tf2onnx's float and QDQ graphs) by structure.

Private modules: `_float` (float writer, runner, graph builder), `_exact` and `_qdq` (uint8 writers), `_reader`.
"""

from __future__ import annotations

from pathlib import Path

from mobilenet_zoo.formats import (
    QUANTIZED,
    FormatSpec,
    ToleranceProfile,
    WriterOption,
    private_getattr,
    reader,
    register_format,
    runner,
    sniffer,
    writer,
)

EXACT_TOLERANCE = ToleranceProfile("onnx", 0, basis="the exact form runs TFLite's integer arithmetic: 0 LSB")
# QDQ files requantize in onnxruntime's float32 (round half to even), not TFLite's Q31 fixed point. Measured on the
# two real uint8 models over 8 real photos + 1000 seeded random inputs each: output at most 19 LSB (TFLite's own
# XNNPACK: 20), logits at most 4 LSB; feature maps (any layer, output stride 8 to 32, 108 inputs) at most 91 LSB on
# single elements, exactly where TFLite's XNNPACK lands too. The allowances are 1.5x those, and 1.5x XNNPACK's own
# distance on the same inputs where the reference measured it. The logits bound is the sharp one: one weight scale
# 3% off moves the logits by 10 LSB and more, the output often less than XNNPACK does.
QDQ_TOLERANCE = ToleranceProfile(
    "onnx-qdq",  # ONNX files in QDQ form (their metadata says quant_format: qdq)
    lsb=29,
    logits_lsb=6,
    feature_lsb=137,
    xnnpack_factor=1.5,
    float_in_lsb=True,  # behind float edges: the dequantized 1/256 steps
    float_logits=False,
    top5_identical=False,
    basis="onnxruntime's float32 requantization: within 1.5x TFLite's XNNPACK distance (29 LSB when not measured)",
)
QDQ_PROFILE = QDQ_TOLERANCE.name


LAYOUT = WriterOption("layout", "input layout of the written file: NCHW or NHWC", ("NCHW", "NHWC"), "NCHW")
QUANT_FORMAT = WriterOption(
    "quant_format",
    "form of a quantized file: exact (TFLite's integer arithmetic, bit-exact; the default) or qdq (onnxruntime's "
    "quantized kernels: faster, a few LSB off); float models ignore it",
    ("exact", "qdq"),
    "exact",
    forms=(QUANTIZED,),
)

SPEC = register_format(
    FormatSpec(
        "onnx",
        "ONNX",
        target_suffix=".onnx",
        suffixes=(".onnx",),
        runtime="onnxruntime",
        runtime_module="onnxruntime",
        extra="onnx",
        tolerances=(EXACT_TOLERANCE, QDQ_TOLERANCE),
        runner_threads=True,
        writes_int8=True,
        writer_options=(LAYOUT, QUANT_FORMAT),
    )
)


@reader("onnx")
def read(path: Path):
    """Any MobileNet V1 ONNX graph (ours, tf2onnx's, float or quantized) as the canonical model, by structure."""
    from mobilenet_zoo.formats.onnx import _reader

    return _reader.read(Path(path))


@writer("onnx")
def write_float(model, out: Path, *, layout: str = "NCHW", quant_format: str = "exact", **options) -> Path:
    """A float model as an ONNX file with NCHW or NHWC input (`quant_format` is for uint8 models only)."""
    from mobilenet_zoo.formats.onnx import _float

    return _float.write(model, out, layout=layout, quant_format=quant_format, **options)


@writer("onnx", quantized=True)
def write_quantized(model, out: Path, *, layout: str = "NCHW", quant_format: str = "exact", **options) -> Path:
    """A uint8 per-tensor or int8 per-channel model as `exact` (bit-exact with TFLite's builtin kernels) or `qdq`
    ONNX (onnxruntime's integer kernels); `quant_format` is checked by the registry."""
    from mobilenet_zoo.formats.onnx import _exact, _qdq

    return (_qdq if quant_format == "qdq" else _exact).write(model, out, layout=layout, **options)


def write(model, out: Path, **options) -> Path:
    """Float or uint8, whichever `model` is (the registry picks the writer)."""
    from mobilenet_zoo.formats import write as write_format

    return write_format(model, Path(out), SPEC.name, **options)


@runner("onnx")
def load_runner(path: Path, *, threads: int | None = None):
    """An onnxruntime session (CPU; `threads`: its intra-op thread count) that takes NHWC batches whatever the
    file's input layout; a dense head's logits and softmax (a fine-tuned graph) are served as `logits` and
    `probabilities`. A file in QDQ form is judged by the `onnx-qdq` tolerance profile; a graph taking int8 images
    takes uint8 pixels and gives uint8 probabilities, as the TFLite runner presents the same model."""
    from mobilenet_zoo.formats.onnx import _float, _qdq, _reader

    path = Path(path)
    loaded = _float.load_runner(path, _reader.runner_head(path) if path.is_file() else None, threads=threads)
    if _qdq.is_qdq(loaded):  # uint8 or int8 inside, whatever its edges take
        loaded.tolerance_profile = QDQ_PROFILE
    return loaded


@sniffer("onnx")
def content_problem(path: Path) -> str | None:
    """A ModelProto that parses and holds a graph (protobuf parsing runs nothing); without onnx installed, its first
    field (ir_version)."""
    from mobilenet_zoo.formats._signatures import head

    try:
        import onnx
    except ImportError:
        return None if head(path, 1) == b"\x08" else "not an ONNX model (no ONNX model header)"
    from google.protobuf.message import DecodeError

    try:
        model = onnx.ModelProto.FromString(path.read_bytes())
    except (DecodeError, ValueError, RuntimeError):
        return "not an ONNX model (does not parse as an ONNX ModelProto)"
    return None if model.ir_version > 0 and len(model.graph.node) > 0 else "not an ONNX model (no graph in it)"


__getattr__ = private_getattr(__name__, "_float", "_exact", "_qdq", "_reader", "_qdq_reader")
