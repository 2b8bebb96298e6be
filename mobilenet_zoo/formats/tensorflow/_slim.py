"""TensorFlow format: slim checkpoints, frozen graphs and SavedModels of MobileNet V1.

`slim_session` builds the forward pass in `tf.compat.v1` graph mode exactly as TF-slim's
`nets/mobilenet_v1.py` does (variable names, scopes, op names, FusedBatchNorm, ReLU6, SAME padding,
the `Logits` head and the `Predictions` softmax), with the canonical weights loaded into its variables,
under the model's backbone options (feature end points, pooling, output stride, input size).
From that one graph come the checkpoint, the eval graph, the frozen graph, the float TFLite flatbuffer and
`graph_runner`; the SavedModel traces the same builder in a `tf.function` over variables of the slim names
(`saved_model_module`). `read` maps any of them back to the canonical model by slim variable name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import MissingDependencyError, ModelFormatError
from mobilenet_zoo.fsutil import atomic_folder
from mobilenet_zoo.model.arch import (
    BN_EPSILON,
    INPUT_NODE,
    LOGITS_NODE,
    LOGITS_SCOPE,
    NUM_CLASSES,
    OUTPUT_NODE,
    SCOPE,
    Backbone,
    ModelConfig,
    PlacedLayer,
    placed_layers,
    pool_geometry,
)
from mobilenet_zoo.model.canonical import Classes, MobileNetV1Model, image_batch, infer_alpha, with_dense_head

SIGNATURE_KEY = "serving_default"
METADATA_FILE = Path("assets.extra") / "mobilenet_zoo.json"  # our SavedModels' `MobileNetV1Model.metadata()`
SAVED_VARIABLES = "slim_variables"  # the saved module's dict of variables by slim name
_SAVED_VARIABLE_KEY = re.compile(rf"^{SAVED_VARIABLES}/(.+)/\.ATTRIBUTES/VARIABLE_VALUE$")  # its checkpoint keys
_MOVING_STATISTICS = ("moving_mean", "moving_variance")
LOGITS = "logits"
PROBABILITIES = "probabilities"
_BN_LEAVES = ("gamma", "beta", "moving_mean", "moving_variance")
_CHECKPOINT_SUFFIX = re.compile(r"\.(index|meta|data-\d+-of-\d+)$")
_RESOLUTION_IN_NAME = re.compile(r"_(\d+)(?:_quant)?$")


# ---------------------------------------------------------------------------------------------- the slim graph


@dataclass
class SlimGraph:
    """A slim MobileNet V1 graph in a live session, its variables holding a canonical model's weights."""

    tf: ModuleType
    graph: Any  # tf.Graph
    session: Any  # tf.compat.v1.Session
    images: Any  # the `input` placeholder
    logits: Any
    probabilities: Any
    features: dict[str, Any] = field(default_factory=dict)  # feature name -> that layer's Relu6 output

    @property
    def outputs(self) -> dict[str, Any]:
        """Every output by its Runner name: logits, probabilities and the feature end points."""
        return {LOGITS: self.logits, PROBABILITIES: self.probabilities, **self.features}

    @property
    def feature_nodes(self) -> list[str]:
        """Graph node names of the feature end points (their Relu6 ops), in layer order."""
        return [tensor.op.name for tensor in self.features.values()]

    @property
    def output_nodes(self) -> list[str]:
        """Graph node names of the outputs: Predictions, logits, then the features."""
        return [self.probabilities.op.name, self.logits.op.name, *self.feature_nodes]

    def eval_graph_def(self):
        """The graph with its variables (what the official `_eval.pbtxt` holds)."""
        return self.graph.as_graph_def()

    def frozen_graph_def(self):
        """The graph with variables turned into constants of the same (slim) names, pruned to the outputs."""
        return self.tf.compat.v1.graph_util.convert_variables_to_constants(
            self.session, self.graph.as_graph_def(), self.output_nodes
        )

    def save_checkpoint(self, prefix: Path) -> None:
        """A tf.compat.v1 Saver checkpoint: `prefix.index`, `prefix.data-00000-of-00001`, `prefix.meta`."""
        with self.graph.as_default():
            saver = self.tf.compat.v1.train.Saver(self.tf.compat.v1.global_variables())
        saver.save(self.session, str(prefix), write_state=False)

    def tflite(self) -> bytes:
        """A float TFLite flatbuffer of the frozen graph with input fixed at batch 1, as the released models.

        Its outputs are the Predictions, then the feature end points in layer order.
        """
        input_shape = [1, *self.images.shape[1:]]
        output_arrays = [self.probabilities.op.name, *self.feature_nodes]
        converter = self.tf.compat.v1.lite.TFLiteConverter(
            self.frozen_graph_def(),
            None,
            None,
            input_arrays_with_shape=[(INPUT_NODE, input_shape)],
            output_arrays=output_arrays,
        )
        return converter.convert()


