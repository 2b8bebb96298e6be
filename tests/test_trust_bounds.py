"""Issue 19 defects 4 and 7: no input exhausts the machine.

ONNX: a constant subgraph is folded by the reader's own numpy code, op by op, only for the ops MobileNet exports use
and with a bound on every tensor it makes; a `Loop` of 10^12 steps or a `ConstantOfShape` / `Expand` / `Tile` of
several GB is refused in one line before anything runs or is allocated.
Tarballs: a member larger than any MobileNet V1 file, a member an official tarball does not have, too many members
and an archive that expands past the bound are refused before they are written, and nothing stays in the cache.

Every hostile file is built here and fed to the CLI in a subprocess (with a timeout and an address-space limit, so
the unfixed code fails these tests instead of hanging or taking the machine's memory).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mobilenet_zoo.arch import ModelConfig
from mobilenet_zoo.constants import HOME_ENV, MIRROR_ENV, OFFLINE_ENV, REGISTRY_ENV
from mobilenet_zoo.model import random_model

onnx = pytest.importorskip("onnx")
helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto

SMALL = ModelConfig(0.25, 128)
TIME_LIMIT = 90.0  # seconds a refusal may take on a loaded machine (each finishes in a few); the unfixed Loop spins
MEMORY_LIMIT = 3 << 30  # address space of the CLI under test: the unfixed reader's multi-GB tensors fail, not land


# ---------------------------------------------------------------------------------------------- running the CLI


def run_cli(*args: object, home: Path, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """`mobilenet-zoo ARGS` in a subprocess with its own cache, a time limit and an address-space limit; returns the
    finished process and how long it took (the test fails when it does not finish in time)."""
    env = {key: value for key, value in os.environ.items() if key not in (MIRROR_ENV, REGISTRY_ENV, OFFLINE_ENV)}
    env[HOME_ENV] = str(home)
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "mobilenet_zoo", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=TIME_LIMIT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT)),
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`mobilenet-zoo {' '.join(map(str, args))}` still ran after {TIME_LIMIT:.0f} s")
    return result, time.monotonic() - started


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 1, nothing on stdout, and one `error: ...` line on stderr holding every fragment."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not lines[0].startswith("error: unexpected ") and "Traceback" not in result.stderr


def cache_leftovers(home: Path) -> list[str]:
    """What the cache holds besides its lock files and empty layout folders: extracted models and tarballs (staging
    folders too), downloads, recorded checksums."""
    layout = {home / folder for folder in ("locks", "models", "local", "downloads")}
    return sorted(
        str(path.relative_to(home))
        for path in (home.rglob("*") if home.exists() else [])
        if path not in layout and path.relative_to(home).parts[0] != "locks"
    )


def folder_contents(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) if folder.exists() else []


# ---------------------------------------------------------------------------------------------- hostile ONNX files


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    """Our float ONNX of 0.25_128 (1.9 MB): the file the hostile ones are made from."""
    from mobilenet_zoo.formats import onnx as onnx_format

    folder = tmp_path_factory.mktemp("trust_bounds_onnx")
    return onnx_format.write(random_model(SMALL, seed=0), folder / "small.onnx")


def with_computed_bias(source: Path, out: Path, build: Callable[[str, str], tuple[list, list]]) -> Path:
    """`source` with the classifier's bias computed by the nodes `build(bias, seed)` returns (with their
    initializers); the original bias stays as the initializer `seed`."""
    proto = onnx.load(str(source))
    classifier = [node for node in proto.graph.node if node.op_type == "Conv"][-1]
    bias = classifier.input[2]
    next(tensor for tensor in proto.graph.initializer if tensor.name == bias).name = "hostile/seed"
    nodes, initializers = build(bias, "hostile/seed")
    proto.graph.initializer.extend(initializers)
    for node in reversed(nodes):
        proto.graph.node.insert(0, node)
    onnx.save(proto, str(out))
    return out


def constant(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def spinning_loop(bias: str, seed: str) -> tuple[list, list]:
    """A Loop of 10^12 steps carrying the bias through unchanged."""
    channels = SMALL.num_classes
    body = helper.make_graph(
        [helper.make_node("Identity", ["go"], ["go_on"]), helper.make_node("Identity", ["carried"], ["carried_on"])],
        "spin",
        [
            helper.make_tensor_value_info("step", TensorProto.INT64, []),
            helper.make_tensor_value_info("go", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried", TensorProto.FLOAT, [channels]),
        ],
        [
            helper.make_tensor_value_info("go_on", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried_on", TensorProto.FLOAT, [channels]),
        ],
    )
    loop = helper.make_node("Loop", ["hostile/steps", "hostile/go", seed], [bias], name="hostile_loop", body=body)
    return [loop], [constant("hostile/steps", np.int64(10**12)), constant("hostile/go", True)]


def _first_channels(big: str, bias: str, seed: str) -> tuple[list, list]:
    """bias = seed + the first `classes` elements of the flattened `big` (zeros)."""
    classes = SMALL.num_classes
    nodes = [
        helper.make_node("Reshape", [big, "hostile/flat"], ["hostile/flattened"], name="hostile_flatten"),
        helper.make_node(
            "Slice", ["hostile/flattened", "hostile/start", "hostile/end"], ["hostile/part"], name="hostile_slice"
        ),
        helper.make_node("Add", [seed, "hostile/part"], [bias], name="hostile_add"),
    ]
    initializers = [
        constant("hostile/flat", np.array([-1], np.int64)),
        constant("hostile/start", np.array([0], np.int64)),
        constant("hostile/end", np.array([classes], np.int64)),
    ]
    return nodes, initializers


def huge_fill(bias: str, seed: str) -> tuple[list, list]:
    """ConstantOfShape of 3 Gi float32 zeros (12 GB), sliced to the bias."""
    fill = helper.make_node(
        "ConstantOfShape", ["hostile/shape"], ["hostile/big"], name="hostile_fill", value=constant("v", [0.0])
    )
    nodes, initializers = _first_channels("hostile/big", bias, seed)
    return [fill, *nodes], [constant("hostile/shape", np.array([3 << 30], np.int64)), *initializers]


def huge_expand(bias: str, seed: str) -> tuple[list, list]:
    """Expand of the bias to 4 Mi x 1001 (16 GB), sliced back."""
    expand = helper.make_node("Expand", [seed, "hostile/shape"], ["hostile/big"], name="hostile_expand")
    nodes, initializers = _first_channels("hostile/big", bias, "hostile/zero")
    shape = np.array([4 << 20, SMALL.num_classes], np.int64)
    extra = [constant("hostile/shape", shape), constant("hostile/zero", np.zeros(SMALL.num_classes, np.float32))]
    return [expand, *nodes], [*extra, *initializers]


def huge_tile(bias: str, seed: str) -> tuple[list, list]:
    """Tile of the bias 4 Mi times (16 GB), sliced back."""
    tile = helper.make_node("Tile", [seed, "hostile/repeats"], ["hostile/big"], name="hostile_tile")
    nodes, initializers = _first_channels("hostile/big", bias, "hostile/zero")
    extra = [
        constant("hostile/repeats", np.array([4 << 20], np.int64)),
        constant("hostile/zero", np.zeros(SMALL.num_classes, np.float32)),
    ]
    return [tile, *nodes], [*extra, *initializers]


def test_a_constant_loop_feeding_the_classifier_bias_is_refused_by_name(small_onnx, tmp_path):
    """Defect 4: the 1.9 MB file whose bias goes through a Loop of 10^12 steps made `convert` spin forever."""
    hostile = with_computed_bias(small_onnx, tmp_path / "spin.onnx", spinning_loop)
    home, out = tmp_path / "home", tmp_path / "out"
    result, seconds = run_cli("convert", hostile, "--to", "tflite", "-o", out, home=home)
    assert_one_error_line(result, "spin.onnx", "unsupported constant op Loop in node hostile_loop")
    assert folder_contents(out) == [] and cache_leftovers(home) == []
    print(f"Loop refused in {seconds:.1f} s")


@pytest.mark.parametrize(
    ("build", "node"),
    [
        (huge_fill, "ConstantOfShape node hostile_fill"),
        (huge_expand, "Expand node hostile_expand"),
        (huge_tile, "Tile node hostile_tile"),
    ],
    ids=["ConstantOfShape", "Expand", "Tile"],
)
def test_a_constant_of_several_gigabytes_is_refused_before_it_is_allocated(small_onnx, tmp_path, build, node):
    """Defect 4: the declared shape is checked against the bound before any memory is taken."""
    hostile = with_computed_bias(small_onnx, tmp_path / "huge.onnx", build)
    home, out = tmp_path / "home", tmp_path / "out"
    result, seconds = run_cli("convert", hostile, "--to", "onnx", "-o", out, home=home)
    assert_one_error_line(result, "huge.onnx", node, "elements", "more than")
    assert folder_contents(out) == [] and cache_leftovers(home) == []
    print(f"{node} refused in {seconds:.1f} s")


def single_node_file(path: Path, op: str, inputs: dict, opset: int = 17, outputs: int = 1, **attributes) -> Path:
    """An ONNX file whose one node computes `op` on the initializers `inputs` ({name: value}; "" for an omitted
    optional input), outputs y0, y1..."""
    node = helper.make_node(op, list(inputs), [f"y{i}" for i in range(outputs)], name=f"the_{op}", **attributes)
    initializers = [constant(name, value) for name, value in inputs.items() if name]
    graph = helper.make_graph([node], "one_op", [], [onnx.ValueInfoProto(name=f"y{i}") for i in range(outputs)])
    graph.initializer.extend(initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return path


F = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5
I64 = np.array


# (op, inputs, opset, attributes); DequantizeLinear at opset 19, the oldest onnx.reference implements (as 13's)
FOLD_CASES = {
    "Constant-tensor": ("Constant", {}, 17, {"value": constant("v", F)}),
    "Constant-floats": ("Constant", {}, 17, {"value_floats": [1.5, -2.0]}),
    "Constant-int": ("Constant", {}, 17, {"value_int": 7}),
    "Identity": ("Identity", {"x": F}, 17, {}),
    "Cast-to-uint8": ("Cast", {"x": np.abs(F) * 3.3}, 17, {"to": TensorProto.UINT8}),
    "Cast-int32-to-float": ("Cast", {"x": np.arange(-3, 3, dtype=np.int32)}, 17, {"to": TensorProto.FLOAT}),
    "Transpose": ("Transpose", {"x": F}, 17, {"perm": [2, 0, 1]}),
    "Transpose-default": ("Transpose", {"x": F}, 17, {}),
    "Reshape-zero-and-minus-one": ("Reshape", {"x": F, "s": I64([0, -1, 2])}, 17, {}),
    "Flatten": ("Flatten", {"x": F}, 17, {"axis": 2}),
    "Flatten-negative": ("Flatten", {"x": F}, 17, {"axis": -1}),
    "Squeeze-input": ("Squeeze", {"x": F.reshape(2, 1, 12, 1), "a": I64([1, -1])}, 17, {}),
    "Squeeze-attribute": ("Squeeze", {"x": F.reshape(2, 1, 12, 1)}, 11, {"axes": [1]}),
    "Squeeze-all": ("Squeeze", {"x": F.reshape(2, 1, 12, 1)}, 17, {}),
    "Unsqueeze-input": ("Unsqueeze", {"x": F[0, 0], "a": I64([1, 2])}, 17, {}),
    "Unsqueeze-attribute": ("Unsqueeze", {"x": F[0, 0]}, 11, {"axes": [0, -1]}),
    "Concat": ("Concat", {"x": F, "z": F[:, :1] * 2}, 17, {"axis": -2}),
    "Shape": ("Shape", {"x": F}, 17, {}),
    "Shape-start": ("Shape", {"x": F}, 17, {"start": 1}),
    "Gather": ("Gather", {"x": F, "i": I64([[2, -1], [0, 0]])}, 17, {"axis": 1}),
    "Slice": ("Slice", {"x": F, "b": I64([3, 0]), "e": I64([-100, 2]), "a": I64([2, 0]), "t": I64([-2, 1])}, 17, {}),
    "Slice-attributes": ("Slice", {"x": F}, 9, {"starts": [1, 1], "ends": [3, 1000], "axes": [1, 2]}),
    "ConstantOfShape": ("ConstantOfShape", {"s": I64([2, 3])}, 17, {"value": constant("v", I64([5]))}),
    "ConstantOfShape-default": ("ConstantOfShape", {"s": I64([4])}, 17, {}),
    "Expand": ("Expand", {"x": F[:, :1, :1], "s": I64([2, 1, 3, 5])}, 17, {}),
    "Tile": ("Tile", {"x": F, "r": I64([1, 2, 3])}, 17, {}),
    "Add": ("Add", {"x": F, "z": np.float32([1, 2, 3, 4])}, 17, {}),
    "Sub": ("Sub", {"x": F, "z": F[:1]}, 17, {}),
    "Mul": ("Mul", {"x": F, "z": np.float32(0.25)}, 17, {}),
    "Div": ("Div", {"x": F, "z": np.float32([1, -2, 4, 8])}, 17, {}),
    "Div-integers": ("Div", {"x": I64([7, -7, 7, -7, 6]), "z": I64([2, 2, -2, -2, 3])}, 17, {}),
    "Neg": ("Neg", {"x": F}, 17, {}),
    "Sqrt": ("Sqrt", {"x": np.abs(F)}, 17, {}),
    "Reciprocal": ("Reciprocal", {"x": F}, 17, {}),
    "DequantizeLinear-uint8": (
        "DequantizeLinear",
        {"q": np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 9, "s": np.float32(0.02), "z": np.uint8(128)},
        19,
        {},
    ),
    "DequantizeLinear-per-axis": (
        "DequantizeLinear",
        {
            "q": (np.arange(24) - 12).astype(np.int8).reshape(2, 3, 4),
            "s": np.float32([0.5, 0.25]),
            "z": np.int8([0, 3]),
        },
        19,
        {"axis": 0},
    ),
    "DequantizeLinear-int32-bias": (
        "DequantizeLinear",
        {"q": np.int32([-70000, 5, 1 << 20]), "s": np.float32(3e-5)},
        19,
        {},
    ),
}


@pytest.mark.parametrize("case", FOLD_CASES)
def test_each_folded_op_computes_what_onnx_reference_does(tmp_path, case):
    """The reader's own numpy folding gives exactly what the ONNX reference implementation gives."""
    from onnx.reference import ReferenceEvaluator

    from mobilenet_zoo.formats.onnx._reader import OnnxGraph

    op, inputs, opset, attributes = FOLD_CASES[case]
    path = single_node_file(tmp_path / "one.onnx", op, inputs, opset, **attributes)
    expected = ReferenceEvaluator(onnx.load(str(path))).run(None, {})[0]
    got = OnnxGraph.load(path).value("y0")
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_every_folded_op_is_checked_against_onnx_reference():
    from mobilenet_zoo.formats.onnx import _fold

    assert {case[0] for case in FOLD_CASES.values()} == set(_fold.FOLDED_OPS)


