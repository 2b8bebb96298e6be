"""Keras format: `keras.applications.MobileNet` models in `.keras` archives and legacy `.h5` files.

`write` builds the network layer by layer as keras/src/applications/mobilenet.py does, with the same layer
classes, names and arguments (`conv1`, `conv1_bn`, `conv1_relu`, then per block `conv_pad_{i}` before a
stride-2 `conv_dw_{i}`, `conv_dw_{i}_bn`, `conv_dw_{i}_relu`, `conv_pw_{i}`, `conv_pw_{i}_bn`, `conv_pw_{i}_relu`,
then `global_average_pooling2d`, `dropout`, `conv_preds`, `reshape_2`, `predictions`), N classes and the
BatchNorm variables as they are (Keras' epsilon is slim's 1e-3), so `keras.models.load_model` and users' Keras
code take it. A stride-2 depthwise convolution is ZeroPadding2D + "valid" as in Keras: padded (0, 1), which is
Keras' own padding and TF SAME on an even map, or (1, 1), TF SAME on an odd map (`ModelConfig.padding`).

`read` maps a Keras model to the canonical model by its layer sequence, not by names, flattening nested models:
the body above, then the `include_top` head (GlobalAveragePooling2D(keepdims=True), Dropout, 1x1 Conv2D,
Reshape, softmax) or the fine-tuning layout (GlobalAveragePooling2D, Dropout..., Dense(N), softmax), whose
Dense kernel (C, N) is the 1x1 classifier on the pooled features. Anything else is refused, naming the first
layer that does not fit. Keras' head pools globally: on maps larger than 7x7 (inputs over 224) the model
gets `pooling="global"`. Keras models have no background class and take inputs in [-1, 1], like slim.

Our metadata (`MobileNetV1Model.metadata()`) is stored under "mobilenet_zoo" in the `.keras` archive's own
`metadata.json` (Keras writes its version and date there and reads nothing from it when loading), or as the
`mobilenet_zoo` root attribute of a legacy `.h5` file (where Keras keeps its own `keras_version`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.fsutil import atomic_file
from mobilenet_zoo.model.arch import Backbone, ModelConfig, PlacedLayer, placed_layers, pool_geometry
from mobilenet_zoo.model.canonical import PRODUCER, MobileNetV1Model, image_batch, infer_alpha

KERAS_SUFFIX = ".keras"
H5_SUFFIX = ".h5"
METADATA_KEY = "mobilenet_zoo"  # our entry in the archive's metadata.json, or the .h5 root attribute
ARCHIVE_METADATA = "metadata.json"
DROPOUT_RATE = 1e-3  # keras.applications.MobileNet's default (identity at inference)
KERAS_PADS = (0, 1)  # ZeroPadding2D(((0, 1), (0, 1))) before a stride-2 depthwise convolution
BN_EPSILON_KERAS = 1e-3


# ---------------------------------------------------------------------------------------------- writing


def write(model: MobileNetV1Model, out: Path) -> Path:
    """Write `model` as a `.keras` archive (or a legacy `.h5` when `out` ends so) with our metadata; returns `out`."""
    out = Path(out)
    if out.suffix not in (KERAS_SUFFIX, H5_SUFFIX):
        raise ModelFormatError(
            f"{out}: a Keras model file ends in {KERAS_SUFFIX} (or {H5_SUFFIX} for the legacy format)"
        )
    keras_model = build_keras_model(model)
    metadata = model.metadata()
    with tempfile.TemporaryDirectory(prefix="mobilenet-zoo-keras-") as scratch, atomic_file(out) as temporary:
        saved = Path(scratch) / f"model{out.suffix}"
        with quiet():
            keras_model.save(saved)
        if out.suffix == H5_SUFFIX:
            with require("h5py").File(saved, "a") as h5:
                h5.attrs[METADATA_KEY] = json.dumps(metadata)
            temporary.write_bytes(saved.read_bytes())
        else:
            _copy_archive_with_metadata(saved, temporary, metadata)
    return out


def _copy_archive_with_metadata(source: Path, target: Path, metadata: dict[str, str]) -> None:
    """Copy a `.keras` zip, adding `metadata` under METADATA_KEY in its metadata.json."""
    with zipfile.ZipFile(source) as archive_in, zipfile.ZipFile(target, "w") as archive_out:
        for item in archive_in.infolist():
            data = archive_in.read(item.filename)
            if item.filename == ARCHIVE_METADATA:
                data = json.dumps({**json.loads(data), METADATA_KEY: metadata}).encode()
            archive_out.writestr(item, data)


def build_keras_model(model: MobileNetV1Model):
    """The `keras.Model` of `model` in keras.applications.MobileNet's structure, with its weights."""
    model = model.validate()
    _check_writable(model)
    keras = keras_module()
    layers = keras.layers
    weights, config, size = model.unfold().weights, model.config, model.input_size
    inputs = layers.Input(shape=(size, size, 3), name="input_layer")
    x = inputs
    for placed in placed_layers(config, model.backbone):
        x = _conv_block(layers, x, placed, config.padding, weights)
    x = layers.GlobalAveragePooling2D(keepdims=True, name="global_average_pooling2d")(x)
    x = layers.Dropout(DROPOUT_RATE, name="dropout")(x)
    classifier = layers.Conv2D(config.num_classes, (1, 1), padding="same", name="conv_preds")
    x = classifier(x)
    classifier.set_weights([weights[config.logits_weight_name], weights[config.logits_bias_name]])
    x = layers.Reshape((config.num_classes,), name="reshape_2")(x)
    x = layers.Activation(activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=f"mobilenet_{config.alpha:0.2f}_{size}")