@contextmanager
def slim_session(model: MobileNetV1Model, *, resource_variables: bool = True) -> Iterator[SlimGraph]:
    """Build `model` as slim builds it (input `input`: float32 NHWC, dynamic batch) in a session with its weights.

    `resource_variables=False` makes the reference variables (VariableV2) of slim-era graphs and checkpoints;
    resource variables are what TensorFlow 2 loads a SavedModel with.
    """
    tf = require("tensorflow")
    config = model.validate().config
    graph = tf.Graph()
    with _errors_only(tf), graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, model.input_size, model.input_size, 3], name=INPUT_NODE)
        with tf.compat.v1.variable_scope("", use_resource=resource_variables):
            logits, probabilities, features = build_mobilenet_v1(
                tf, images, config, model.backbone, folded=model.is_folded
            )
        variables = tf.compat.v1.global_variables()
        with tf.compat.v1.Session(graph=graph) as session:
            _load_variables(session, variables, model.weights)
            yield SlimGraph(tf, graph, session, images, logits, probabilities, features)


@contextmanager
def _errors_only(tf: ModuleType) -> Iterator[None]:
    """Silence TensorFlow's Python warnings (deprecations of the v1 APIs used here) for the duration."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


def build_mobilenet_v1(tf: ModuleType, images, config: ModelConfig, backbone: Backbone, *, folded: bool = False):
    """Slim's `mobilenet_v1(..., is_training=False)` on `images` under `backbone`.

    Returns (logits, probabilities, features: feature name -> Relu6 output of that layer). Variables are
    created empty (zeros) under their slim names; `slim_session` loads the weights. A folded model has
    `biases` and BiasAdd where slim has BatchNorm.
    """
    v1 = tf.compat.v1
    wanted = set(backbone.feature_names)
    features = {}
    with v1.variable_scope(SCOPE) as scope:
        # slim re-enters the scope object in mobilenet_v1_base, hence op names `MobilenetV1/MobilenetV1/...`.
        with v1.variable_scope(scope):
            net = images
            for placed in placed_layers(config, backbone):
                net = _conv_block(tf, net, placed, folded)
                if placed.layer.scope in wanted:
                    features[placed.layer.scope] = net
        with v1.variable_scope("Logits"):
            logits = _logits_head(tf, net, config, backbone.pooling)
        predictions = _slim_softmax(tf, logits, "Predictions")
    return logits, predictions, features


def _variable(tf: ModuleType, name: str, shape: tuple[int, ...]):
    """A float variable, zeros until loaded, in the current variable scope."""
    return tf.compat.v1.get_variable(name, shape, tf.float32, initializer=tf.compat.v1.zeros_initializer())


def _conv_block(tf: ModuleType, inputs, placed: PlacedLayer, folded: bool):
    """slim.conv2d / slim.separable_conv2d (dilated by the placed rate) with BatchNorm (or biases when folded) and ReLU6."""
    layer = placed.layer
    with tf.compat.v1.variable_scope(layer.scope):
        strides = [1, placed.stride, placed.stride, 1]
        if layer.kind == "depthwise":
            kernel = _variable(tf, "depthwise_weights", layer.weight_shape)
            rate = [placed.rate, placed.rate]
            padding = "VALID" if placed.valid else "SAME"  # VALID: Keras padding on an odd map
            net = tf.compat.v1.nn.depthwise_conv2d(inputs, kernel, strides, padding, rate=rate, name="depthwise")
        else:
            kernel = _variable(tf, "weights", layer.weight_shape)
            net = tf.nn.conv2d(inputs, kernel, strides, "SAME", name="Conv2D")
        if folded:
            net = tf.nn.bias_add(net, _variable(tf, "biases", (layer.out_channels,)), name="BiasAdd")
        else:
            with tf.compat.v1.variable_scope("BatchNorm"):
                gamma, beta, mean, variance = (_variable(tf, leaf, (layer.out_channels,)) for leaf in _BN_LEAVES)
                net, _, _ = tf.compat.v1.nn.fused_batch_norm(
                    net, gamma, beta, mean, variance, epsilon=BN_EPSILON, is_training=False, name="FusedBatchNorm"
                )
        return tf.nn.relu6(net, name="Relu6")


def _logits_head(tf: ModuleType, features, config: ModelConfig, pooling: str):
    """AvgPool_1a (`pool_geometry`, VALID), Dropout_1b (identity at eval), Conv2d_1c_1x1, and SpatialSqueeze
    when the pool leaves a 1x1 map (otherwise the logits stay N x S x S x classes, as slim's spatial_squeeze=False)."""
    kernel, stride = pool_geometry(int(features.shape[1]), pooling)
    with tf.compat.v1.name_scope("AvgPool_1a"):
        net = tf.nn.avg_pool2d(features, kernel, stride, "VALID", name="AvgPool")
    with tf.compat.v1.name_scope("Dropout_1b"):
        net = tf.identity(net, name="Identity")
    with tf.compat.v1.variable_scope("Conv2d_1c_1x1"):
        weights = _variable(tf, "weights", (1, 1, config.feature_channels, config.num_classes))
        biases = _variable(tf, "biases", (config.num_classes,))
        net = tf.nn.bias_add(tf.nn.conv2d(net, weights, 1, "SAME", name="Conv2D"), biases, name="BiasAdd")
    if net.shape[1] > 1:
        return net
    return tf.squeeze(net, [1, 2], name="SpatialSqueeze")


def _slim_softmax(tf: ModuleType, logits, scope: str):
    """slim.softmax: Reshape to 2-D, Softmax, Reshape_1 back to the logits' shape."""
    with tf.compat.v1.variable_scope(scope):
        flat = tf.reshape(logits, [-1, int(logits.shape[-1])], name="Reshape")
        probabilities = tf.nn.softmax(flat, name="Softmax")
        return tf.reshape(probabilities, tf.shape(logits), name="Reshape_1")


def _load_variables(session, variables: list, weights: dict[str, np.ndarray]) -> None:
    """Initialize every variable from the weight of its name, by feeding its initial value (keeps graphs small)."""
    feeds = {variable.initializer.inputs[1]: weights[variable.op.name] for variable in variables}
    session.run([variable.initializer for variable in variables], feed_dict=feeds)


# ---------------------------------------------------------------------------------------------- writing


def write(model: MobileNetV1Model, out: Path) -> Path:
    """Write a TF2 SavedModel folder: `tf.saved_model.load(out)(images)` and its `serving_default` signature map
    `input` (float32 NHWC in [-1, 1], any batch) to {`logits`, `probabilities`, feature name...}; METADATA_FILE
    holds `model.metadata()` (so `read` restores the variant and backbone options). Returns `out`."""
    tf = require("tensorflow")
    out = Path(out)
    module = saved_model_module(model.validate())
    with atomic_folder(out) as staging, _errors_only(tf):
        tf.saved_model.save(module, str(staging), signatures={SIGNATURE_KEY: module.__call__})
        (staging / METADATA_FILE).parent.mkdir()
        (staging / METADATA_FILE).write_text(json.dumps(model.metadata()), encoding="utf-8")
    return out


def saved_model_module(model: MobileNetV1Model):
    """A `tf.Module` holding the weights as variables by slim name (`SAVED_VARIABLES`; moving statistics not
    trainable) whose `__call__` (a `tf.function` on float32 NHWC batches named `input`) runs slim's graph
    (`build_mobilenet_v1`, taking those variables through a custom getter) and returns the outputs by name."""
    tf = require("tensorflow")
    config, backbone, folded, size = model.config, model.backbone, model.is_folded, model.input_size
    variables = {
        name: tf.Variable(value, name=name, trainable=not name.endswith(_MOVING_STATISTICS))
        for name, value in model.weights.items()
    }

    def slim_variable(getter, name, *args, **kwargs):
        return variables[name]

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name=INPUT_NODE)])
    def call(images):
        with tf.compat.v1.variable_scope("", custom_getter=slim_variable):
            logits, probabilities, features = build_mobilenet_v1(tf, images, config, backbone, folded=folded)
        return {LOGITS: logits, PROBABILITIES: probabilities, **features}

    module = tf.Module(name=SCOPE)
    setattr(module, SAVED_VARIABLES, variables)
    module.__call__ = call
    return module


