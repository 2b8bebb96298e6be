"""The canonical in-memory model every reader produces and every writer consumes.

Weights are numpy arrays named as in the slim checkpoint and laid out as TensorFlow lays them out
(HWIO kernels, HWC1 depthwise kernels). A float model read from a checkpoint or frozen graph still
has its BatchNorm variables; `fold()` turns them into `.../biases`. A quantized model is always
folded: its `weights` hold the dequantized float values and `quant` the integer truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np

from mobilenet_zoo.errors import ModelFormatError, ZooError
from mobilenet_zoo.model.arch import BN_EPSILON, NUM_CLASSES, Backbone, ModelConfig, placed_layers

PRODUCER = "mobilenet-zoo"  # recorded in the metadata of every file this project writes
WEIGHT_STORAGE = "weight_storage"  # metadata key of a float model's "float16" or "int8-dynamic" weights

# Names of the activations a quantized model records a scale and zero point for, besides each layer scope.
INPUT_ACTIVATION = "input"
POOL_ACTIVATION = "Logits/AvgPool_1a"
LOGITS_ACTIVATION = "Logits/Conv2d_1c_1x1"
OUTPUT_ACTIVATION = "Predictions"


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization real = scale * (q - zero_point); per tensor (scalars) or per channel."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str = "uint8"  # storage type of q: uint8 or int8 for activations/weights, int32 for biases
    axis: int = -1  # per channel: the axis of q the scales run along (-1: the last; depthwise HWC1 kernels: 2)

    @property
    def per_channel(self) -> bool:
        return np.size(self.scale) > 1

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        scale, zero_point = np.asarray(self.scale), np.asarray(self.zero_point)
        if self.per_channel and q.ndim > 1:  # broadcast the scales along `axis`
            shape = [1] * q.ndim
            shape[self.axis] = -1
            scale, zero_point = scale.reshape(shape), np.broadcast_to(zero_point, np.shape(self.scale)).reshape(shape)
        return (scale * (q.astype(np.int64) - zero_point)).astype(np.float32)


INTEGER_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "int32": (-(1 << 31), (1 << 31) - 1)}


@dataclass(frozen=True)
class Interface:
    """What a quantized model takes and gives at its edges when that differs from its integer core: TF's converter
    puts QUANTIZE ops around an int8 core for uint8 images ("uint8", with the edge tensor's params) or a float32
    interface (QUANTIZE in, DEQUANTIZE out). Each side is "int8", "uint8" or "float32"."""

    input: str
    output: str
    input_params: QuantParams | None = None  # the uint8 input's quantization (a uint8 input edge only)
    output_params: QuantParams | None = None  # the uint8 output's quantization (a uint8 output edge only)

    def metadata(self) -> dict:
        def encode(params: QuantParams | None) -> dict | None:
            return None if params is None else _encode_params(params)

        return {
            "input": self.input,
            "output": self.output,
            "input_params": encode(self.input_params),
            "output_params": encode(self.output_params),
        }

    @classmethod
    def from_metadata(cls, entry: dict) -> Interface:
        def decode(params: dict | None) -> QuantParams | None:
            return None if params is None else _decode_params(params)

        return cls(entry["input"], entry["output"], decode(entry["input_params"]), decode(entry["output_params"]))


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer values with their quantization, e.g. a uint8 kernel or an int32 bias."""

    values: np.ndarray
    params: QuantParams

    def dequantize(self) -> np.ndarray:
        return self.params.dequantize(self.values)


@dataclass
class QuantInfo:
    """Integer weights and biases (by slim name) and activation quantization (by layer scope)."""

    tensors: dict[str, QuantizedTensor] = field(default_factory=dict)
    activations: dict[str, QuantParams] = field(default_factory=dict)
    interface: Interface | None = None  # None: the model takes and gives its core's integers (no edge ops)

    @property
    def activation_dtype(self) -> str:
        """The integer type of the core's activations: "uint8" (the official models) or "int8" (TF's converter)."""
        return self.activations[INPUT_ACTIVATION].dtype

    @property
    def input_dtype(self) -> str:
        """What the model takes: its core's integer type, or its interface's."""
        return self.interface.input if self.interface is not None else self.activation_dtype

    @property
    def output_dtype(self) -> str:
        return self.interface.output if self.interface is not None else self.activation_dtype


def _encode_params(params: QuantParams) -> dict:
    entry = {
        "scale": np.asarray(params.scale, np.float64).tolist(),
        "zero_point": np.asarray(params.zero_point).tolist(),
        "dtype": params.dtype,
    }
    return entry if params.axis == -1 else {**entry, "axis": params.axis}


def _decode_params(entry: dict) -> QuantParams:
    return QuantParams(
        np.asarray(entry["scale"], np.float32),
        np.asarray(entry["zero_point"], np.int64),
        entry["dtype"],
        int(entry.get("axis", -1)),
    )


def conv_inputs(config: ModelConfig) -> list[tuple[str, str, str, bool]]:
    """(kernel name, bias name, input activation, depthwise) of every convolution of a folded model, the classifier
    last: what post-training quantization walks."""
    layers = config.layers()
    inputs = [INPUT_ACTIVATION] + [layer.scope for layer in layers[:-1]]
    convs = [(lay.weight_name, lay.bias_name, name, lay.kind == "depthwise") for lay, name in zip(layers, inputs)]
    return convs + [(config.logits_weight_name, config.logits_bias_name, POOL_ACTIVATION, False)]


def quant_params_json(quant: QuantInfo) -> str:
    """The quantization parameters (not the integer values) of every tensor and activation, as JSON.

    Float32 scales survive the round trip exactly (a float32 is exactly representable as a JSON double).
    """

    recorded = {
        "tensors": {name: _encode_params(t.params) for name, t in quant.tensors.items()},
        "activations": {name: _encode_params(params) for name, params in quant.activations.items()},
    }
    if quant.interface is not None:
        recorded["interface"] = quant.interface.metadata()
    return json.dumps(recorded)


def quant_info_from_json(text: str, values: dict[str, np.ndarray]) -> QuantInfo:
    """The inverse of `quant_params_json`, given the integer values of every tensor it names."""

    decode = _decode_params
    try:
        recorded = json.loads(text)
        missing = sorted(set(recorded["tensors"]) - set(values))
        if missing:
            raise ModelFormatError(f"quantization is recorded for {missing[0]} but its integer values are missing")
        return QuantInfo(
            tensors={
                name: QuantizedTensor(np.asarray(values[name]), decode(entry))
                for name, entry in recorded["tensors"].items()
            },
            activations={name: decode(entry) for name, entry in recorded["activations"].items()},
            interface=Interface.from_metadata(recorded["interface"]) if "interface" in recorded else None,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFormatError(f"unreadable quantization record ({exc})") from None


IMAGENET_LABELS = "imagenet"  # the compact metadata form of the ImageNet class names (`labels.imagenet_labels`)


@dataclass(frozen=True)
class Classes:
    """What the classifier's outputs mean: whether output 0 is slim's "background" class, and the class names
    (None when unknown). The 1001-class slim models have the background; Keras' 1000 ImageNet classes do not."""

    background: bool = False
    labels: tuple[str, ...] | None = None

    @classmethod
    def default(cls, num_classes: int) -> Classes:
        """What a head of this many classes means when nothing says otherwise: slim's background for 1001."""
        return cls(background=num_classes == NUM_CLASSES)

    def metadata(self) -> dict[str, str]:
        """`background` ("true"/"false") and, when known, `labels`: a JSON list, or "imagenet" for the ImageNet
        names."""
        out = {"background": str(self.background).lower()}
        if self.labels is not None:
            imagenet = self.labels == imagenet_names(self.background)
            out["labels"] = IMAGENET_LABELS if imagenet else json.dumps(list(self.labels))
        return out

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], num_classes: int) -> Classes:
        """The inverse of `metadata` (absent keys: `default`)."""
        background = metadata.get("background", str(cls.default(num_classes).background).lower()) == "true"
        text = metadata.get("labels")
        try:
            if text is None or text == IMAGENET_LABELS:
                labels = None if text is None else imagenet_names(background)
            else:
                labels = tuple(map(str, json.loads(text)))
        except (ValueError, TypeError) as exc:
            raise ModelFormatError(f"unreadable class names in the metadata ({exc})") from None
        return cls(background, labels)