def _check_writable(model: MobileNetV1Model) -> None:
    """Refuse what keras.applications.MobileNet cannot express: uint8, feature outputs, dilation, a partial pool."""
    name, backbone = model.config.name, model.backbone
    if model.config.quantized:
        raise ModelFormatError(f"{name} is quantized: Keras holds float models only (convert the float variant)")
    if backbone.features or backbone.output_stride != 32:
        raise ModelFormatError(
            f"{name}: the Keras writer builds keras.applications.MobileNet, without feature outputs "
            "or an output stride below 32"
        )
    feature_size = placed_layers(model.config, backbone)[-1].output_size
    if pool_geometry(feature_size, backbone.pooling)[0] != feature_size:
        raise ModelFormatError(
            f"{name}: slim's 7x7 stride-2 pool of the {feature_size}x{feature_size} map is not Keras' global "
            "average pool; write it with --pooling global"
        )


def _conv_block(layers: ModuleType, x, placed: PlacedLayer, padding: str, weights: dict[str, np.ndarray]):
    """One slim layer as Keras builds it (conv, BatchNorm, ReLU6), its weights set."""
    layer = placed.layer
    if layer.kind == "conv":
        name = "conv1"
        conv = layers.Conv2D(layer.out_channels, (3, 3), padding="same", use_bias=False, strides=(2, 2), name=name)
    elif layer.kind == "pointwise":
        name = f"conv_pw_{_block_id(layer.scope)}"
        conv = layers.Conv2D(layer.out_channels, (1, 1), padding="same", use_bias=False, strides=(1, 1), name=name)
    else:
        block = _block_id(layer.scope)
        name = f"conv_dw_{block}"
        if placed.stride == 1:
            conv = layers.DepthwiseConv2D(
                (3, 3), padding="same", depth_multiplier=1, strides=(1, 1), use_bias=False, name=name
            )
        else:
            pads = KERAS_PADS if padding == "keras" else placed.padding
            x = layers.ZeroPadding2D((pads, pads), name=f"conv_pad_{block}")(x)
            conv = layers.DepthwiseConv2D(
                (3, 3), padding="valid", depth_multiplier=1, strides=(2, 2), use_bias=False, name=name
            )
    x = conv(x)
    conv.set_weights([weights[layer.weight_name]])
    norm = layers.BatchNormalization(axis=-1, name=f"{name}_bn")
    x = norm(x)
    norm.set_weights([weights[layer.bn_name(leaf)] for leaf in ("gamma", "beta", "moving_mean", "moving_variance")])
    return layers.ReLU(6.0, name=f"{name}_relu")(x)