def tflite_bytes(model: MobileNetV1Model) -> bytes:
    """A float TFLite flatbuffer of `model` through the TensorFlow converter."""
    with slim_session(model) as slim:
        return slim.tflite()


@contextmanager
def graph_runner(model: MobileNetV1Model) -> Iterator[TensorFlowRunner]:
    """A Runner of `model`'s slim graph in a live session (the float reference for any backbone options)."""
    with slim_session(model) as slim:
        outputs = slim.outputs
        yield TensorFlowRunner(lambda images: slim.session.run(outputs, {slim.images: images}), model.input_size)


# ---------------------------------------------------------------------------------------------- reading


def read(path: Path) -> MobileNetV1Model:
    """Read a slim checkpoint (prefix or any of its files), a frozen graph, or a float SavedModel folder."""
    path = Path(path)
    if path.is_dir():
        return _read_saved_model(path)
    if ".ckpt" in path.name:
        return _read_checkpoint(checkpoint_prefix(path))
    if path.suffix == ".pb":
        return _read_frozen_graph(path)
    raise ModelFormatError(
        f"{path}: not a TensorFlow model (expected a .ckpt checkpoint, a frozen .pb or a SavedModel folder)"
    )


def checkpoint_prefix(path: Path) -> Path:
    """`NAME.ckpt` from `NAME.ckpt` itself or any of `NAME.ckpt.index`, `.meta`, `.data-00000-of-00001`."""
    return path.with_name(_CHECKPOINT_SUFFIX.sub("", path.name))