def test_a_chain_of_constant_nodes_folds_without_recursion(tmp_path):
    """Folding follows a long constant chain in graph order, not by recursion (5000 Identity nodes)."""
    from mobilenet_zoo.formats.onnx._reader import OnnxGraph

    nodes = [helper.make_node("Identity", [f"t{i}"], [f"t{i + 1}"], name=f"step{i}") for i in range(5000)]
    graph = helper.make_graph(nodes, "chain", [], [onnx.ValueInfoProto(name="t5000")], [constant("t0", F)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "chain.onnx"))
    np.testing.assert_array_equal(OnnxGraph.load(tmp_path / "chain.onnx").value("t5000"), F)


def test_constants_adding_up_past_the_total_bound_are_refused(tmp_path):
    """Many tensors each under the bound: the graph's total is bounded too (uint8, so this stays ~150 MB)."""
    from mobilenet_zoo.errors import ModelFormatError
    from mobilenet_zoo.formats.onnx import _fold
    from mobilenet_zoo.formats.onnx._reader import OnnxGraph

    count = _fold.MAX_FOLDED_TOTAL // _fold.MAX_FOLDED_ELEMENTS + 1
    shape = constant("shape", I64([_fold.MAX_FOLDED_ELEMENTS]))
    fills = [
        helper.make_node(
            "ConstantOfShape", ["shape"], [f"fill{i}"], name=f"fill{i}", value=constant("v", [np.uint8(1)])
        )
        for i in range(count)
    ]
    total = helper.make_node("Concat", [f"fill{i}" for i in range(count)], ["all"], name="all", axis=0)
    graph = helper.make_graph([*fills, total], "many", [], [onnx.ValueInfoProto(name="all")], [shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "many.onnx"))
    with pytest.raises(ModelFormatError, match=r"many\.onnx: its constant subgraphs make more than [\d,]+ elements"):
        OnnxGraph.load(tmp_path / "many.onnx").value("all")
