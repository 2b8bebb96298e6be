"""Our `.pt2` files opened without running anything that is in them: the one way this package opens a `.pt2`.

`torch.export.load` runs what an archive asks it to (torch 2.13, `torch/export/pt2_archive/_package.py` and
`torch/_export/serde/serialize.py`): it unpickles, with `weights_only=False`, every weight and tensor constant
whose payload config says `use_pickle`, the legacy `data/weights/MODEL.pt` state dict, custom and opaque objects,
and sample inputs that `weights_only=True` refuses; it loads AOTInductor shared libraries; it evaluates the
program's shape expressions with `sympy.sympify` (Python's `eval`), executes its `guards_code` on the first call
and calls any `torch.*` attribute a node names as its target. So `checked_archive` reads the file once, bounded
(`ARCHIVE_LIMIT`, `MEMBER_LIMIT`, `JSON_LIMIT`), and refuses in one line naming the file and the entry, before
anything in it is deserialized, whatever is not: the archive's version files; the program, `models/model.json`
(operators of `ALLOWED_OPS`, shape expressions built of sympy's `Symbol`, `Integer`... only, no guards code, no
field the programs of our writers do not have, every other string a plain name or inert text); raw weights and
tensor constants (`use_pickle` false, a CPU dtype, sizes that fit their entry); sample inputs whose pickle names
only tensor-rebuilding functions (`SAFE_GLOBALS`, read by `pickletools` without running it); extra files.

`raw_weights` reads the weights from those bytes with numpy; `load_program` hands `torch.export.load` an
in-memory copy of the checked entries with empty sample inputs, so what torch loads is what was checked and
nothing of it is unpickled. `torch.export.load(path).module()` still opens our files as before (see `save_program`,
which checks every program it writes).
"""

from __future__ import annotations

import io
import json
import logging
import pickletools
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobilenet_zoo.constants import METADATA_FILE
from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError

PROGRAM_METADATA = METADATA_FILE  # our extra file inside the archive
ARCHIVE_LIMIT = 256 * 2**20  # bytes of the file, and of its entries inflated (the 1.0_224 float program: 19 MB)
MEMBER_LIMIT = 4096  # entries: ours have one per weight and tensor, under 200
JSON_LIMIT = 8 * 2**20  # bytes of one JSON entry (our programs' models/model.json: about 0.35 MB at every size)
METADATA_LIMIT = 2**20
DEPTH_LIMIT = 64  # nesting of the program's JSON (ours: 9)
EXPRESSION_LIMIT = 1000  # characters of one shape expression

MODEL = "model"  # the program's name in the archive (`torch.export.save` writes one, "model")
PROGRAM = f"models/{MODEL}.json"
WEIGHTS_CONFIG = f"data/weights/{MODEL}_weights_config.json"
CONSTANTS_CONFIG = f"data/constants/{MODEL}_constants_config.json"
SAMPLE_INPUTS = f"data/sample_inputs/{MODEL}.pt"
VERSION_FILES = (".data/version", ".data/serialization_id", "archive_format", "archive_version", "byteorder")
WEIGHT_FILE = re.compile(r"data/weights/weight_\d+")
CONSTANT_FILE = re.compile(r"data/constants/tensor_\d+")
EXTRA_FILE = re.compile(r"extra/[A-Za-z0-9_.-]+")
UNSAFE_ENTRIES = {  # entry name prefix -> what torch would do with it
    "data/aotinductor/": "AOTInductor compiled code, a shared library torch.export.load would load",
    f"data/weights/{MODEL}.pt": "a pickled state dict (the legacy format), which torch.export.load would unpickle",
    f"data/constants/{MODEL}.pt": "pickled constants (the legacy format), which torch.export.load would unpickle",
    "data/constants/custom_obj_": "a pickled custom object, which torch.export.load would unpickle",
    "data/constants/opaque_obj_": "a pickled opaque object, which torch.export.load would unpickle",
}

# torch's serialized ScalarType codes (torch/_export/serde/schema.py) read as numpy dtypes
DTYPES = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float16),
    7: np.dtype(np.float32),
    8: np.dtype(np.float64),
    12: np.dtype(np.bool_),
}
STRIDED = 7  # schema.Layout.Strided