def _read_checkpoint(prefix: Path) -> MobileNetV1Model:
    reader = _checkpoint_reader(prefix)
    return _canonical_model(
        set(reader.get_variable_to_shape_map()), reader.get_tensor, _checkpoint_resolution(prefix), prefix
    )


def _checkpoint_reader(prefix: Path):
    """`tf.train.load_checkpoint` with one-line errors for a missing or damaged checkpoint."""
    tf = require("tensorflow")
    if not prefix.with_name(prefix.name + ".index").exists():
        raise ModelFormatError(f"{prefix}: no checkpoint there ({prefix.name}.index is missing)")
    try:
        return tf.train.load_checkpoint(str(prefix))
    except (tf.errors.OpError, ValueError) as exc:
        raise ModelFormatError(f"{prefix}: damaged checkpoint ({str(exc).splitlines()[0]})") from exc


def _read_frozen_graph(path: Path) -> MobileNetV1Model:
    """The Const nodes of a frozen graph, read with plain protobuf (`graphdef`): no TensorFlow needed."""
    from mobilenet_zoo.formats.tensorflow import _graphdef as graphdef

    graph_def = graphdef.read_graph_def(path)
    constants = graphdef.constant_nodes(graph_def)

    def fetch(name: str) -> np.ndarray:
        return graphdef.constant_array(constants[name])

    names, head, beyond = set(constants), None, None
    try:
        head = dense_head(graph_def, path)
    except ModelFormatError as exc:  # raised once the network itself is read: what it lacks is the first error
        beyond = exc
    if head is not None and head.on_features:
        names, fetch = _head_as_classifier(names, fetch, head, path)
    model = _canonical_model(names, fetch, _input_resolution(graph_def, path), path)
    if beyond is not None:
        raise beyond
    if head is None:
        return model
    if head.on_features:
        return replace(model, classes=Classes(background=False))
    return with_dense_head(model, fetch(head.weights), fetch(head.biases), path)


def _head_as_classifier(
    names: set[str], fetch: Callable[[str], np.ndarray], head: DenseHead, path: Path
) -> tuple[set[str], Callable[[str], np.ndarray]]:
    """A dense head on the pooled features is the classifier: its C x N weights as the 1x1 kernel, its bias."""
    kernel, bias = f"{SCOPE}/{LOGITS_SCOPE}/weights", f"{SCOPE}/{LOGITS_SCOPE}/biases"
    if kernel in names:
        raise ModelFormatError(
            f"{path}: holds both the network's classifier and a dense head ({head.logits}) on the "
            "pooled features: convert --backbone-only keeps the network's"
        )
    arrays = {kernel: np.asarray(fetch(head.weights))[None, None], bias: np.asarray(fetch(head.biases))}
    return names | set(arrays), lambda name: arrays[name] if name in arrays else fetch(name)


