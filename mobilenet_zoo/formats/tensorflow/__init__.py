"""TensorFlow: slim checkpoints, frozen graphs (read with plain protobuf, no TensorFlow needed) and SavedModels;
writes SavedModels (float: the slim graph as a TF2 module; uint8 and TF's converter's int8 per-channel models:
TFLite's integer arithmetic, edges included); runs frozen
graphs (the float reference) and SavedModels.

Private modules: `_slim` (the slim graph, float reader, writer and runners), `_quant` (quantized SavedModels),
`_graphdef` (the GraphDef messages, defined at run time).
"""

from __future__ import annotations

from pathlib import Path

from mobilenet_zoo.formats import (
    FormatSpec,
    private_getattr,
    reader,
    register_format,
    runner,
    sniffer,
    thread_setter,
    writer,
)

SPEC = register_format(
    FormatSpec(
        "tf",
        "TensorFlow SavedModel",
        target_suffix="_saved_model",
        suffixes=(".pb", ".ckpt"),
        folder_markers=("saved_model.pb",),
        runtime="tf",
        runtime_module="tensorflow",
        extra="tf",
        writes_int8=True,
        priority=1,
    )
)


def _quantized_saved_model(path: Path) -> bool:
    from mobilenet_zoo.formats.tensorflow import _quant

    return path.is_dir() and _quant.is_quantized(path)


@reader("tf")
def read(path: Path):
    """A slim checkpoint (prefix or any of its files), a frozen graph, or a SavedModel folder (float or quantized)."""
    from mobilenet_zoo.formats.tensorflow import _quant, _slim

    path = Path(path)
    return _quant.read(path) if _quantized_saved_model(path) else _slim.read(path)


@writer("tf")
def write_float(model, out: Path) -> Path:
    """A TF2 SavedModel: `tf.saved_model.load(out)(images)` and its `serving_default` signature."""
    from mobilenet_zoo.formats.tensorflow import _slim

    return _slim.write(model, out)


@writer("tf", quantized=True)
def write_quantized(model, out: Path) -> Path:
    """A SavedModel running TFLite's integer arithmetic (uint8, or int8 per-channel with its edges), bit-exact."""
    from mobilenet_zoo.formats.tensorflow import _quant

    return _quant.write(model, out)


def write(model, out: Path, **options) -> Path:
    """Float or quantized, whichever `model` is (the registry picks the writer)."""
    from mobilenet_zoo.formats import write as write_format

    return write_format(model, Path(out), SPEC.name, **options)


@runner("tf")
def load_runner(path: Path):
    """The original frozen graph (the float reference forward pass) or a SavedModel, run in TensorFlow."""
    from mobilenet_zoo.formats.tensorflow import _quant, _slim

    path = Path(path)
    return _quant.load_runner(path) if _quantized_saved_model(path) else _slim.load_runner(path)


def slim_session(model, **options):
    """A TF1 session holding slim's own graph with `model`'s weights (checkpoint, frozen graph, eval graph, TFLite):
    what the release's files are made of (`mobilenet_zoo.testing.tarball` builds official-layout tarballs with it)."""
    from mobilenet_zoo.formats.tensorflow import _slim

    return _slim.slim_session(model, **options)


@thread_setter("tf")
def set_threads(threads: int) -> None:
    """TensorFlow's intra- and inter-op thread counts (process wide; before TensorFlow runs anything)."""
    from mobilenet_zoo.deps import require

    tf = require("tensorflow")
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def reference_stand_in(path: Path) -> Path | None:
    """What runs as the reference for an official float frozen graph when TensorFlow is not installed: the official
    float `.tflite` beside it (same release, same weights); None when the graph itself runs."""
    from mobilenet_zoo.formats.tensorflow import _slim

    return _slim.tflite_stand_in(Path(path))


@sniffer("tf")
def content_problem(path: Path) -> str | None:
    """A GraphDef that parses and has nodes; a lone checkpoint file is no model."""
    from mobilenet_zoo.errors import ModelFormatError
    from mobilenet_zoo.formats.tensorflow._graphdef import read_graph_def

    if not path.name.lower().endswith(".pb"):
        return "not a TensorFlow GraphDef (a checkpoint file alone is no model: use the tarball)"
    try:
        graph_def = read_graph_def(path)
    except ModelFormatError:
        return "not a TensorFlow GraphDef (does not parse as a GraphDef)"
    return None if len(graph_def.node) > 0 else "not a TensorFlow GraphDef (no nodes in it)"


__getattr__ = private_getattr(__name__, "_slim", "_quant", "_graphdef")