def _block_id(scope: str) -> int:
    """13 for "Conv2d_13_pointwise"."""
    return int(scope.split("_")[1])


# ---------------------------------------------------------------------------------------------- reading


def read(path: Path) -> MobileNetV1Model:
    """The canonical (unfolded) model of a Keras MobileNet V1 file, include_top or fine-tuning layout."""
    path = Path(path)
    parsed = parse(load_keras_model(path), path)
    metadata = recorded_metadata(path)
    ours = metadata.get("producer") == PRODUCER
    config = ModelConfig(parsed.alpha, parsed.resolution, num_classes=parsed.num_classes, padding=parsed.padding)
    feature_size = placed_layers(config)[-1].output_size
    backbone = Backbone(pooling="global") if pool_geometry(feature_size, "slim")[0] != feature_size else Backbone()
    if (
        ours and int(metadata.get("resolution", config.resolution)) != config.resolution
    ):  # written at another input size
        config, backbone = (
            replace(config, resolution=int(metadata["resolution"])),
            replace(backbone, input_size=config.resolution),
        )
    model = MobileNetV1Model(
        config,
        parsed.weights(config),
        source=metadata.get("source", str(path)) if ours else str(path),
        backbone=backbone,
    )
    return (model.with_recorded(metadata) if ours else model).validate()


def recorded_metadata(path: Path) -> dict[str, str]:
    """Our metadata in a `.keras` archive's metadata.json or a `.h5` root attribute; {} when there is none."""
    path = Path(path)
    try:
        if path.suffix == H5_SUFFIX:
            with require("h5py").File(path, "r") as h5:
                text = h5.attrs.get(METADATA_KEY)
            return json.loads(text) if text else {}
        with zipfile.ZipFile(path) as archive:
            if ARCHIVE_METADATA not in archive.namelist():
                return {}
            return json.loads(archive.read(ARCHIVE_METADATA)).get(METADATA_KEY) or {}
    except (OSError, zipfile.BadZipFile, ValueError, AttributeError) as exc:
        raise ModelFormatError(f"{path}: not a readable Keras file ({exc})") from None