def read_backbone(path: Path) -> tuple[MobileNetV1Model, list[str], bytes]:
    """A frozen graph's network without its dense head: (the plain model, the head's node names, the graph
    pruned of the head, serialized: the reference of the plain model). No head: nothing dropped."""
    from mobilenet_zoo.formats.tensorflow import _graphdef as graphdef

    graph_def = graphdef.read_graph_def(path)
    head = dense_head(graph_def, path)
    dropped = list(head.nodes) if head else []
    pruned = type(graph_def)()
    pruned.CopyFrom(graph_def)
    del pruned.node[:]
    pruned.node.extend(node for node in graph_def.node if node.name not in dropped)
    _restore_predictions(pruned)
    constants = graphdef.constant_nodes(pruned)
    model = _canonical_model(
        set(constants), lambda name: graphdef.constant_array(constants[name]), _input_resolution(pruned, path), path
    )
    return model, dropped, pruned.SerializeToString()


def _restore_predictions(graph_def) -> None:
    """Add slim's softmax on the 2-D logits (`Predictions/Softmax`, then `Predictions/Reshape_1` as an identity of
    the same shape) when freezing to a head's output pruned them away."""
    names = {node.name for node in graph_def.node}
    softmax = f"{SCOPE}/Predictions/Softmax"
    for name, op, source in ((softmax, "Softmax", HEAD_INPUTS[0]), (OUTPUT_NODE, "Identity", softmax)):
        if name not in names and source in names | {softmax}:
            node = graph_def.node.add(name=name, op=op, input=[source])
            node.attr["T"].type = 1  # DT_FLOAT


# ---------------------------------------------------------------------------------------------- dense heads

HEAD_INPUTS = ("MobilenetV1/Predictions/Reshape", LOGITS_NODE)  # the 2-D logits a head may take (retrain.py: the first)
POOLED_INPUTS = (f"{SCOPE}/Logits/AvgPool_1a/AvgPool", f"{SCOPE}/Logits/Dropout_1b/Identity")  # or the pooled features
_PASS_THROUGH = ("Identity", "PlaceholderWithDefault")  # `read` identities, retrain.py's BottleneckInputPlaceholder
_FLATTENS = ("Squeeze", "Reshape")  # N x 1 x 1 x C pooled features to N x C
_ADDS = ("Add", "AddV2", "BiasAdd")


@dataclass(frozen=True)
class DenseHead:
    """A dense layer on a frozen graph's logits, as TensorFlow's `retrain.py` adds it: MatMul by a weight constant,
    Add of a bias constant (`logits`), optional Softmax (`probabilities`); `nodes` are all its nodes, graph order."""

    weights: str
    biases: str
    logits: str
    probabilities: str | None
    nodes: tuple[str, ...]
    on_features: bool = False  # on the pooled features (then it is the classifier), not on the logits


def _input_name(text: str) -> str:
    """A NodeDef input's node name (no `^` control marker, no `:port`)."""
    return text.lstrip("^").split(":")[0]


def _is_network_node(name: str) -> bool:
    return name == INPUT_NODE or name.startswith(f"{SCOPE}/")


def dense_head(graph_def, path: Path) -> DenseHead | None:
    """The dense head on the network's logits, None when the graph holds the network only. Any other node beyond
    the network (an unknown branch, a second head, anything after the head's softmax) is refused, naming it."""
    extras = [node for node in graph_def.node if not _is_network_node(node.name)]
    if not extras:
        return None
    head = _find_dense_head({node.name: node for node in graph_def.node}, extras)
    unknown = [node.name for node in extras if head is None or node.name not in head.nodes]
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise ModelFormatError(
            f"{path}: nodes beyond the MobileNet V1 network that are not a dense head on its logits: "
            f"{', '.join(unknown[:3])}{more}"
        )
    return head


