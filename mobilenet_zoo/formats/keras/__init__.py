"""Keras: the `keras.applications.MobileNet` structure and layer names (`.keras`, legacy `.h5`), with the
include_top head or the fine-tuning layout (pooling="avg" + Dense); float models only.

Private module: `_model`.
"""

from __future__ import annotations

from pathlib import Path

from mobilenet_zoo.formats import FormatSpec, private_getattr, reader, register_format, runner, sniffer, writer

SPEC = register_format(
    FormatSpec(
        "keras",
        "Keras",
        target_suffix=".keras",
        suffixes=(".keras", ".h5"),
        runtime="keras",
        runtime_module="keras",
        extra="keras",
    )
)


@reader("keras")
def read(path: Path):
    """A Keras MobileNet V1 (include_top, or the fine-tuning layout) as the canonical model, by layer sequence."""
    from mobilenet_zoo.formats.keras import _model

    return _model.read(Path(path))


@writer("keras")
def write(model, out: Path) -> Path:
    """The keras.applications.MobileNet structure with the model's weights, head and metadata."""
    from mobilenet_zoo.formats.keras import _model

    return _model.write(model, Path(out))


def check_writable(model) -> None:
    """Raise ModelFormatError for a model keras.applications.MobileNet cannot express (uint8, feature outputs,
    dilation, a partial pool): `convert --all-formats` leaves Keras out for it."""
    from mobilenet_zoo.formats.keras import _model

    _model._check_writable(model)


@runner("keras")
def load_runner(path: Path):
    """The Keras model itself, run in TensorFlow: a Keras source's own reference."""
    from mobilenet_zoo.formats.keras import _model

    return _model.load_runner(Path(path))


@sniffer("keras")
def content_problem(path: Path) -> str | None:
    """A `.keras` zip archive, or an `.h5` file with the HDF5 signature."""
    from mobilenet_zoo.formats._signatures import hdf5_problem, zip_problem

    if path.name.lower().endswith(".h5"):
        problem = hdf5_problem(path)
        return f"not an HDF5 file ({problem})" if problem else None
    problem = zip_problem(path)
    return f"not a Keras archive ({problem})" if problem else None


__getattr__ = private_getattr(__name__, "_model")
