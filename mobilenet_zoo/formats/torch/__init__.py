"""PyTorch: a folder with the `torch.export` program (`.pt2`, NCHW by default, dynamic batch, outputs by name)
and one weights file, `model.safetensors`, in the Hugging Face layout with its `config.json` and
`preprocessor_config.json`; quantized models (uint8, and TF's converter's int8 per-channel ones with their edges) run
TFLite's integer arithmetic in torch, bit for bit.

Private modules: `_folder` (files, float writer and reader, runner), `_module` (the nn.Module), `_quant` (integer),
`_pt2` (the one way a `.pt2` is opened: checked so that nothing in it is unpickled or run).
"""

from __future__ import annotations

from pathlib import Path

from mobilenet_zoo.formats import (
    FLOAT,
    FormatSpec,
    WriterOption,
    private_getattr,
    reader,
    register_format,
    runner,
    sniffer,
    thread_setter,
    writer,
)

LAYOUT = WriterOption("layout", "input layout of the written file: NCHW or NHWC", ("NCHW", "NHWC"), "NCHW")
SLIM_WEIGHTS = WriterOption(
    "slim_weights",
    "also write the weights under their slim names (NAME.safetensors, TF layouts)",
    default=False,
    forms=(FLOAT,),
)

SPEC = register_format(
    FormatSpec(
        "torch",
        "PyTorch",
        target_suffix="_torch",
        suffixes=(".pt2", ".safetensors", ".pt"),
        folder_markers=("*.pt2", "*.safetensors"),
        runtime="torch",
        runtime_module="torch",
        extra="torch",
        writer_options=(LAYOUT, SLIM_WEIGHTS),
        writes_int8=True,
    )
)


@reader("torch")
def read(path: Path):
    """A folder `write` made, one of its files, or any Hugging Face MobileNetV1 folder."""
    from mobilenet_zoo.formats.torch import _folder, _quant

    path = Path(path)
    return _quant.read(path) if _folder.is_quantized(path) else _folder.read(path)


@writer("torch")
def write_float(model, out: Path, *, layout: str = "NCHW", slim_weights: bool = False) -> Path:
    """The `.pt2` program in `layout` and `model.safetensors` (`slim_weights`: also the slim-named weights)."""
    from mobilenet_zoo.formats.torch import _folder

    return _folder.write(model, out, layout=layout, slim_weights=slim_weights)


@writer("torch", quantized=True)
def write_quantized(model, out: Path, *, layout: str = "NCHW", slim_weights: bool = False) -> Path:
    """The uint8 or int8 program (TFLite's integer arithmetic, bit-exact, the source's edges) and its integer weights."""
    from mobilenet_zoo.formats.torch import _folder, _quant

    with _folder.exported_layout(_folder.checked_layout(layout)):
        return _quant.write(model, out)


def write(model, out: Path, **options) -> Path:
    """Float or uint8, whichever `model` is (the registry picks the writer)."""
    from mobilenet_zoo.formats import write as write_format

    return write_format(model, Path(out), SPEC.name, **options)


@runner("torch")
def load_runner(path: Path):
    """The `.pt2` program when there is one, else the module rebuilt from the weights."""
    from mobilenet_zoo.formats.torch import _folder, _quant

    path = Path(path)
    return _quant.load_runner(path) if _folder.is_quantized(path) else _folder.load_runner(path)


@thread_setter("torch")
def set_threads(threads: int) -> None:
    """torch's intra-op thread count (process wide)."""
    from mobilenet_zoo.deps import require

    require("torch").set_num_threads(threads)


@sniffer("torch")
def content_problem(path: Path) -> str | None:
    """A `.pt2`/`.pt` zip archive, or a `.safetensors` file with its JSON header (nothing is unpickled)."""
    from mobilenet_zoo.formats._signatures import safetensors_problem, zip_problem

    if path.name.lower().endswith(".safetensors"):
        problem = safetensors_problem(path)
        return f"not a safetensors file ({problem})" if problem else None
    problem = zip_problem(path)
    return f"not a PyTorch archive ({problem})" if problem else None


__getattr__ = private_getattr(__name__, "_folder", "_quant", "_module", "_pt2")