def _find_dense_head(nodes: dict[str, Any], extras: list) -> DenseHead | None:
    """The MatMul -> Add (-> Softmax) chain on the logits among `extras`, with constant weights and biases."""
    consumers: dict[str, list] = {}
    for node in extras:
        for name in node.input:
            consumers.setdefault(_input_name(name), []).append(node)

    def source(name: str, passed: list[str]) -> str:
        """Follow pass-through (and flattening) nodes back from `name`, collecting them in `passed`."""
        while (
            name in nodes
            and nodes[name].op in _PASS_THROUGH + _FLATTENS
            and nodes[name].input
            and not _is_network_node(name)
        ):
            passed.append(name)
            if nodes[name].op == "Reshape" and len(nodes[name].input) == 2:
                passed.append(_input_name(nodes[name].input[1]))  # its shape constant
            name = _input_name(nodes[name].input[0])
        return name

    def constant(name: str, passed: list[str]) -> str | None:
        name = source(name, passed)
        return name if name in nodes and nodes[name].op == "Const" and not _is_network_node(name) else None

    for matmul in (node for node in extras if node.op == "MatMul" and len(node.input) == 2):
        passed: list[str] = []
        taken = source(_input_name(matmul.input[0]), passed)
        if taken not in HEAD_INPUTS + POOLED_INPUTS:
            continue
        if matmul.attr["transpose_a"].b or matmul.attr["transpose_b"].b:
            continue
        weights = constant(_input_name(matmul.input[1]), passed)
        adds = [node for node in consumers.get(matmul.name, []) if node.op in _ADDS and len(node.input) == 2]
        if weights is None or len(adds) != 1 or _input_name(adds[0].input[0]) != matmul.name:
            continue
        biases = constant(_input_name(adds[0].input[1]), passed)
        if biases is None:
            continue
        softmaxes = [node for node in consumers.get(adds[0].name, []) if node.op == "Softmax"]
        probabilities = softmaxes[0].name if len(softmaxes) == 1 else None
        members = {matmul.name, adds[0].name, weights, biases, *passed, *([probabilities] if probabilities else [])}
        order = tuple(node.name for node in extras if node.name in members)
        return DenseHead(weights, biases, adds[0].name, probabilities, order, taken in POOLED_INPUTS)
    return None


def _read_saved_model(folder: Path) -> MobileNetV1Model:
    """The variant and backbone options from the metadata `write` records, else the resolution from the signature."""
    metadata_path = folder / METADATA_FILE
    metadata = json.loads(metadata_path.read_text(encoding="utf-8")) if metadata_path.exists() else {}
    resolution = (
        int(metadata["resolution"])
        if "resolution" in metadata
        else _signature_resolution(_serving_signature(folder), folder)
    )
    names, fetch = _saved_variables(_checkpoint_reader(folder / "variables" / "variables"))
    model = _canonical_model(names, fetch, resolution, folder)
    return model.with_backbone(Backbone.from_metadata(metadata)).with_recorded(metadata)


def _saved_variables(reader) -> tuple[set[str], Callable[[str], np.ndarray]]:
    """The variable names of a SavedModel's checkpoint and a fetch by name. Ours since `saved_model_module` keep
    them in a dict, so the keys are object paths (`slim_variables/<name, '.' as '..', '/' as '.S'>/.ATTRIBUTES/
    VARIABLE_VALUE`); TF1 SavedModels (ours before, the v1 Builder's) are keyed by the names themselves."""
    keys = {key: key for key in reader.get_variable_to_shape_map()}
    saved = {_unescape_object_name(match.group(1)): key for key in keys if (match := _SAVED_VARIABLE_KEY.match(key))}
    keys = saved or keys
    return set(keys), lambda name: reader.get_tensor(keys[name])


def _unescape_object_name(name: str) -> str:
    """Undo TensorFlow's escaping of a name in a checkpoint's object path ('.' -> '..', '/' -> '.S')."""
    return re.sub(r"\.(S|\.)", lambda match: "/" if match.group(1) == "S" else ".", name)