def load_keras_model(path: Path):
    """`keras.models.load_model` (safe mode, not compiled), with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such Keras file")
    keras = keras_module()
    try:
        with quiet():
            return keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # Keras raises ValueError, OSError, TypeError... on foreign or damaged files
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFormatError(f"{path}: Keras cannot load it ({message})") from exc


@dataclass
class ParsedKeras:
    """The layers of a Keras MobileNet V1 found by their sequence."""

    chain: list  # every layer from the first convolution to the output, nested models flattened
    convs: list  # 27 (convolution, BatchNormalization) pairs in slim's order
    classifier: Any  # the 1x1 Conv2D (include_top) or the Dense of a fine-tuning head
    logits_index: int  # the chain position whose output is the logits (N x classes)
    softmax: bool  # whether the chain ends in a softmax (else its output is the logits)
    resolution: int
    padding: str  # "keras" or "same", from the ZeroPadding2D layers

    @property
    def alpha(self) -> float:
        return infer_alpha(int(self.convs[0][0].get_weights()[0].shape[-1]))

    @property
    def num_classes(self) -> int:
        return int(self.classifier.get_weights()[0].shape[-1])

    def weights(self, config: ModelConfig) -> dict[str, np.ndarray]:
        """Slim-named weights in TF layout (Keras' own layouts are TF's; a Dense kernel becomes 1 x 1 x C x N)."""
        weights: dict[str, np.ndarray] = {}
        for layer, (conv, norm) in zip(config.layers(), self.convs):
            weights[layer.weight_name] = conv.get_weights()[0]
            for leaf, value in zip(("gamma", "beta", "moving_mean", "moving_variance"), norm.get_weights()):
                weights[layer.bn_name(leaf)] = value
        kernel, *bias = self.classifier.get_weights()
        weights[config.logits_weight_name] = kernel.reshape(1, 1, *kernel.shape[-2:])
        weights[config.logits_bias_name] = bias[0] if bias else np.zeros(kernel.shape[-1], np.float32)
        return {name: np.asarray(value, np.float32) for name, value in weights.items()}


def parse(keras_model, path: Path) -> ParsedKeras:
    """Find the MobileNet V1 layers of a Keras model, refusing any layer that is not one of them."""
    if len(keras_model.inputs) != 1 or len(keras_model.outputs) != 1:
        raise ModelFormatError(
            f"{path}: a MobileNet V1 has one input and one output, this Keras model "
            f"{len(keras_model.inputs)} and {len(keras_model.outputs)}"
        )
    resolution = _input_side(keras_model, path)
    cursor = _Cursor([layer for layer in _flat_layers(keras_model) if _kind(layer) != "InputLayer"], str(path))
    convs, pads = _body(cursor)
    classifier, logits_index, softmax = _head(cursor)
    if cursor.peek() is not None:
        raise ModelFormatError(
            f"{path}: layer {cursor.describe(cursor.peek())} after the classifier is not part of MobileNet V1"
        )
    padding = _padding(infer_alpha(int(convs[0][0].get_weights()[0].shape[-1])), resolution, pads, path)
    return ParsedKeras(cursor.layers, convs, classifier, logits_index, softmax, resolution, padding)


def _flat_layers(keras_model) -> Iterator:
    """The model's layers in order, nested models (a base model inside a fine-tuning model) expanded."""
    for layer in keras_model.layers:
        if hasattr(layer, "layers") and hasattr(layer, "inputs"):
            yield from _flat_layers(layer)
        else:
            yield layer


def _kind(layer) -> str:
    return type(layer).__name__


