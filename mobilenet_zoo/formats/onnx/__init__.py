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
    WriterOption,
    private_getattr,
    reader,
    register_format,
    runner,
    sniffer,
    writer,
)

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
        max_lsb=0,
        runner_threads=True,
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
    """A uint8 model as `exact` (bit-exact with TFLite's builtin kernels) or `qdq` ONNX (checked by the registry)."""
    from mobilenet_zoo.formats.onnx import _exact, _qdq

    return (_qdq if quant_format == "qdq" else _exact).write(model, out, layout=layout, **options)


def write(model, out: Path, **options) -> Path:
    """Float or uint8, whichever `model` is (the registry picks the writer)."""
    from mobilenet_zoo.formats import write as write_format

    return write_format(model, Path(out), SPEC.name, **options)


QDQ_PROFILE = "onnx-qdq"  # the tolerance profile of ONNX files in QDQ form (their metadata says quant_format: qdq)


@runner("onnx")
def load_runner(path: Path, *, threads: int | None = None):
    """An onnxruntime session (CPU; `threads`: its intra-op thread count) that takes NHWC batches whatever the
    file's input layout; a dense head's logits and softmax (a fine-tuned graph) are served as `logits` and
    `probabilities`. A file in QDQ form is judged by the `onnx-qdq` tolerance profile."""
    from mobilenet_zoo.formats.onnx import _float, _qdq, _reader

    path = Path(path)
    loaded = _float.load_runner(path, _reader.runner_head(path) if path.is_file() else None, threads=threads)
    if loaded.quantized and _qdq.is_qdq(loaded):
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


__getattr__ = private_getattr(__name__, "_float", "_exact", "_qdq", "_reader")