def imagenet_names(background: bool) -> tuple[str, ...]:
    """The ImageNet class names: 1001 with "background" first, or the 1000 without it."""
    from mobilenet_zoo.model.labels import imagenet_labels

    return imagenet_labels() if background else imagenet_labels()[1:]


@dataclass
class MobileNetV1Model:
    """A MobileNet V1 network: its config, its slim-named weights and, when quantized, its quantization.

    `backbone` says how writers build the graph (extra feature outputs, pooling, output stride, input size);
    the default is the released network. `classes` says what the outputs mean (default: `Classes.default`).
    """

    config: ModelConfig
    weights: dict[str, np.ndarray]
    quant: QuantInfo | None = None
    source: str = ""
    backbone: Backbone = Backbone()
    classes: Classes | None = None
    # How a float model's file stores its weights: None (float32), "float16" (fp16 weights dequantized at load) or
    # "int8-dynamic" (int8 per-channel weights, float activations: TFLite's hybrid kernels). `weights` hold the
    # dequantized values; `stored_weights` the int8 ones of "int8-dynamic" (those the file keeps as int8).
    weight_storage: str | None = None
    stored_weights: dict[str, QuantizedTensor] | None = None

    def __post_init__(self) -> None:
        if self.classes is None:
            self.classes = Classes.default(self.config.num_classes)

    def __repr__(self) -> str:
        """One line: variant, precision, parameters, classes and backbone options (never the weight arrays)."""
        options = " ".join(f"{key}={value}" for key, value in self.backbone.metadata().items())
        named = ", named" if self.classes.labels is not None else ""
        return (
            f"MobileNetV1Model({self.config.name}, {self.precision}, "
            f"{self.parameter_count() / 1e6:.2f}M parameters, {self.config.num_classes} classes{named}"
            f"{', ' + options if options else ''}, source={self.source!r})"
        )

    @property
    def precision(self) -> str:
        """uint8 or int8 (the integer core's activations), else float32 or its weight storage (float16,
        int8-dynamic)."""
        if self.quant is not None and self.config.quantized:
            return self.quant.activation_dtype
        return self.weight_storage or "float32"

    @property
    def input_size(self) -> int:
        """Height and width of the input the built graph takes."""
        return self.backbone.input_size or self.config.resolution

    def with_backbone(self, backbone: Backbone) -> MobileNetV1Model:
        """The same weights built with other backbone options."""
        return replace(self, backbone=backbone)

    def with_labels(self, labels: list[str] | tuple[str, ...]) -> MobileNetV1Model:
        """The same model with these class names (one per output), refused unless there are as many as classes."""
        labels = tuple(labels)
        if len(labels) != self.config.num_classes:
            raise ModelFormatError(
                f"{len(labels)} class names for the {self.config.num_classes} outputs of {self.config.name}"
            )
        return replace(self, classes=replace(self.classes, labels=labels))

    @classmethod
    def from_quantized(
        cls, config: ModelConfig, quant: QuantInfo, metadata: dict[str, str], *, source: str, backbone: Backbone
    ) -> MobileNetV1Model:
        """The validated quantized model one of our files records: its integers, their dequantized values as the
        weights, and what its metadata says beyond them (classes, padding)."""
        weights = {name: tensor.dequantize() for name, tensor in quant.tensors.items()}
        model = cls(config, weights, quant=quant, source=metadata.get("source", source), backbone=backbone)
        return model.with_recorded(metadata).validate()

    def with_recorded(self, metadata: dict[str, str]) -> MobileNetV1Model:
        """The model with what our files record beyond the weights restored: the classes, the padding and a float
        model's weight storage (when its file's own structure does not say it)."""
        config = replace(self.config, padding=metadata.get("padding", self.config.padding))
        storage = self.weight_storage or (None if config.quantized else metadata.get(WEIGHT_STORAGE))
        classes = Classes.from_metadata(metadata, config.num_classes)
        return replace(self, config=config, classes=classes, weight_storage=storage)

    @property
    def is_folded(self) -> bool:
        """True when BatchNorm has been folded into biases (always for quantized models)."""
        return self.config.layers()[0].bias_name in self.weights

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.config.folded_shapes() if self.is_folded else self.config.checkpoint_shapes()

    def validate(self) -> MobileNetV1Model:
        """Check every expected variable is there with its shape; return self."""
        expected = self.expected_shapes()
        missing = sorted(set(expected) - set(self.weights))
        if missing:
            raise ModelFormatError(
                f"not a MobileNet V1 {self.config.name}: missing {missing[0]} (and {len(missing) - 1} more)"
                if len(missing) > 1
                else f"not a MobileNet V1 {self.config.name}: missing {missing[0]}"
            )
        for name, shape in expected.items():
            got = tuple(self.weights[name].shape)
            if got != shape:
                raise ModelFormatError(f"{name} has shape {got}, expected {shape} for {self.config.name}")
        if self.config.quantized and self.quant is None:
            raise ModelFormatError(f"{self.config.name} is quantized but carries no quantization parameters")
        if self.classes.labels is not None and len(self.classes.labels) != self.config.num_classes:
            raise ModelFormatError(
                f"{self.config.name} names {len(self.classes.labels)} classes but has {self.config.num_classes}"
            )
        if self.config.quantized and any(placed.valid for placed in placed_layers(self.config, self.backbone)):
            raise ModelFormatError(
                f"{self.config.name} pads as Keras does on odd maps at {self.input_size}x"
                f"{self.input_size}: quantized models are built with TF SAME padding only"
            )
        return self

    def fold(self) -> MobileNetV1Model:
        """Return the equivalent model with BatchNorm folded into kernels and biases."""
        if self.is_folded:
            return self
        folded: dict[str, np.ndarray] = {}
        for layer in self.config.layers():
            gamma = self.weights[layer.bn_name("gamma")]
            beta = self.weights[layer.bn_name("beta")]
            mean = self.weights[layer.bn_name("moving_mean")]
            var = self.weights[layer.bn_name("moving_variance")]
            scale = (gamma / np.sqrt(var + BN_EPSILON)).astype(np.float32)
            kernel = self.weights[layer.weight_name]
            # The output channel is the last axis, except for depthwise (HWC1) where it is axis 2.
            folded[layer.weight_name] = (kernel * (scale[:, None] if layer.kind == "depthwise" else scale)).astype(
                np.float32
            )
            folded[layer.bias_name] = (beta - mean * scale).astype(np.float32)
        folded[self.config.logits_weight_name] = self.weights[self.config.logits_weight_name]
        folded[self.config.logits_bias_name] = self.weights[self.config.logits_bias_name]
        return replace(self, weights=folded)

    def unfold(self) -> MobileNetV1Model:
        """An unfolded equivalent (BatchNorm variables everywhere): a folded model gets identity BatchNorms
        (gamma 1, beta = bias, mean 0, variance 1 - eps) around its biases."""
        if not self.is_folded:
            return self
        config = self.config
        weights = {name: self.weights[name] for name in (config.logits_weight_name, config.logits_bias_name)}
        for layer in config.layers():
            bias = self.weights[layer.bias_name]
            weights[layer.weight_name] = self.weights[layer.weight_name]
            weights[layer.bn_name("gamma")] = np.ones_like(bias)
            weights[layer.bn_name("beta")] = bias
            weights[layer.bn_name("moving_mean")] = np.zeros_like(bias)
            weights[layer.bn_name("moving_variance")] = np.full_like(bias, 1.0 - BN_EPSILON)
        return replace(self, weights=weights)

    def parameter_count(self) -> int:
        """Number of stored float values (folded or not)."""
        return int(sum(v.size for v in self.weights.values()))

    def metadata(self) -> dict[str, str]:
        """String metadata our files record: the variant, where its weights came from, the producer, the classes
        (count, background, names), the padding when it is Keras', and the backbone options."""
        return {
            "name": self.config.name,
            "alpha": str(self.config.alpha),
            "resolution": str(self.config.resolution),
            "source": self.source,
            "producer": PRODUCER,
            "num_classes": str(self.config.num_classes),
            **self.classes.metadata(),
            **({"padding": self.config.padding} if self.config.padding != "same" else {}),
            **({WEIGHT_STORAGE: self.weight_storage} if self.weight_storage and not self.config.quantized else {}),
            **self.backbone.metadata(),
        }


