"""PyTorch format: a folder with one copy of the weights, an exported program, and a Hugging Face model.

`write(model, out, layout="NCHW")` builds the folder `out` (e.g. `mobilenet_v1_0.25_128_torch/`) holding:
    NAME.pt2           a `torch.export` program: `torch.export.load(path).module()(images)` takes float32 images in
                       [-1, 1], N x 3 x H x W (`layout="NHWC"`: N x H x W x 3), any batch size, and returns a dict
                       {"logits", "probabilities", feature name...}; maps (feature maps, logits maps) in the
                       file's layout (`torch_model.ProgramInterface`);
    model.safetensors  the weights once, as transformers names and lays them out, with our metadata: `read` gives
                       the canonical model back bit for bit (a folded model's biases are the betas of identity
                       BatchNorms, restored as biases);
    config.json + preprocessor_config.json
                       with model.safetensors, what `transformers.MobileNetV1ForImageClassification`,
                       `AutoImageProcessor` and `pipeline("image-classification")` load (default backbone only);
    NAME.safetensors   only with `slim_weights=True`: the canonical weights verbatim (slim names, TF layouts).
Our files record the variant and its backbone options (`model_metadata`): as safetensors metadata and as the
`.pt2` archive's extra file `mobilenet_zoo.json` (which also records the program's `input_layout`); `read`
restores `model.backbone` from them. The program is built as `model.backbone` says (features, pooling, output
stride, input size). A transformers config cannot express those options (global pooling only, no output
stride, no chosen feature outputs), so config.json and preprocessor_config.json are written for the default
backbone only. Folders written before (NAME.safetensors + an NHWC `.pt2` returning a tuple, plus Hugging Face
files) read and run as they did.
Quantized models are written by `mobilenet_zoo.formats.torch._quant` (NAME.safetensors holds the integers), their
program wrapped by `save_program` as the float one is: uint8 images in the file's layout, a dict of uint8 outputs.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats.torch import _pt2
from mobilenet_zoo.fsutil import atomic_folder
from mobilenet_zoo.model.arch import BN_EPSILON, Backbone, ModelConfig, placed_layers
from mobilenet_zoo.model.canonical import PRODUCER, Classes, MobileNetV1Model, config_from_metadata, imagenet_names
from mobilenet_zoo.model.preprocess import CENTRAL_FRACTION

WEIGHTS_SUFFIX = ".safetensors"
PROGRAM_SUFFIX = ".pt2"
PROGRAM_METADATA = _pt2.PROGRAM_METADATA  # extra file inside the .pt2 archive
HF_CONFIG = "config.json"
HF_PREPROCESSOR = "preprocessor_config.json"
HF_WEIGHTS = "model.safetensors"
HF_MODEL_TYPE = "mobilenet_v1"
HF_MIN_DEPTH = 8  # the channel floor of arch.depth
HF_BILINEAR = 2  # PIL.Image.BILINEAR, transformers' PILImageResampling.BILINEAR
EXPORT_EXAMPLE_BATCH = 2  # a batch of 1 would let torch.export specialize the batch dimension
LAYOUTS = ("NCHW", "NHWC")  # input layouts of the program
DEFAULT_LAYOUT = "NCHW"
PROGRAM_NETWORK_PREFIX = "network."  # state-dict names in a program: ProgramInterface's submodule
INPUT_LAYOUT_KEY = "input_layout"  # in the program's metadata; absent in files older than the layout option (NHWC)
WEIGHT_LAYOUT_KEY = "layout"  # in safetensors metadata: how the weights are named and laid out
TF_WEIGHTS, HF_WEIGHTS_LAYOUT = "tf", "transformers"

# The layout `save_program` exports when not told: the quantized writer (`torch_quant.write`) takes no layout
# option, so `write` hands the requested one to `save_program` through this variable.
_program_layout: ContextVar[str] = ContextVar("program_layout", default=DEFAULT_LAYOUT)


def write(model: MobileNetV1Model, out: Path, *, layout: str = DEFAULT_LAYOUT, slim_weights: bool = False) -> Path:
    """Write `model` as the folder `out` (built in a temporary folder beside it, then renamed); returns `out`.

    `layout`: the program's input layout, NCHW or NHWC. `slim_weights`: also write NAME.safetensors, the
    canonical weights (slim names, TF layouts); quantized folders always hold theirs.
    """
    layout = checked_layout(layout)
    model = model.validate()
    out = Path(out)
    from mobilenet_zoo.formats.torch._module import build_module

    with atomic_folder(out) as staging:
        name, metadata = model.config.name, model_metadata(model)
        save_safetensors(hf_state_dict(model), staging / HF_WEIGHTS, hf_weights_metadata(model))
        if model.backbone.is_default and not any(
            placed.valid for placed in placed_layers(model.config)
        ):  # transformers pads SAME
            write_hf_configs(model, staging)
        if slim_weights:
            save_safetensors(model.weights, staging / f"{name}{WEIGHTS_SUFFIX}", metadata)
        program = staging / f"{name}{PROGRAM_SUFFIX}"
        save_program(build_module(model), model.input_size, "float32", program, metadata, layout)
    return out


def checked_layout(layout: str) -> str:
    """The input layout in capitals; unknown layouts are refused."""
    if str(layout).upper() not in LAYOUTS:
        raise ModelFormatError(f"unknown PyTorch input layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return str(layout).upper()


@contextmanager
def exported_layout(layout: str) -> Iterator[None]:
    """Inside the block, `save_program` exports programs with this input layout (the quantized writer's path)."""
    token = _program_layout.set(layout)
    try:
        yield
    finally:
        _program_layout.reset(token)


def read(path: Path) -> MobileNetV1Model:
    """The canonical model of a folder `write` made, one of its files, or any Hugging Face MobileNetV1 folder."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if path.suffix == PROGRAM_SUFFIX:
        return _read_program(path)
    if path.suffix == WEIGHTS_SUFFIX:
        return _read_safetensors(path)
    raise ModelFormatError(
        f"{path}: not a PyTorch model (expected a folder, a {WEIGHTS_SUFFIX} or a {PROGRAM_SUFFIX} file)"
    )


def load_runner(path: Path) -> TorchRunner:
    """Run the `.pt2` program when there is one, else the module rebuilt from the weights `read` finds."""
    path = Path(path)
    from mobilenet_zoo.formats.torch._module import build_module, output_names

    program = program_module(path)
    if program is not None:
        return TorchRunner(*program, output_names=output_names(recorded_backbone(path)))
    model = read(path)
    return TorchRunner(build_module(model), model.input_size, output_names=output_names(model.backbone))


@dataclass
class TorchRunner:
    """Calls a MobileNetV1 module or exported program on NHWC float32 batches under inference mode.

    `forward` takes an NHWC batch and returns a tuple (`torch_model.MobileNetV1`, or `program_module`'s
    `ProgramCall`); `output_names` names its members (`torch_model.output_names`).
    """

    forward: Callable
    resolution: int | None
    output_names: tuple[str, ...]
    quantized: bool = False

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = require("torch")
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        with torch.inference_mode():
            outputs = self.forward(batch)
        return {name: output.numpy() for name, output in zip(self.output_names, outputs, strict=True)}


def model_metadata(model: MobileNetV1Model) -> dict[str, str]:
    """What our files record about the variant (safetensors metadata values must be strings)."""
    return {
        **model.metadata(),
        "num_classes": str(model.config.num_classes),
        "quantized": str(model.config.quantized).lower(),
        "folded": str(model.is_folded).lower(),
        WEIGHT_LAYOUT_KEY: TF_WEIGHTS,
    }


def hf_weights_metadata(model: MobileNetV1Model) -> dict[str, str]:
    """The metadata of our model.safetensors: ours, its layout, and the "format" transformers requires."""
    return {**model_metadata(model), WEIGHT_LAYOUT_KEY: HF_WEIGHTS_LAYOUT, "format": "pt"}


def recorded_metadata(path: Path) -> dict[str, str]:
    """The metadata of our safetensors or `.pt2` file, or of the folder holding them; {} when none is recorded."""
    path = Path(path)
    if path.is_dir():
        own = _our_weights_file(path) or own_file(path, PROGRAM_SUFFIX)
        return recorded_metadata(own) if own else {}
    if path.suffix == PROGRAM_SUFFIX:
        return _program_metadata(path)
    if path.suffix == WEIGHTS_SUFFIX:
        return _safetensors_metadata(path)
    return {}


def recorded_backbone(path: Path) -> Backbone:
    """The backbone options our file (or folder) records; the default when it records none."""
    return backbone_from_metadata(recorded_metadata(path), path)


def backbone_from_metadata(metadata: dict[str, str], source: object) -> Backbone:
    """`Backbone.from_metadata`, with unreadable numbers reported as a model format error."""
    try:
        return Backbone.from_metadata(metadata)
    except ValueError as exc:
        raise ModelFormatError(f"{source}: unreadable backbone options in its metadata ({exc})") from None


# --------------------------------------------------------------------------------------- our own files


def save_program(
    module, resolution: int, dtype: str, out: Path, metadata: dict[str, str], layout: str | None = None
) -> None:
    """`torch.export` the NHWC, tuple-returning `module` behind a `ProgramInterface` (images in `layout`, NCHW
    unless told, any batch size; a dict of outputs named as `metadata`'s backbone says) and save it with
    `metadata` and the layout as its extra file."""
    torch = require("torch")
    from mobilenet_zoo.formats.torch._module import ProgramInterface, output_names

    layout = checked_layout(layout or _program_layout.get())
    interface = ProgramInterface(module, output_names(backbone_from_metadata(metadata, out)), layout)
    shape = (resolution, resolution, 3) if layout == "NHWC" else (3, resolution, resolution)
    example = torch.zeros(EXPORT_EXAMPLE_BATCH, *shape, dtype=getattr(torch, dtype))
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(interface, (example,), dynamic_shapes={"images": {0: batch}})
    for node in program.graph.nodes:  # Python stack traces name this machine's files: not for a shared model
        node.meta.pop("stack_trace", None)
    extra = {PROGRAM_METADATA: json.dumps({**metadata, INPUT_LAYOUT_KEY: layout})}
    torch.export.save(program, str(out), extra_files=extra)
    _pt2.checked_archive(out)  # never write a program our own reader would refuse


def program_module(path: Path) -> tuple[ProgramCall, int] | None:
    """Our `.pt2` program (the file `path`, or the one in the folder `path`) called as runners call, and its input size.

    None when `path` is no program and its folder holds none.
    """
    from mobilenet_zoo.formats.torch._module import output_names

    program = own_file(path, PROGRAM_SUFFIX) if path.is_dir() else path
    if program is None or program.suffix != PROGRAM_SUFFIX:
        return None
    metadata = recorded_metadata(program)
    config = config_from_metadata(metadata, program)
    backbone = backbone_from_metadata(metadata, program)
    module = _pt2.load_program(program).module()
    call = ProgramCall(module, metadata.get(INPUT_LAYOUT_KEY, "NHWC"), output_names(backbone))
    return call, backbone.input_size or config.resolution


@dataclass
class ProgramCall:
    """A loaded `.pt2` module called as the runners call networks: an NHWC batch in, a tuple in `names` order out,
    maps NHWC. Programs before the layout option take NHWC and return that tuple already."""

    module: Callable
    layout: str  # the program's recorded input layout
    names: tuple[str, ...]

    def __call__(self, images):
        nchw = self.layout == "NCHW"
        outputs = self.module(images.permute(0, 3, 1, 2) if nchw else images)  # a view: the program copies it NHWC
        if isinstance(outputs, dict):
            outputs = tuple(outputs[name] for name in self.names)
        return tuple(output.permute(0, 2, 3, 1) if nchw and output.dim() == 4 else output for output in outputs)


def save_safetensors(tensors: dict[str, np.ndarray], out: Path, metadata: dict[str, str]) -> None:
    """Save numpy arrays (made C-contiguous) as a safetensors file with string `metadata`."""
    safetensors_numpy().save_file(
        {name: np.asarray(array, order="C") for name, array in tensors.items()}, str(out), metadata=metadata
    )


def _read_folder(folder: Path) -> MobileNetV1Model:
    """Our weights (NAME.safetensors, else model.safetensors with our metadata), else our program, else a
    Hugging Face folder of anyone's."""
    weights = _our_weights_file(folder)
    if weights is not None:
        return _read_safetensors(weights)
    program = own_file(folder, PROGRAM_SUFFIX)
    if program is not None:
        return _read_program(program)
    if (folder / HF_CONFIG).exists():
        return read_hf_folder(folder)
    raise ModelFormatError(
        f"{folder}: holds no {WEIGHTS_SUFFIX} or {PROGRAM_SUFFIX} of ours and no Hugging Face {HF_CONFIG}"
    )


def _our_weights_file(folder: Path) -> Path | None:
    """NAME.safetensors (slim layout), else model.safetensors when it records our metadata; None otherwise."""
    own = own_file(folder, WEIGHTS_SUFFIX)
    if own is not None:
        return own
    hf_weights = folder / HF_WEIGHTS
    if hf_weights.is_file() and _safetensors_metadata(hf_weights).get("producer") == PRODUCER:
        return hf_weights
    return None


def _read_safetensors(path: Path) -> MobileNetV1Model:
    metadata = _safetensors_metadata(path)
    if metadata.get("producer") != PRODUCER:
        if path.name == HF_WEIGHTS and (path.parent / HF_CONFIG).exists():
            return read_hf_folder(path.parent)
        raise ModelFormatError(
            f"{path}: not a MobileNet V1 safetensors file (no {PRODUCER} metadata, no Hugging Face {HF_CONFIG} beside it)"
        )
    config = config_from_metadata(metadata, path)
    tensors = safetensors_numpy().load_file(str(path))
    if metadata.get(WEIGHT_LAYOUT_KEY) == HF_WEIGHTS_LAYOUT:
        tensors = weights_from_hf(tensors, config, folded=metadata.get("folded") == "true", source=path)
    return _model(config, tensors, metadata, path)


def _read_program(path: Path) -> MobileNetV1Model:
    """Weights from the exported program's state dict, named as `torch_model.MobileNetV1` names them, read as raw
    tensors from the checked archive (`_pt2`: nothing in it is unpickled or run)."""
    from mobilenet_zoo.formats.torch._module import weights_from_state_dict

    archive = _pt2.checked_archive(path)
    metadata = archive.metadata
    config = config_from_metadata(metadata, path)
    prefix = PROGRAM_NETWORK_PREFIX if INPUT_LAYOUT_KEY in metadata else ""  # older programs export the bare network
    state = {name.removeprefix(prefix): tensor for name, tensor in _pt2.raw_weights(archive).items()}
    try:
        weights = weights_from_state_dict(state, config, folded=metadata.get("folded") == "true")
    except KeyError as exc:
        raise ModelFormatError(
            f"{path}: exported program has no tensor {exc} of a MobileNet V1 {config.name}"
        ) from None
    return _model(config, weights, metadata, path)


def _model(
    config: ModelConfig, weights: dict[str, np.ndarray], metadata: dict[str, str], path: Path
) -> MobileNetV1Model:
    """The validated canonical model of our file, with the source and backbone its metadata records."""
    source = metadata.get("source", str(path))
    model = MobileNetV1Model(config, weights, source=source, backbone=backbone_from_metadata(metadata, path))
    return model.with_recorded(metadata).validate()


def safetensors_numpy() -> ModuleType:
    """`safetensors.numpy` (with a clear message when safetensors is missing)."""
    require("safetensors")
    return importlib.import_module("safetensors.numpy")


def _safetensors_metadata(path: Path) -> dict[str, str]:
    safetensors = require("safetensors")
    try:
        with safetensors.safe_open(str(path), framework="numpy") as handle:
            return handle.metadata() or {}
    except (OSError, safetensors.SafetensorError) as exc:
        raise ModelFormatError(f"{path}: not a readable safetensors file ({exc})") from exc


def _program_metadata(path: Path) -> dict[str, str]:
    """The `extra/mobilenet_zoo.json` member of a `.pt2` archive (read alone, without loading the program)."""
    return _pt2.program_metadata(path)


def own_file(folder: Path, suffix: str) -> Path | None:
    """The file of ours with this suffix in a written folder (the Hugging Face weights are not ours)."""
    if not folder.is_dir():
        return None
    return next((p for p in sorted(folder.glob(f"*{suffix}")) if p.name != HF_WEIGHTS), None)


def is_quantized(path: Path) -> bool:
    """True when the folder or file holds a quantized model (our metadata says so)."""
    return recorded_metadata(path).get("quantized") == "true"


# --------------------------------------------------------------------------------- Hugging Face files
# Names and layouts of transformers' MobileNetV1ForImageClassification (modeling_mobilenet_v1.py): the stem
# is `mobilenet_v1.conv_stem`, the 26 block layers `mobilenet_v1.layer.{0..25}` (depthwise, pointwise
# alternating), each with `convolution` and `normalization` (BatchNorm2d, eps `layer_norm_eps`), and the
# classifier an nn.Linear. Its pooling is global average pooling: at the trained resolution the last feature
# map is resolution/32 <= 7 pixels wide, so slim's min(7, H) x min(7, W) VALID pool covers it whole and the
# two are equal; they differ only for inputs larger than the model was trained on.


def write_hf_configs(model: MobileNetV1Model, folder: Path) -> None:
    """Write the `config.json` (with the model's class names) and `preprocessor_config.json` that go with
    model.safetensors."""
    config = model.config
    for name, content in (
        (HF_CONFIG, hf_config(config, model.classes)),
        (HF_PREPROCESSOR, hf_preprocessor_config(config)),
    ):
        (folder / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def hf_labels(config: ModelConfig, classes: Classes | None = None) -> tuple[str, ...]:
    """The class names `id2label` holds: the model's own, the ImageNet names of an ImageNet head, else LABEL_i
    (transformers' default)."""
    classes = classes or Classes.default(config.num_classes)
    if classes.labels is not None:
        return classes.labels
    imagenet = imagenet_names(classes.background)
    return (
        imagenet
        if len(imagenet) == config.num_classes
        else tuple(f"LABEL_{index}" for index in range(config.num_classes))
    )


def hf_config(config: ModelConfig, classes: Classes | None = None) -> dict[str, Any]:
    """The transformers MobileNetV1Config of the variant, with its class names (`hf_labels`)."""
    labels = hf_labels(config, classes)
    names = {
        "id2label": {str(index): label for index, label in enumerate(labels)},
        "label2id": {label: index for index, label in enumerate(labels)},
    }
    return {
        "architectures": ["MobileNetV1ForImageClassification"],
        "model_type": HF_MODEL_TYPE,
        "num_channels": 3,
        "image_size": config.resolution,
        "depth_multiplier": config.alpha,
        "min_depth": HF_MIN_DEPTH,
        "hidden_act": "relu6",
        "tf_padding": True,
        "layer_norm_eps": BN_EPSILON,
        "num_labels": config.num_classes,
        **names,
        "dtype": "float32",
    }


def hf_preprocessor_config(config: ModelConfig) -> dict[str, Any]:
    """transformers' MobileNetV1ImageProcessor set as close to slim's eval preprocessing as it goes.

    Slim crops the central 87.5% of height and width, resizes that bilinearly to R x R (squashing non-square
    images) and maps pixels to x / 127.5 - 1. The processor resizes first, then crops: the whole image is
    resized to S x S (S = round(R / 0.875), squashing as slim does), the central R x R kept, pixels mapped by
    (x / 255 - 0.5) / 0.5 = x / 127.5 - 1. What differs: PIL's (or torchvision's) bilinear filter averages over
    the whole footprint when it shrinks (antialiasing) where TensorFlow samples two pixels per axis; the kept
    fraction is R / S (exactly 0.875 for 224, 0.877 for 128 and 192, 0.874 for 160); crop offsets round to whole
    pixels of the resized image instead of the original.
    """
    resized = round(config.resolution / CENTRAL_FRACTION)
    return {
        "image_processor_type": "MobileNetV1ImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": resized, "width": resized},
        "resample": HF_BILINEAR,
        "do_center_crop": True,
        "crop_size": {"height": config.resolution, "width": config.resolution},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }


def hf_state_dict(model: MobileNetV1Model) -> dict[str, np.ndarray]:
    """The transformers state dict of `model` (a folded model gets identity BatchNorms around its biases)."""
    from mobilenet_zoo.formats.torch._module import to_torch_layout

    unfolded = model.unfold()
    state = {
        hf: to_torch_layout(unfolded.weights[slim], kind) for slim, (hf, kind) in hf_tensor_names(model.config).items()
    }
    for name in [
        n for n in state if n.endswith(".running_mean")
    ]:  # BatchNorm2d's counter, as save_pretrained writes it
        state[name.replace(".running_mean", ".num_batches_tracked")] = np.zeros((), np.int64)
    return state


def hf_tensor_names(config: ModelConfig) -> dict[str, tuple[str, str]]:
    """Slim name -> (transformers name, layout kind); the mapping of transformers' TF checkpoint converter."""
    from mobilenet_zoo.formats.torch._module import LINEAR, VECTOR, layer_tensor_names

    names: dict[str, tuple[str, str]] = {}
    for index, layer in enumerate(config.layers()):
        prefix = "mobilenet_v1.conv_stem" if index == 0 else f"mobilenet_v1.layer.{index - 1}"
        names.update(layer_tensor_names(layer, prefix, conv="convolution", norm="normalization", folded=False))
    names[config.logits_weight_name] = ("classifier.weight", LINEAR)
    names[config.logits_bias_name] = ("classifier.bias", VECTOR)
    return names


def read_hf_folder(folder: Path) -> MobileNetV1Model:
    """The (unfolded) canonical model of a transformers MobileNetV1ForImageClassification folder."""
    weights_path = folder / HF_WEIGHTS
    if not weights_path.exists():
        raise ModelFormatError(
            f"{folder}: Hugging Face folder without {HF_WEIGHTS} (only safetensors weights are read)"
        )
    state = safetensors_numpy().load_file(str(weights_path))
    if "classifier.weight" not in state:
        raise ModelFormatError(f"{weights_path}: no classifier.weight, not a MobileNetV1ForImageClassification")
    config = _config_from_hf(_load_hf_config(folder), num_classes=state["classifier.weight"].shape[0], folder=folder)
    weights = weights_from_hf(state, config, folded=False, source=weights_path)
    classes = _classes_from_hf(_load_hf_config(folder), config)
    return MobileNetV1Model(config, weights, source=str(folder), classes=classes).validate()


def weights_from_hf(
    state: dict[str, np.ndarray], config: ModelConfig, *, folded: bool, source: Path
) -> dict[str, np.ndarray]:
    """Canonical weights from a transformers state dict; `folded`: the BatchNorms are the identities
    `hf_state_dict` wrote for a folded model, whose betas are its biases."""
    from mobilenet_zoo.formats.torch._module import to_tf_layout

    weights = {}
    for slim, (hf, kind) in hf_tensor_names(config).items():
        if hf not in state:
            raise ModelFormatError(f"{source}: missing {hf}, not a MobileNet V1 {config.name}")
        weights[slim] = to_tf_layout(state[hf], kind)
    if folded:
        for layer in config.layers():
            weights[layer.bias_name] = weights.pop(layer.bn_name("beta"))
            for leaf in ("gamma", "moving_mean", "moving_variance"):
                del weights[layer.bn_name(leaf)]
    return weights


def _classes_from_hf(hf: dict[str, Any], config: ModelConfig) -> Classes:
    """The class names of `id2label` (none when they are transformers' LABEL_i defaults or do not cover the classes);
    slim's background when the first name is "background"."""
    id2label = hf.get("id2label") or {}
    try:
        labels = tuple(str(id2label[key]) for key in sorted(id2label, key=int))
    except ValueError:
        labels = ()
    if len(labels) != config.num_classes or labels == tuple(f"LABEL_{index}" for index in range(config.num_classes)):
        return Classes.default(config.num_classes)
    return Classes(labels[0] == "background", labels)


def _load_hf_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / HF_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{folder / HF_CONFIG}: not a readable JSON config ({exc})") from exc


def _config_from_hf(hf: dict[str, Any], num_classes: int, folder: Path) -> ModelConfig:
    """The variant of a transformers MobileNetV1Config, refusing settings that change slim's numerics."""
    path = folder / HF_CONFIG
    if hf.get("model_type") != HF_MODEL_TYPE:
        raise ModelFormatError(f"{path}: model_type {hf.get('model_type')!r}, expected {HF_MODEL_TYPE!r}")
    if not hf.get("tf_padding", True):
        raise ModelFormatError(
            f"{path}: tf_padding is false (symmetric padding); slim's TF 'SAME' numerics need it true"
        )
    if (
        not np.isclose(hf.get("layer_norm_eps", BN_EPSILON), BN_EPSILON)
        or hf.get("min_depth", HF_MIN_DEPTH) != HF_MIN_DEPTH
    ):
        raise ModelFormatError(f"{path}: layer_norm_eps and min_depth must be slim's {BN_EPSILON} and {HF_MIN_DEPTH}")
    image_size = hf.get("image_size", 224)
    resolution = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    return ModelConfig(
        alpha=float(hf.get("depth_multiplier", 1.0)), resolution=int(resolution), num_classes=int(num_classes)
    )