def _input_side(keras_model, path: Path) -> int:
    shape = tuple(keras_model.inputs[0].shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[1] != shape[2]:
        raise ModelFormatError(
            f"{path}: input shape {shape}; mobilenet-zoo reads Keras models with a fixed square "
            "RGB input (channels last): build it with input_shape=(S, S, 3)"
        )
    return int(shape[1])


@dataclass
class _Cursor:
    """Walks the flat layer list, taking the layers MobileNet V1 has where it has them."""

    layers: list
    path: str
    index: int = 0
    taken: list = field(default_factory=list)

    def peek(self):
        return self.layers[self.index] if self.index < len(self.layers) else None

    def describe(self, layer) -> str:
        return "(none: the model ends)" if layer is None else f"{layer.name} ({_kind(layer)})"

    def take(self, expected: str, kinds: tuple[str, ...], **settings) -> Any:
        """The next layer when it is of one of `kinds` with these config settings, else a one-line refusal."""
        layer = self.peek()
        if layer is None or _kind(layer) not in kinds:
            raise ModelFormatError(f"{self.path}: {self.describe(layer)} where MobileNet V1 has {expected}")
        config = layer.get_config()
        for key, wanted in settings.items():
            got = config.get(key)
            got = tuple(got) if isinstance(got, list) else got
            if not (np.isclose(got, wanted) if isinstance(wanted, float) else got == wanted):
                raise ModelFormatError(
                    f"{self.path}: {self.describe(layer)} has {key}={got!r} where MobileNet V1's {expected} has {wanted!r}"
                )
        self.index += 1
        return layer

    def skip(self, kind: str) -> None:
        while self.peek() is not None and _kind(self.peek()) == kind:
            self.index += 1


def _body(cursor: _Cursor) -> tuple[list, list]:
    """The 27 (convolution, BatchNorm) pairs, each with its ReLU6, and the pads before each stride-2 depthwise one."""
    from mobilenet_zoo.model.arch import BLOCK_STRIDES

    convs, pads = [], []
    conv = cursor.take(
        "conv1: Conv2D 3x3 stride 2",
        ("Conv2D",),
        kernel_size=(3, 3),
        strides=(2, 2),
        padding="same",
        use_bias=False,
        dilation_rate=(1, 1),
        groups=1,
        activation="linear",
        data_format="channels_last",
    )
    convs.append((conv, _norm_relu6(cursor, "conv1")))
    for block, stride in enumerate(BLOCK_STRIDES, start=1):
        name = f"conv_dw_{block}"
        if stride == 2:
            padded = cursor.take(f"conv_pad_{block}: ZeroPadding2D", ("ZeroPadding2D",), data_format="channels_last")
            (top, bottom), (left, right) = (tuple(side) for side in padded.get_config()["padding"])
            if (top, bottom) != (left, right):
                raise ModelFormatError(
                    f"{cursor.path}: {cursor.describe(padded)} pads rows {(top, bottom)} and columns {(left, right)} differently"
                )
            pads.append((top, bottom))
        conv = cursor.take(
            f"{name}: DepthwiseConv2D 3x3 stride {stride}",
            ("DepthwiseConv2D",),
            kernel_size=(3, 3),
            strides=(stride, stride),
            padding="valid" if stride == 2 else "same",
            depth_multiplier=1,
            use_bias=False,
            dilation_rate=(1, 1),
            activation="linear",
            data_format="channels_last",
        )
        convs.append((conv, _norm_relu6(cursor, name)))
        name = f"conv_pw_{block}"
        conv = cursor.take(
            f"{name}: Conv2D 1x1",
            ("Conv2D",),
            kernel_size=(1, 1),
            strides=(1, 1),
            use_bias=False,
            dilation_rate=(1, 1),
            groups=1,
            activation="linear",
            data_format="channels_last",
        )
        convs.append((conv, _norm_relu6(cursor, name)))
    return convs, pads


def _norm_relu6(cursor: _Cursor, name: str):
    """BatchNormalization (slim's epsilon, scale and center, channels last) then ReLU6; returns the BatchNormalization."""
    norm = cursor.take(
        f"{name}_bn: BatchNormalization", ("BatchNormalization",), epsilon=BN_EPSILON_KERAS, center=True, scale=True
    )
    if norm.get_config().get("axis") not in (-1, 3, [-1], [3]):
        raise ModelFormatError(
            f"{cursor.path}: {cursor.describe(norm)} normalizes axis {norm.get_config().get('axis')}, not the channels"
        )
    layer = cursor.peek()
    if layer is not None and _kind(layer) == "Activation":
        cursor.take(f"{name}_relu: ReLU6", ("Activation",), activation="relu6")
    else:
        cursor.take(f"{name}_relu: ReLU(6.0)", ("ReLU",), max_value=6.0, negative_slope=0.0, threshold=0.0)
    return norm


def _head(cursor: _Cursor) -> tuple[Any, int, bool]:
    """(classifier, chain index of the logits, ends in softmax) of the include_top head or a fine-tuning head."""
    pool = cursor.take("GlobalAveragePooling2D", ("GlobalAveragePooling2D",), data_format="channels_last")
    cursor.skip("Dropout")
    if pool.get_config().get("keepdims"):
        classifier = cursor.take(
            "conv_preds: Conv2D 1x1",
            ("Conv2D",),
            kernel_size=(1, 1),
            strides=(1, 1),
            dilation_rate=(1, 1),
            groups=1,
            activation="linear",
        )
        reshape = cursor.take("a Reshape to N classes", ("Reshape",))
        if tuple(reshape.get_config()["target_shape"]) != (classifier.get_config()["filters"],):
            raise ModelFormatError(f"{cursor.path}: {cursor.describe(reshape)} does not flatten the 1x1 logits")
        logits_index, softmax = cursor.index - 1, False
    else:
        classifier = cursor.take("Dense(N) on the pooled features", ("Dense",))
        activation = classifier.get_config().get("activation")
        if activation not in ("linear", "softmax"):
            raise ModelFormatError(
                f"{cursor.path}: {cursor.describe(classifier)} has activation {activation!r}; MobileNet V1's head is a softmax"
            )
        logits_index, softmax = cursor.index - 1, activation == "softmax"
    final = cursor.peek()
    if not softmax and final is not None and _kind(final) == "Softmax":
        cursor.take("the softmax", ("Softmax",), axis=-1)
        softmax = True
    elif not softmax and final is not None and _kind(final) == "Activation":
        activation = final.get_config().get("activation")
        cursor.take("the softmax", ("Activation",), activation="softmax" if activation != "linear" else "linear")
        softmax = activation == "softmax"
    return classifier, logits_index, softmax


def _padding(alpha: float, resolution: int, pads: list[tuple[int, int]], path: Path) -> str:
    """ "keras" when the stride-2 depthwise convolutions pad as Keras does ((0, 1) on every map), "same" when they
    pad as TF SAME (which differs on odd maps only); anything else is refused."""
    for padding in ("keras", "same"):
        placed = [
            p
            for p in placed_layers(ModelConfig(alpha, resolution, padding=padding))
            if p.layer.kind == "depthwise" and p.stride == 2
        ]
        if pads == [KERAS_PADS if padding == "keras" else p.padding for p in placed]:
            return padding
    raise ModelFormatError(
        f"{path}: its stride-2 depthwise convolutions pad {pads}: neither Keras' (0, 1) nor TF SAME at {resolution}x{resolution}"
    )


# ---------------------------------------------------------------------------------------------- running


def load_runner(path: Path) -> KerasRunner:
    """The Keras model itself, run by Keras (TensorFlow backend), returning its logits and probabilities."""
    path = Path(path)
    keras_model = load_keras_model(path)
    parsed = parse(keras_model, path)
    return KerasRunner(_logits_and_probabilities(keras_module(), parsed), parsed.resolution)


def _logits_and_probabilities(keras: ModuleType, parsed: ParsedKeras):
    """A keras.Model calling the model's own layers in its order, with the logits as a second output (a classifier
    with a built-in softmax is also called as a linear copy of itself for them)."""
    inputs = keras.Input(shape=(parsed.resolution, parsed.resolution, 3))
    x, logits = inputs, None
    for index, layer in enumerate(parsed.chain):
        if layer is parsed.classifier and layer.get_config().get("activation") != "linear":
            logits = _linear_copy(layer)(x)
        x = layer(x)
        if index == parsed.logits_index and logits is None:
            logits = x
    probabilities = x if parsed.softmax else keras.layers.Softmax(axis=-1)(x)
    return keras.Model(inputs, [logits, probabilities])


def _linear_copy(layer):
    """The same layer (same weights) without its activation."""
    copy = type(layer).from_config({**layer.get_config(), "activation": "linear", "name": f"{layer.name}_logits"})
    copy.build(layer.input.shape)
    copy.set_weights(layer.get_weights())
    return copy


@dataclass
class KerasRunner:
    """Runs a Keras MobileNet V1 on NHWC float32 batches in [-1, 1]."""

    model: Any  # keras.Model: images -> [logits, probabilities]
    resolution: int
    quantized: bool = False

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        batch = image_batch(images, np.float32, self.resolution, "Keras model")
        logits, probabilities = self.model(batch, training=False)
        return {"logits": np.asarray(logits), "probabilities": np.asarray(probabilities)}


# ---------------------------------------------------------------------------------------------- helpers


def keras_module() -> ModuleType:
    """Keras 3 (TensorFlow imported first, so its log level is set as for the TensorFlow format)."""
    require("tensorflow")
    return require("keras")


@contextmanager
def quiet() -> Iterator[None]:
    """Silence Keras' and TensorFlow's Python warnings and info logs (legacy .h5, absl) for the duration."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