def with_dense_head(
    model: MobileNetV1Model, weights: np.ndarray, biases: np.ndarray, source: object
) -> MobileNetV1Model:
    """`model` with a dense layer on its logits folded into its classifier, in float64 (the one fold every reader
    of a head uses): (x K + b) W + c = x (K W) + (b W + c): a C x N classifier, no background class, names unknown."""
    config = model.config
    weights, biases = np.asarray(weights, np.float64), np.asarray(biases, np.float64)
    if weights.ndim != 2 or weights.shape[0] != config.num_classes or biases.shape != (weights.shape[1],):
        raise ModelFormatError(
            f"{source}: dense head of shape {list(weights.shape)} + {list(biases.shape)} does not "
            f"take the {config.num_classes} logits of {config.name}"
        )
    kernel = np.asarray(model.weights[config.logits_weight_name], np.float64)[0, 0]
    bias = np.asarray(model.weights[config.logits_bias_name], np.float64)
    head_config = replace(config, num_classes=int(weights.shape[1]))
    folded = dict(model.weights)
    folded[config.logits_weight_name] = (kernel @ weights)[None, None].astype(np.float32)
    folded[config.logits_bias_name] = (bias @ weights + biases).astype(np.float32)
    # the folded classifier is float32 whatever the weights were stored as (float16, int8)
    float32 = {"weight_storage": None, "stored_weights": None}
    return replace(model, config=head_config, weights=folded, classes=Classes(background=False), **float32).validate()