def _canonical_model(
    names: set[str], fetch: Callable[[str], np.ndarray], resolution: int, source: Path
) -> MobileNetV1Model:
    """The model whose slim-named tensors `fetch` returns; refuses anything that is not MobileNet V1."""
    first_kernel = f"{SCOPE}/Conv2d_0/weights"
    if first_kernel not in names:
        raise ModelFormatError(f"{source}: not a MobileNet V1 model: no tensor named {first_kernel}")
    try:
        alpha = infer_alpha(int(fetch(first_kernel).shape[-1]))
        logits_bias = ModelConfig(alpha, resolution).logits_bias_name
        classes = int(fetch(logits_bias).shape[0]) if logits_bias in names else NUM_CLASSES
        config = ModelConfig(alpha, resolution, num_classes=classes)
        folded = config.layers()[0].bias_name in names
        expected = config.folded_shapes() if folded else config.checkpoint_shapes()
        weights = {name: np.asarray(fetch(name), np.float32) for name in expected if name in names}
        return MobileNetV1Model(config, weights, source=str(source)).validate()
    except ModelFormatError as exc:
        raise ModelFormatError(f"{source}: {exc}") from exc


def _load_graph_def(path: Path):
    """TensorFlow's own GraphDef of a binary `.pb` or a text `.pbtxt` (to import into a TensorFlow graph)."""
    tf = require("tensorflow")
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError

    graph_def = tf.compat.v1.GraphDef()
    try:
        if path.suffix == ".pbtxt":
            text_format.Parse(path.read_text(), graph_def)
        else:
            graph_def.ParseFromString(path.read_bytes())
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except (text_format.ParseError, DecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path}: not a TensorFlow GraphDef ({exc})") from exc
    return graph_def


def _input_resolution(graph_def, path: Path) -> int:
    """The side of the square NHWC `input` placeholder."""
    placeholders = [node for node in graph_def.node if node.name == INPUT_NODE and node.op == "Placeholder"]
    if not placeholders:
        raise ModelFormatError(f"{path}: not a MobileNet V1 graph: no `{INPUT_NODE}` placeholder")
    dims = [dim.size for dim in placeholders[0].attr["shape"].shape.dim]
    if len(dims) != 4 or dims[3] != 3:
        raise ModelFormatError(f"{path}: `{INPUT_NODE}` has shape {dims}, expected N x H x W x 3")
    return _square(dims[1], dims[2], path)


def _square(height: int, width: int, path: Path) -> int:
    if height != width or height <= 0:
        raise ModelFormatError(f"{path}: input is {height}x{width}; MobileNet V1 variants take a fixed square size")
    return int(height)


def _checkpoint_resolution(prefix: Path) -> int:
    """From the sibling frozen graph or eval graph, else from the variant name (file name or `_info.txt`)."""
    name = prefix.name.removesuffix(".ckpt")
    for graph_file in (prefix.with_name(f"{name}_frozen.pb"), prefix.with_name(f"{name}_eval.pbtxt")):
        if graph_file.exists():
            from mobilenet_zoo.formats.tensorflow import _graphdef as graphdef

            return _input_resolution(graphdef.read_graph_def(graph_file), graph_file)
    for info in [prefix.with_name(f"{name}_info.txt")] + sorted(prefix.parent.glob("*_info.txt")):
        if info.exists():
            name = info.read_text().partition("Model:")[2].split("\n")[0].strip() or name
            break
    match = _RESOLUTION_IN_NAME.search(name)
    if not match:
        raise ModelFormatError(
            f"{prefix}: cannot tell the input resolution: no {name}_frozen.pb, _eval.pbtxt or _info.txt beside it"
        )
    return int(match.group(1))


def _serving_signature(folder: Path):
    """The `serving_default` SignatureDef of a SavedModel folder, read from saved_model.pb."""
    require("tensorflow")
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString((folder / "saved_model.pb").read_bytes())
    except FileNotFoundError:
        raise ModelFormatError(f"{folder}: not a SavedModel folder (no saved_model.pb)") from None
    for meta_graph in saved_model.meta_graphs:
        if SIGNATURE_KEY in meta_graph.signature_def:
            return meta_graph.signature_def[SIGNATURE_KEY]
    raise ModelFormatError(f"{folder}: SavedModel has no `{SIGNATURE_KEY}` signature")


def _signature_resolution(signature, folder: Path) -> int:
    if INPUT_NODE not in signature.inputs:
        raise ModelFormatError(f"{folder}: serving signature has no `{INPUT_NODE}` input")
    height, width = (dim.size for dim in signature.inputs[INPUT_NODE].tensor_shape.dim[1:3])
    return _square(height, width, folder)


# ---------------------------------------------------------------------------------------------- running