# aten operators of the float, uint8 and int8 MobileNet V1 programs (every backbone option, either layout), and the
# decompositions other torch versions may export them as; a node calling anything else is refused by name
ALLOWED_OPS = frozenset(
    {
        "_assert_tensor_metadata", "_native_batch_norm_legit_no_training", "_softmax", "_to_copy", "add", "add_",
        "addcmul", "addmm", "amax", "avg_pool2d", "batch_norm", "clamp", "clamp_", "clamp_max", "clamp_min",
        "constant_pad_nd", "contiguous", "conv2d", "convolution", "div", "flatten", "floor", "floor_", "hardtanh",
        "index", "linear", "mean", "mm", "mul", "mul_", "new_zeros", "pad", "permute", "reciprocal", "relu", "relu6",
        "reshape", "round", "rsub", "scatter_add", "scatter_add_", "softmax", "squeeze", "sub", "sym_size", "t", "to",
        "unsqueeze", "view", "zeros_like",
    }
)  # fmt: skip
OPERATOR = re.compile(r"torch\.ops\.aten\.([a-z0-9_]+)\.([A-Za-z0-9_]+)")
GETITEM = "_operator.getitem"

# The fields of the program's JSON (torch/_export/serde/schema.py) that our programs use; any other is refused
FIELDS = frozenset(
    {
        "arg", "as_bool", "as_bools", "as_device", "as_expr", "as_float", "as_floats", "as_int", "as_ints",
        "as_layout", "as_memory_format", "as_name", "as_none", "as_scalar_type", "as_string", "as_sym_int",
        "as_sym_ints", "as_tensor", "as_tensors", "buffer", "buffer_name", "custom_obj_values", "device", "dtype",
        "expr_str", "forward_arg_names", "fqn", "graph", "graph_module", "guards_code", "hint", "in_spec", "index",
        "input_specs", "inputs", "is_hop_single_tensor_return", "is_single_tensor_return", "kind", "layout",
        "major", "max_val", "metadata", "min_val", "minor", "module_call_graph", "name", "nn_module_stack", "nodes",
        "opset_version", "out_spec", "output_specs", "outputs", "parameter", "parameter_name", "persistent",
        "range_constraints", "requires_grad", "schema_version", "signature", "sizes", "stack_trace",
        "storage_offset", "strides", "sym_bool_values", "sym_float_values", "sym_int_values", "target",
        "tensor_values", "torch_fn", "torch_version", "treespec_namedtuple_fields", "type", "user_input",
        "user_output", "verifiers",
    }
)  # fmt: skip
NAME_MAPS = frozenset(  # fields whose keys are names (of values, symbols, opsets), not fields
    {"tensor_values", "sym_int_values", "sym_float_values", "sym_bool_values", "range_constraints", "opset_version"}
)
EMPTY_FIELDS = ("custom_obj_values", "treespec_namedtuple_fields", "guards_code")  # ours hold nothing there
TEXT_FIELDS = frozenset({"stack_trace", "nn_module_stack", "torch_fn", "torch_version"})  # kept as text, never run
NAME = re.compile(r"(?:[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)?")
DUNDER = re.compile(r"(?:^|\.)__\w*__(?:\.|$)")

# A shape expression is sympy's srepr of an integer expression, e.g. "Symbol('s34', positive=True, integer=True)"
EXPRESSION_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_]\w*)|'[A-Za-z_]\w*'|\d+|[()=,+\-*/])")
EXPRESSION_NAMES = frozenset(
    {"Symbol", "Integer", "Add", "Mul", "Max", "Min", "FloorDiv", "Mod", "positive", "integer", "True", "False"}
)
TREESPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict"})