def config_from_metadata(metadata: dict[str, str], source: object) -> ModelConfig:
    """The variant recorded by `MobileNetV1Model.metadata` (plus optional `quantized`, `num_classes` and `padding`)."""
    producer = metadata.get("producer")
    if producer != PRODUCER:
        raise ModelFormatError(
            f"{source}: not written by {PRODUCER} (metadata producer {producer!r}); only its own files can be read"
        )
    try:
        config = ModelConfig(
            alpha=float(metadata["alpha"]),
            resolution=int(metadata["resolution"]),
            quantized=metadata.get("quantized") == "true",
            num_classes=int(metadata.get("num_classes", NUM_CLASSES)),
            padding=metadata.get("padding", "same"),
        )
    except (KeyError, ValueError, ZooError) as exc:
        raise ModelFormatError(f"{source}: metadata lacks a valid alpha and resolution ({exc})") from exc
    if metadata.get("name") != config.name:
        raise ModelFormatError(f"{source}: metadata name {metadata.get('name')!r} does not match {config.name}")
    return config


# TF kernel layout -> OIHW (PyTorch, ONNX): HWIO -> OIHW for convolutions, HWC1 -> C1HW for depthwise.
_TO_OIHW_AXES = {"conv": (3, 2, 0, 1), "pointwise": (3, 2, 0, 1), "depthwise": (2, 3, 0, 1)}
_FROM_OIHW_AXES = {kind: tuple(int(axis) for axis in np.argsort(axes)) for kind, axes in _TO_OIHW_AXES.items()}