def load_runner(path: Path) -> TensorFlowRunner:
    """The original frozen graph (the reference forward pass) or a SavedModel, run in TensorFlow."""
    path = Path(path)
    if path.is_dir():
        return _saved_model_runner(path)
    if path.suffix == ".pb":
        return _frozen_graph_runner(path)
    raise ModelFormatError(f"{path}: only a frozen .pb graph or a SavedModel folder can run in TensorFlow")


def tflite_stand_in(path: Path) -> Path | None:
    """The official float `NAME.tflite` beside `NAME_frozen.pb`, to run as the float reference when TensorFlow is
    not installed; None when TensorFlow is installed (the frozen graph runs as ever) or there is no such file
    (a `_quant` release's `.tflite` is uint8, not a stand-in for its float graph)."""
    path = Path(path)
    tflite = path.with_name(path.name.removesuffix("_frozen.pb") + ".tflite")
    if not path.name.endswith("_frozen.pb") or path.name.endswith("_quant_frozen.pb") or not tflite.is_file():
        return None
    try:
        require("tensorflow")
    except MissingDependencyError:
        return tflite
    return None


@dataclass
class TensorFlowRunner:
    """Runs a float MobileNet V1 in TensorFlow on NHWC batches in [-1, 1]."""

    function: Callable  # float32 NHWC batch -> {"logits", "probabilities", feature name: tensor}
    resolution: int
    batch_size: int | None = None  # fixed batch of the graph's input, if any
    quantized: bool = False

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        batch = image_batch(images, np.float32, self.resolution, "TensorFlow model")
        step = self.batch_size or len(batch)
        chunks = [self.function(batch[start : start + step]) for start in range(0, len(batch), step)]
        return {name: np.concatenate([np.asarray(chunk[name]) for chunk in chunks]) for name in chunks[0]}


def _frozen_graph_runner(path: Path) -> TensorFlowRunner:
    """Run the graph as it is, from `input` to SpatialSqueeze (logits) and Predictions/Reshape_1."""
    tf = require("tensorflow")
    graph_def = _load_graph_def(path)
    resolution = _input_resolution(graph_def, path)
    names = {node.name for node in graph_def.node}
    if not any(name.startswith(f"{SCOPE}/") for name in names):
        raise ModelFormatError(f"{path}: not a MobileNet V1 graph: no node {LOGITS_NODE}")
    head = dense_head(graph_def, path)
    logits_node, output_node = (head.logits, head.probabilities) if head else (LOGITS_NODE, OUTPUT_NODE)
    if head is not None and output_node is None:  # a head without softmax: TensorFlow's softmax of its logits
        output_node = f"{head.logits}/mobilenet_zoo_softmax"
        graph_def.node.add(name=output_node, op="Softmax", input=[head.logits]).attr["T"].type = 1  # DT_FLOAT
        names.add(output_node)
    missing = [node for node in (logits_node, output_node) if node not in names]
    if missing:
        raise ModelFormatError(f"{path}: not a MobileNet V1 graph: no node {missing[0]}")
    imported = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    tensor = imported.graph.get_tensor_by_name
    function = imported.prune(
        tensor(f"{INPUT_NODE}:0"), {LOGITS: tensor(f"{logits_node}:0"), PROBABILITIES: tensor(f"{output_node}:0")}
    )
    batch_dim = next(node for node in graph_def.node if node.name == INPUT_NODE).attr["shape"].shape.dim[0].size
    return TensorFlowRunner(
        lambda images: function(tf.constant(images)), resolution, batch_dim if batch_dim > 0 else None
    )


def _saved_model_runner(folder: Path) -> TensorFlowRunner:
    """Run the serving signature: `logits`, `probabilities` and any feature outputs it has."""
    tf = require("tensorflow")
    signature = _serving_signature(folder)
    if not {LOGITS, PROBABILITIES} <= set(signature.outputs):
        raise ModelFormatError(
            f"{folder}: serving signature outputs {sorted(signature.outputs)}, expected {LOGITS} and {PROBABILITIES}"
        )
    resolution = _signature_resolution(signature, folder)
    with _errors_only(tf):
        serve = tf.saved_model.load(str(folder)).signatures[SIGNATURE_KEY]
    return TensorFlowRunner(lambda images: serve(**{INPUT_NODE: tf.constant(images)}), resolution)
