"""Fixture tarballs laid out exactly as the official MobileNet V1 release, with random weights.

    python -m mobilenet_zoo.testing.tarball --alpha 0.25 --resolution 128 -o DIR
    python -m mobilenet_zoo.testing.tarball --alpha 0.5 --resolution 160 --quantized --tflite REAL.tflite -o DIR

A float tarball holds a real slim checkpoint, eval graph, frozen graph, info file and a float `.tflite` from
the TensorFlow converter. A `_quant` tarball carries the same float graph files under `_quant` names and
copies its `.tflite` from a real uint8 model, since only that file is quantized in a way tools read.
The bytes depend only on the config, the seed and the TensorFlow version.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import tarfile
import tempfile
from pathlib import Path

from mobilenet_zoo.fsutil import atomic_file
from mobilenet_zoo.model.arch import INPUT_NODE, OUTPUT_NODE, ModelConfig
from mobilenet_zoo.model.canonical import random_model

DEFAULT_SEED = 0
_TIMESTAMP = 1533168000  # 2018-08-02, the release date


def member_names(name: str) -> list[str]:
    """The official members of tarball NAME, in the official order (after the leading `./`)."""
    return [
        f"{name}.ckpt.data-00000-of-00001",
        f"{name}.ckpt.index",
        f"{name}.ckpt.meta",
        f"{name}_eval.pbtxt",
        f"{name}_frozen.pb",
        f"{name}_info.txt",
        f"{name}.tflite",
    ]


def info_text(name: str) -> str:
    """The content of `NAME_info.txt`."""
    return f"Model: {name}\nInput: {INPUT_NODE}\nOutput: {OUTPUT_NODE}\n"


def write_official_tarball(
    config: ModelConfig, out_dir: Path, *, seed: int = DEFAULT_SEED, tflite_path: Path | None = None
) -> Path:
    """Write `out_dir/mobilenet_v1_{alpha}_{res}[_quant].tgz` with `random_model(config, seed)`; returns its path.

    Quantized configs need `tflite_path`, a real uint8 `.tflite` of the same variant.
    """
    if config.quantized and tflite_path is None:
        raise ValueError(f"{config.name}: a quantized tarball needs tflite_path (a real uint8 .tflite of the variant)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    members = _official_members(config, seed, tflite_path)
    tarball = out_dir / f"{config.name}.tgz"
    _write_tarball(members, tarball)
    return tarball


def _official_members(config: ModelConfig, seed: int, tflite_path: Path | None) -> dict[str, bytes]:
    """Every member's bytes by file name, from one slim graph with the random weights loaded."""
    from mobilenet_zoo.formats.tensorflow import slim_session

    model = random_model(dataclasses.replace(config, quantized=False), seed)
    name = config.name
    with tempfile.TemporaryDirectory() as scratch, slim_session(model, resource_variables=False) as slim:
        prefix = Path(scratch) / f"{name}.ckpt"
        slim.save_checkpoint(prefix)
        checkpoint = {path.name: path.read_bytes() for path in Path(scratch).iterdir()}
        graphs = {
            f"{name}_eval.pbtxt": str(slim.eval_graph_def()).encode(),
            f"{name}_frozen.pb": slim.frozen_graph_def().SerializeToString(deterministic=True),
            f"{name}_info.txt": info_text(name).encode(),
            f"{name}.tflite": Path(tflite_path).read_bytes() if tflite_path else slim.tflite(),
        }
    members = {**checkpoint, **graphs}
    return {member: members[member] for member in member_names(name)}


def _write_tarball(members: dict[str, bytes], tarball: Path) -> None:
    """A gzip'd tar with `./` first, then flat `./MEMBER` files; fixed times and owners; written atomically."""
    with (
        atomic_file(tarball) as temporary,
        temporary.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=_TIMESTAMP) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.GNU_FORMAT) as archive,
    ):
        temporary.chmod(0o644)
        archive.addfile(_entry("./", tarfile.DIRTYPE, 0o755))
        for name, data in members.items():
            archive.addfile(_entry(f"./{name}", tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))


def _entry(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, _TIMESTAMP
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mobilenet_zoo.testing.tarball", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--alpha", type=float, required=True, help="width multiplier: 1.0, 0.75, 0.5 or 0.25")
    parser.add_argument("--resolution", type=int, required=True, help="input size: 224, 192, 160 or 128")
    parser.add_argument("--quantized", action="store_true", help="a _quant tarball (needs --tflite)")
    parser.add_argument("--tflite", type=Path, help="real uint8 .tflite to ship in a _quant tarball")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the random weights")
    parser.add_argument("-o", "--out-dir", type=Path, default=Path("."), help="folder to write the tarball into")
    args = parser.parse_args(argv)
    config = ModelConfig(args.alpha, args.resolution, quantized=args.quantized)
    try:
        print(write_official_tarball(config, args.out_dir, seed=args.seed, tflite_path=args.tflite))
    except ValueError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