def to_oihw(kernel: np.ndarray, kind: str) -> np.ndarray:
    """A TF-layout kernel of a layer kind (conv, pointwise, depthwise) in OIHW layout, contiguous."""
    return np.ascontiguousarray(kernel.transpose(_TO_OIHW_AXES[kind]))


def from_oihw(kernel: np.ndarray, kind: str) -> np.ndarray:
    """The inverse of `to_oihw`: an OIHW kernel back in TF layout, contiguous."""
    return np.ascontiguousarray(kernel.transpose(_FROM_OIHW_AXES[kind]))


def image_batch(images: np.ndarray, dtype: type, resolution: int, model_kind: str) -> np.ndarray:
    """`images` as an array of `dtype`, refused unless it is an N x resolution x resolution x 3 batch."""
    batch = np.asarray(images, dtype)
    if batch.ndim != 4 or batch.shape[1:] != (resolution, resolution, 3):
        raise ModelFormatError(
            f"{model_kind} takes N x {resolution} x {resolution} x 3 {batch.dtype} images, got {batch.shape}"
        )
    return batch


def infer_alpha(first_conv_channels: int) -> float:
    """The width multiplier whose Conv2d_0 has this many channels."""
    from mobilenet_zoo.model.arch import ALPHAS, FIRST_CONV_DEPTH, depth

    for alpha in ALPHAS:
        if depth(FIRST_CONV_DEPTH, alpha) == first_conv_channels:
            return alpha
    raise ModelFormatError(
        f"first convolution has {first_conv_channels} channels: no MobileNet V1 width multiplier gives that"
    )


def random_model(config: ModelConfig, seed: int = 0) -> MobileNetV1Model:
    """A float model with random (He-scaled) weights and plausible BatchNorm statistics, for fixtures."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for name, shape in config.checkpoint_shapes().items():
        if name.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("beta") or name.endswith("moving_mean"):
            value = rng.normal(0.0, 0.1, shape)
        elif name.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("biases"):
            value = rng.normal(0.0, 0.01, shape)
        else:
            fan_in = shape[0] * shape[1] * (1 if "depthwise" in name else shape[2])
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        weights[name] = value.astype(np.float32)
    return MobileNetV1Model(config, weights, source=f"random(seed={seed})")