# What the pickle of sample inputs (torch.save of tensors) may name: any unpickler can call nothing else
SAFE_GLOBALS = frozenset(
    {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict")}
    | {
        ("torch", f"{kind}Storage")
        for kind in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
    }
)
OBJECT_OPCODES = frozenset({"STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"})  # name callables otherwise


@dataclass(frozen=True)
class Tensor:
    """A weight or constant as the archive stores it: raw bytes of `entry` viewed with sizes and strides."""

    name: str
    entry: str
    dtype: np.dtype
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int


@dataclass(frozen=True)
class CheckedArchive:
    """A `.pt2` archive that holds nothing torch would unpickle or run: its entries, weights and metadata."""

    path: Path
    root: str
    entries: dict[str, bytes]  # entry name (without the root folder) -> bytes, in archive order
    weights: tuple[Tensor, ...]
    metadata: dict[str, str]


def checked_archive(path: Path) -> CheckedArchive:
    """Read and check the whole `.pt2` at `path`; a file torch would unpickle or run anything of is refused."""
    path = Path(path)
    root, entries = _read_entries(path)
    _check_program(path, _json(path, PROGRAM, entries[PROGRAM]))
    weights = _tensors(path, entries, WEIGHTS_CONFIG, WEIGHT_FILE, "weight")
    _tensors(path, entries, CONSTANTS_CONFIG, CONSTANT_FILE, "constant")
    if SAMPLE_INPUTS in entries:
        _check_sample_inputs(path, entries[SAMPLE_INPUTS])
    if entries.get("byteorder", b"little") != b"little":
        raise _malformed(path, "big-endian tensors")
    metadata = _metadata(path, entries.get(f"extra/{PROGRAM_METADATA}"))
    return CheckedArchive(path, root, entries, weights, metadata)


def program_metadata(path: Path) -> dict[str, str]:
    """Our metadata (`extra/mobilenet_zoo.json`) of a `.pt2`, read alone (bounded); {} when it has none."""
    path = Path(path)
    with _open_zip(path) as archive:
        info = next((i for i in archive.infolist() if i.filename.endswith(f"/extra/{PROGRAM_METADATA}")), None)
        if info is None:
            return {}
        return _metadata(path, _read_entry(path, archive, info, METADATA_LIMIT))


def raw_weights(archive: CheckedArchive) -> dict[str, np.ndarray]:
    """The program's state dict (weights and buffers) as numpy arrays, read from the raw bytes."""
    return {tensor.name: _array(archive.entries[tensor.entry], tensor) for tensor in archive.weights}


def load_program(path: Path):
    """`torch.export.load` of the checked archive: an in-memory copy of what was checked, sample inputs empty."""
    torch = require("torch")
    checked = checked_archive(path)
    copy = io.BytesIO()
    with zipfile.ZipFile(copy, "w", zipfile.ZIP_STORED) as archive:
        for name, data in checked.entries.items():
            archive.writestr(f"{checked.root}/{name}", b"" if name == SAMPLE_INPUTS else data)
    copy.seek(0)
    with _torch_export_log() as causes:
        try:
            return torch.export.load(copy)
        except Exception as exc:  # torch raises RuntimeError, KeyError, SerializeError... on programs it cannot load
            cause = causes[0] if causes else exc
            raise ModelFormatError(f"{path}: not a loadable torch.export program ({cause})") from exc


# ---------------------------------------------------------------------------------------------- the archive


@contextmanager
def _open_zip(path: Path) -> Iterator[zipfile.ZipFile]:
    """The archive, its size and entry count bounded."""
    try:
        if path.stat().st_size > ARCHIVE_LIMIT:
            raise _refused(path, f"{path.stat().st_size} bytes, larger than any MobileNet V1 program")
        with zipfile.ZipFile(path) as archive:
            if len(archive.infolist()) > MEMBER_LIMIT:
                raise _refused(path, f"{len(archive.infolist())} entries, more than any MobileNet V1 program has")
            yield archive
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _malformed(path, exc) from exc


def _read_entries(path: Path) -> tuple[str, dict[str, bytes]]:
    """The root folder and every entry's bytes, each entry name allowed (checked before anything is read)."""
    with _open_zip(path) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if not names or len(set(names)) != len(names):
            raise _malformed(path, "no entries" if not names else "duplicate entries")
        root = names[0].split("/", 1)[0]
        if root in ("", ".", "..") or any(not name.startswith(f"{root}/") for name in names):
            raise _malformed(path, "its entries are not in one folder")
        inflated = sum(info.file_size for info in infos)
        if inflated > ARCHIVE_LIMIT:
            raise _refused(path, f"its entries inflate to {inflated} bytes, more than any MobileNet V1 program")
        for name in names:
            _check_entry_name(path, name.removeprefix(f"{root}/"))
        for required in (PROGRAM, WEIGHTS_CONFIG, CONSTANTS_CONFIG):
            if f"{root}/{required}" not in names:
                raise _malformed(path, f"no {required}")
        entries = {}
        for info in infos:
            name = info.filename.removeprefix(f"{root}/")
            limit = JSON_LIMIT if name.endswith(".json") else ARCHIVE_LIMIT
            entries[name] = _read_entry(path, archive, info, limit)
        return root, entries


def _check_entry_name(path: Path, name: str) -> None:
    for prefix, what in UNSAFE_ENTRIES.items():
        if name.startswith(prefix):
            raise _refused(path, f"entry '{name}' is {what}")
    known = name in (*VERSION_FILES, PROGRAM, WEIGHTS_CONFIG, CONSTANTS_CONFIG, SAMPLE_INPUTS)
    if not known and not any(pattern.fullmatch(name) for pattern in (WEIGHT_FILE, CONSTANT_FILE, EXTRA_FILE)):
        raise _refused(path, f"unexpected entry '{name}' (a .pt2 is read only with what torch.export.save writes)")


def _read_entry(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """One entry's bytes, refused from its declared size past `limit` and cut at it whatever it inflates to."""
    if info.file_size > limit:
        raise _refused(path, f"entry '{info.filename}' would inflate to {info.file_size} bytes, larger than {limit}")
    with archive.open(info) as entry:
        data = entry.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise _malformed(path, f"entry '{info.filename}' is not the size it declares")
    return data


def _json(path: Path, name: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _malformed(path, f"{name} is not JSON ({exc})") from None


def _metadata(path: Path, data: bytes | None) -> dict[str, str]:
    if data is None:
        return {}
    metadata = _json(path, PROGRAM_METADATA, data)
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _malformed(path, f"{PROGRAM_METADATA} is not an object of strings")
    return metadata


def _refused(path: Path, why: str) -> ModelFormatError:
    return ModelFormatError(f"{path}: refused before loading: {why}")


def _malformed(path: Path, why: object) -> ModelFormatError:
    return ModelFormatError(f"{path}: not a readable .pt2 archive ({why})")


# ---------------------------------------------------------------------------------------------- tensors


def _tensors(path: Path, entries: dict[str, bytes], config_name: str, files: re.Pattern, kind: str) -> tuple:
    """The tensors a payload config lists, each a raw entry (beside the config) whose bytes hold its sizes and
    strides."""
    config = _json(path, config_name, entries[config_name])
    payloads = config.get("config") if isinstance(config, dict) else None
    if not isinstance(payloads, dict):
        raise _malformed(path, f"{config_name} has no config")
    directory = config_name.rsplit("/", 1)[0] + "/"
    return tuple(_tensor(path, entries, name, payload, (directory, files), kind) for name, payload in payloads.items())


def _tensor(
    path: Path, entries: dict[str, bytes], name: str, payload: Any, where: tuple[str, re.Pattern], kind: str
) -> Tensor:
    directory, files = where
    if not isinstance(payload, dict):
        raise _malformed(path, f"{kind} {name!r} has no payload")
    if payload.get("use_pickle") is not False:
        pickled = f"{kind} {name!r} is stored as a pickle (use_pickle)"
        raise _refused(path, f"{pickled}, which torch.export.load would unpickle, running any code in it")
    entry = f"{directory}{payload.get('path_name')}"
    meta = payload.get("tensor_meta")
    if not NAME.fullmatch(name) or not files.fullmatch(entry) or entry not in entries or not isinstance(meta, dict):
        raise _malformed(path, f"{kind} {name!r}: no raw entry for it")
    dtype = DTYPES.get(meta.get("dtype"))
    if dtype is None or meta.get("layout") != STRIDED or (meta.get("device") or {}).get("type") != "cpu":
        raise _malformed(path, f"{kind} {name!r} is not a dense CPU tensor of a plain dtype")
    sizes, strides = _ints(path, meta.get("sizes"), name), _ints(path, meta.get("strides"), name)
    offset = _ints(path, [meta.get("storage_offset")], name)[0]
    if len(sizes) != len(strides):
        raise _malformed(path, f"{kind} {name!r}: sizes and strides differ in length")
    tensor = Tensor(name, entry, dtype, sizes, strides, offset)
    stored = len(entries[entry])
    if stored % dtype.itemsize or _extent(tensor) * dtype.itemsize > stored:
        raise _malformed(path, f"{kind} {name!r} needs more bytes than its entry holds")
    return tensor


def _ints(path: Path, values: Any, name: str) -> tuple[int, ...]:
    """Non-negative integers serialized as [{"as_int": n}, ...]."""
    if not isinstance(values, list):
        raise _malformed(path, f"{name!r}: no sizes")
    ints = tuple(v.get("as_int") if isinstance(v, dict) else None for v in values)
    if not all(type(i) is int and i >= 0 for i in ints):
        raise _malformed(path, f"{name!r}: sizes are not plain non-negative integers")
    return ints


def _extent(tensor: Tensor) -> int:
    """Elements of the entry the tensor reaches (0 for an empty tensor)."""
    if 0 in tensor.sizes:
        return 0
    return tensor.offset + sum((size - 1) * stride for size, stride in zip(tensor.sizes, tensor.strides)) + 1


def _array(data: bytes, tensor: Tensor) -> np.ndarray:
    if _extent(tensor) == 0:
        return np.zeros(tensor.sizes, tensor.dtype)
    flat = np.frombuffer(data, tensor.dtype, count=len(data) // tensor.dtype.itemsize)
    strides = tuple(stride * tensor.dtype.itemsize for stride in tensor.strides)
    return np.lib.stride_tricks.as_strided(flat[tensor.offset :], tensor.sizes, strides).copy()


# ---------------------------------------------------------------------------------------------- the program


def _check_program(path: Path, program: Any) -> None:
    """Every field of the program's JSON is one our programs use, every string of it inert (see the module)."""
    if not isinstance(program, dict):
        raise _malformed(path, f"{PROGRAM} is not an object")
    if program.get("guards_code"):
        raise _refused(path, "its program carries guards code, which torch.export.load would execute as Python")
    stack: list[tuple[Any, str, int]] = [(program, "", 0)]
    while stack:
        value, field, depth = stack.pop()
        if depth > DEPTH_LIMIT:
            raise _malformed(path, f"{PROGRAM} is nested deeper than {DEPTH_LIMIT}")
        if isinstance(value, dict):
            if field in EMPTY_FIELDS and value:
                raise _refused(path, f"its program has {field}, which no MobileNet V1 program has")
            for key, item in value.items():
                _check_key(path, key, field)
                stack.append((item, "" if field in NAME_MAPS else key, depth + 1))
        elif isinstance(value, list):
            if field in EMPTY_FIELDS and value:
                raise _refused(path, f"its program has {field}, which no MobileNet V1 program has")
            stack.extend((item, field, depth + 1) for item in value)
        elif isinstance(value, str):
            _check_string(path, field, value)


def _check_key(path: Path, key: str, field: str) -> None:
    if field in NAME_MAPS:
        if not _plain_name(key):
            raise _refused(path, f"its program names a value {key!r}, not a plain name")
    elif key not in FIELDS:
        raise _refused(path, f"its program has a field {key!r} that no MobileNet V1 program has")


def _check_string(path: Path, field: str, value: str) -> None:
    if field == "target":
        match = OPERATOR.fullmatch(value)
        if value != GETITEM and not (match and match.group(1) in ALLOWED_OPS):
            raise _refused(path, f"its program calls {value[:80]!r}, not an operator of a MobileNet V1 program")
    elif field == "expr_str":
        _check_expression(path, value)
    elif field in ("in_spec", "out_spec"):
        _check_treespec(path, value)
    elif field in TEXT_FIELDS:
        if not all(line.isprintable() for line in value.split("\n")):
            raise _refused(path, f"its program's {field} holds control characters")
    elif not _plain_name(value):
        raise _refused(path, f"its program's {field} {value[:80]!r} is not a plain name")


def _plain_name(value: str) -> bool:
    return bool(NAME.fullmatch(value)) and not DUNDER.search(value)


def _check_expression(path: Path, expression: str) -> None:
    """A shape expression torch hands to `sympy.sympify` (which evaluates it): sympy integers and symbols only."""
    position, names = 0, []
    while position < len(expression) and len(expression) <= EXPRESSION_LIMIT:
        token = EXPRESSION_TOKEN.match(expression, position)
        if token is None or token.end() == position:
            break
        names.append(token.group("name"))
        position = token.end()
    unknown = {name for name in names if name is not None} - EXPRESSION_NAMES
    if position != len(expression) or len(expression) > EXPRESSION_LIMIT or unknown:
        shape = f"its program's shape expression {expression[:80]!r} is not plain sympy"
        raise _refused(path, f"{shape}: torch.export.load would evaluate it as Python")


def _check_treespec(path: Path, spec: str) -> None:
    """The program's input or output structure: tuples, lists and dicts keyed by plain names."""
    document = _json(path, PROGRAM, spec.encode())
    nodes = [document[1]] if isinstance(document, list) and len(document) == 2 else [None]
    while nodes:
        node = nodes.pop()
        if not isinstance(node, dict) or node.get("type") not in TREESPEC_TYPES:
            raise _refused(path, f"its program's inputs or outputs are not tuples, lists or dicts ({spec[:80]!r})")
        context = _json(path, PROGRAM, node["context"].encode()) if isinstance(node.get("context"), str) else None
        keys = context if isinstance(context, list) else []
        if not all(isinstance(key, str) and _plain_name(key) for key in keys) or len(nodes) > MEMBER_LIMIT:
            raise _refused(path, f"its program's outputs are keyed by other than plain names ({spec[:80]!r})")
        nodes.extend(node.get("children_spec") or [])


# ---------------------------------------------------------------------------------------------- sample inputs


def _check_sample_inputs(path: Path, data: bytes) -> None:
    """Sample inputs must be a `torch.save` archive whose pickle names only `SAFE_GLOBALS` (never unpickled here:
    torch.export.load would retry a pickle `weights_only=True` refuses with `weights_only=False`)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            infos = [info for info in inner.infolist() if info.filename.endswith(".pkl")]
            if len(inner.infolist()) > MEMBER_LIMIT or len(infos) != 1:
                raise _malformed(path, "sample inputs are not a torch.save archive")
            pickled = _read_entry(path, inner, infos[0], METADATA_LIMIT)
    except zipfile.BadZipFile:
        _check_pickle(path, data)  # a bare pickle: say what it would run
        raise _malformed(path, "sample inputs are not a torch.save archive") from None
    _check_pickle(path, pickled)


def _check_pickle(path: Path, data: bytes) -> None:
    try:
        for opcode, argument, _ in pickletools.genops(data):
            named = tuple(str(argument).split(" ", 1)) if opcode.name == "GLOBAL" else None
            if opcode.name in OBJECT_OPCODES or (named is not None and named not in SAFE_GLOBALS):
                what = ".".join(named) if named else opcode.name
                raise _refused(
                    path, f"its sample inputs are a pickle calling {what}, which torch.export.load would run"
                )
    except ValueError as exc:
        raise _malformed(path, f"sample inputs are not a pickle ({exc})") from None


@contextmanager
def _torch_export_log() -> Iterator[list[BaseException]]:
    """Inside the block, the exceptions `torch.export.load` logs (with tracebacks, on stderr) are collected instead."""
    logger = logging.getLogger("torch.export")
    causes: list[BaseException] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info and record.exc_info[1] is not None:
                causes.append(record.exc_info[1])

    handler, propagate = Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield causes
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
