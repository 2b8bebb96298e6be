"""The zoo's registry: `registry.yaml` loaded, validated and queried. No framework imports here."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from mobilenet_zoo.constants import MIRROR_ENV, REGISTRY_ENV
from mobilenet_zoo.errors import RegistryError, UnknownVariantError
from mobilenet_zoo.model.arch import NUM_CLASSES, ModelConfig, count_macs, count_parameters

CHECKSUM_ALGORITHMS = ("sha256", "sha384", "sha512")
OFFICIAL_VARIANT_COUNT = 32
OFFICIAL_BASE_URL = "http://download.tensorflow.org/models/mobilenet_v1_2018_08_02/"  # registry.yaml's base_url
# A registry name is a cache folder's name: a plain file name, nothing that could lead elsewhere.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NAME_RULE = "letters, digits, '.', '_' or '-', starting with a letter or digit"
FILE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+%=-]{0,254}")  # the last part of a download URL
MEMBER_SUFFIXES = (
    ".ckpt.data-00000-of-00001",
    ".ckpt.index",
    ".ckpt.meta",
    "_eval.pbtxt",
    "_frozen.pb",
    "_info.txt",
    ".tflite",
)


def builtin_registry_path() -> Path:
    """registry.yaml inside the installed package, else at the top of a source checkout."""
    packaged = Path(__file__).parents[1] / "registry.yaml"
    return packaged if packaged.exists() else Path(__file__).resolve().parents[2] / "registry.yaml"


@dataclass(frozen=True)
class Published:
    """Figures as the TF-slim table publishes them."""

    macs_millions: float
    params_millions: float
    top1: float
    top5: float


@dataclass(frozen=True)
class Variant:
    """One downloadable model of the zoo."""

    name: str
    alpha: float
    resolution: int
    quantized: bool
    url: str
    published: Published | None = None
    size: int | None = None
    checksum: tuple[str, str] | None = None  # (algorithm, hex digest)
    num_classes: int = NUM_CLASSES
    labels: Path | None = None  # a labels file, one class name per line (private entries)
    path: Path | None = None  # a local model file, folder or tarball instead of a download (private entries)
    private: bool = False  # a team's own model (path, num_classes or labels given): any model file, any layout

    @property
    def config(self) -> ModelConfig:
        return ModelConfig(self.alpha, self.resolution, self.quantized, num_classes=self.num_classes)

    @property
    def filename(self) -> str:
        """The model file's own name: the local path's, else the last part of the URL's path."""
        return self.path.name if self.path else url_file_name(self.url)

    @property
    def official(self) -> bool:
        """True for an official release: not a team's model, and its URL is the official one of its name."""
        return not self.private and self.path is None and self.url == f"{OFFICIAL_BASE_URL}{self.name}.tgz"

    @property
    def origin(self) -> str | None:
        """Where the model comes from: None for the official release (or a mirror of it), else the team's URL
        or path."""
        if self.official:
            return None
        return str(self.path) if self.path is not None else self.url

    @property
    def cache_key(self) -> str:
        """What the cache keeps it under: the name for an official release, else the name and its origin."""
        from mobilenet_zoo.zoo.cache import origin_key  # not at import: `list` needs no cache (nor filelock)

        return origin_key(self.name, self.origin)

    @property
    def members(self) -> tuple[str, ...]:
        """Files the official tarball holds (flat, under ./); none required of a private model's tarball."""
        if self.private:
            return ()
        return tuple(self.name + suffix for suffix in MEMBER_SUFFIXES)

    @cached_property
    def computed_macs_millions(self) -> float:
        return round(count_macs(self.config) / 1e6, 1)

    @cached_property
    def computed_params_millions(self) -> float:
        return round(count_parameters(self.config) / 1e6, 3)

    def url_for(self, mirror: str | None = None) -> str:
        """Download URL, with the base replaced by `mirror` (or $MOBILENET_ZOO_MIRROR) when given."""
        mirror = mirror or os.environ.get(MIRROR_ENV)
        return mirror.rstrip("/") + "/" + self.filename if mirror else self.url

    def as_dict(self) -> dict[str, Any]:
        """Everything known about the variant, JSON-ready."""
        data: dict[str, Any] = {
            "name": self.name,
            "alpha": self.alpha,
            "resolution": self.resolution,
            "quantized": self.quantized,
            "url": None if self.path else self.url,
            **(
                {
                    "path": str(self.path),
                    "num_classes": self.num_classes,
                    "labels": str(self.labels) if self.labels else None,
                }
                if self.private
                else {}
            ),
            "size": self.size,
            "checksum": f"{self.checksum[0]}:{self.checksum[1]}" if self.checksum else None,
            "computed": {
                "macs_millions": self.computed_macs_millions,
                "params_millions": self.computed_params_millions,
            },
        }
        data["published"] = vars(self.published).copy() if self.published else None
        return data


def url_file_name(url: str) -> str:
    """The last part of a URL's path (no query, no fragment)."""
    return urlsplit(url).path.rsplit("/", 1)[-1]


def shown(value: Any, limit: int = 60) -> str:
    """A short repr of a registry value for a message (a value may be huge)."""
    if isinstance(value, (list, dict, tuple, set)):
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


_ALIAS = re.compile(r"^(?:mobilenet[_-]?v1[_-]?)?(\d*\.?\d+)[_-](\d+)([_-]quant)?$")


@dataclass
class Registry:
    """All variants by name, with forgiving lookup."""

    variants: dict[str, Variant] = field(default_factory=dict)
    sources: tuple[Path, ...] = ()

    def __iter__(self):
        return iter(self.variants.values())

    def __len__(self) -> int:
        return len(self.variants)

    def get(self, name: str) -> Variant:
        """Resolve `mobilenet_v1_1.0_224`, `1.0_224`, `0.5-160-quant`, `MobileNet_v1_0.50_160`..."""
        key = name.strip()
        if key in self.variants:
            return self.variants[key]
        match = _ALIAS.match(key.lower())
        if match:
            alpha, resolution, quant = float(match[1]), int(match[2]), bool(match[3])
            for variant in self.variants.values():
                if (variant.alpha, variant.resolution, variant.quantized) == (alpha, resolution, quant):
                    return variant
        short = {name.lower().removeprefix("mobilenet_v1_"): name for name in self.variants}  # "1.0_224" too
        close = difflib.get_close_matches(key.lower(), [*self.variants, *short], n=1, cutoff=0.5)
        hint = f"; did you mean {short.get(close[0], close[0])}?" if close else "; see `mobilenet-zoo list`"
        raise UnknownVariantError(f"unknown variant {name!r}{hint}")

    def names(self) -> list[str]:
        return list(self.variants)


def _parse_variant(entry: Any, base_url: str, where: str, folder: Path | None = None) -> Variant:
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: each variant must be a mapping, got {type(entry).__name__}")
    known = {
        "name",
        "alpha",
        "resolution",
        "quantized",
        "url",
        "published",
        "size",
        *CHECKSUM_ALGORITHMS,
        *PRIVATE_FIELDS,
    }
    unknown = set(entry) - known
    if unknown:
        raise RegistryError(f"{where}: unknown field {shown(sorted(map(str, unknown))[0])}")
    for key in ("name", "alpha", "resolution"):
        if key not in entry:
            raise RegistryError(f"{where}: missing field {key!r}")
    name = entry["name"]
    if not isinstance(name, str) or not name:
        raise RegistryError(f"{where}: name must be a non-empty string, got {shown(name)}")
    if not NAME_PATTERN.fullmatch(name):
        raise RegistryError(f"{where}: name {shown(name)} is not a plain name ({NAME_RULE})")
    where = f"{where} ({name})"
    alpha, resolution = entry["alpha"], entry["resolution"]
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha <= 4:
        raise RegistryError(f"{where}: alpha must be a number in (0, 4], got {shown(alpha)}")
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 32:
        raise RegistryError(f"{where}: resolution must be an integer >= 32, got {shown(resolution)}")
    quantized = entry.get("quantized", False)
    if not isinstance(quantized, bool):
        raise RegistryError(f"{where}: quantized must be true or false")
    url = entry.get("url", f"{name}.tgz")
    if not isinstance(url, str):
        raise RegistryError(f"{where}: url must be a string")
    if "://" not in url:
        url = base_url.rstrip("/") + "/" + url
    if "path" not in entry and not FILE_NAME_PATTERN.fullmatch(url_file_name(url)):
        raise RegistryError(
            f"{where}: url {shown(url)} must end in a file name (letters, digits, '.', '_', '-', '+', '%' or '=')"
        )
    published = None
    if "published" in entry:
        fields = entry["published"]
        names = ("macs_millions", "params_millions", "top1", "top5")
        if not isinstance(fields, dict) or set(fields) != set(names):
            raise RegistryError(f"{where}: published needs exactly {', '.join(names)}")
        if not all(isinstance(fields[k], (int, float)) and not isinstance(fields[k], bool) for k in names):
            raise RegistryError(f"{where}: published figures must be numbers")
        published = Published(**{k: fields[k] for k in names})
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise RegistryError(f"{where}: size must be a positive integer")
    checksum = None
    for algorithm in CHECKSUM_ALGORITHMS:
        if algorithm in entry:
            if checksum:
                raise RegistryError(f"{where}: give one checksum, not several")
            length = {"sha256": 64, "sha384": 96, "sha512": 128}[algorithm]
            digest = entry[algorithm].lower() if isinstance(entry[algorithm], str) else ""
            if not re.fullmatch(f"[0-9a-f]{{{length}}}", digest):
                raise RegistryError(f"{where}: {algorithm} must be {length} hex digits")
            checksum = (algorithm, digest)
    variant = Variant(name, float(alpha), resolution, quantized, url, published, size, checksum)
    return _private_fields(variant, entry, where, folder) if set(entry) & set(PRIVATE_FIELDS) else variant


PRIVATE_FIELDS = ("path", "num_classes", "labels")


def _private_fields(variant: Variant, entry: dict, where: str, folder: Path | None) -> Variant:
    """A team's own model: `path` (a local model file, folder or tarball; relative to the registry file) or `url`,
    `num_classes` (default 1001) and `labels` (a local file of as many class names), checked now."""
    from dataclasses import replace

    def local(key: str) -> Path | None:
        value = entry.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value or "://" in value:
            raise RegistryError(f"{where}: {key} must be a local file or folder path")
        path = Path(value).expanduser()
        path = path if path.is_absolute() or folder is None else folder / path
        if not path.exists():
            raise RegistryError(f"{where}: {key} {path} does not exist")
        return path

    if "path" in entry and "url" in entry:
        raise RegistryError(f"{where}: give a path or a url, not both")
    classes = entry.get("num_classes", NUM_CLASSES)
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise RegistryError(f"{where}: num_classes must be an integer >= 1, got {shown(classes)}")
    if "path" not in entry and "url" not in entry:
        raise RegistryError(f"{where}: a private model needs a path or a url")
    if "url" in entry and "://" not in variant.url:
        raise RegistryError(f"{where}: url {shown(variant.url)} is neither absolute nor under a base_url")
    labels = local("labels")
    if labels is not None:
        from mobilenet_zoo.errors import ZooError
        from mobilenet_zoo.model.labels import read_labels_file

        try:
            count = len(read_labels_file(labels))
        except ZooError as exc:
            raise RegistryError(f"{where}: {exc}") from None
        if count != classes:
            raise RegistryError(f"{where}: labels {labels} holds {count} names for num_classes {classes}")
    return replace(variant, num_classes=classes, labels=labels, path=local("path"), private=True)


def parse_registry(data: Any, where: str, folder: Path | None = None) -> tuple[list[Variant], bool]:
    """Validate one registry document; return its variants and whether it extends the built-in one."""
    if not isinstance(data, dict):
        raise RegistryError(f"{where}: expected a mapping with a 'variants' list")
    if data.get("schema", 1) != 1:
        raise RegistryError(f"{where}: unsupported schema {shown(data.get('schema'))} (this version reads schema 1)")
    entries = data.get("variants")
    if not isinstance(entries, list) or not entries:
        raise RegistryError(f"{where}: 'variants' must be a non-empty list")
    base_url = data.get("base_url", "")
    if not isinstance(base_url, str):
        raise RegistryError(f"{where}: base_url must be a string")
    variants = [_parse_variant(entry, base_url, f"{where}: variant {i + 1}", folder) for i, entry in enumerate(entries)]
    seen: set[str] = set()
    for variant in variants:
        if variant.name in seen:
            raise RegistryError(f"{where}: duplicate variant name {variant.name!r}")
        seen.add(variant.name)
    extends = data.get("extends", "builtin")
    if extends not in ("builtin", "none"):
        raise RegistryError(f"{where}: extends must be 'builtin' or 'none'")
    return variants, extends == "builtin"


MAX_REGISTRY_BYTES = 4 << 20  # the 32 official variants take 8 KiB; a team registry of thousands fits


def _read_yaml(path: Path) -> Any:
    """A YAML document, parsed safely by libyaml when PyYAML has it (several times faster than pure Python).

    Anchors and aliases are refused before anything is built: a few hundred bytes of nested aliases expand
    to billions of items (a "billion laughs" file), and a registry has no use for them. A file past
    MAX_REGISTRY_BYTES is refused from its size, before it is read.
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        size = path.stat().st_size
        if size > MAX_REGISTRY_BYTES:
            raise RegistryError(
                f"{path}: {size / (1 << 20):.1f} MiB is larger than a registry may be ({MAX_REGISTRY_BYTES >> 20} MiB)"
            )
        text = path.read_text(encoding="utf-8")
        _refuse_anchors(yaml.parse(text, Loader=loader), path)
        return yaml.load(text, Loader=loader)
    except FileNotFoundError:
        raise RegistryError(f"registry file not found: {path}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise RegistryError(f"{path}: invalid YAML{at}") from None


def _refuse_anchors(events: Iterable[Any], path: Path) -> None:
    """RegistryError at the first anchor (`&a`) or alias (`*a`) among a YAML document's parser events."""
    import yaml

    for event in events:
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise RegistryError(
                f"{path}: YAML anchors and aliases (&, *) are not allowed in a registry "
                f"(line {event.start_mark.line + 1})"
            )


def load_registry(user_registry: str | os.PathLike | None = None) -> Registry:
    """The built-in registry, replaced or extended by a user registry (argument or $MOBILENET_ZOO_REGISTRY)."""
    builtin_path = builtin_registry_path()
    builtin, _ = parse_registry(_read_yaml(builtin_path), str(builtin_path))
    if len(builtin) != OFFICIAL_VARIANT_COUNT:
        raise RegistryError(f"{builtin_path}: expected {OFFICIAL_VARIANT_COUNT} variants, found {len(builtin)}")
    if not all(variant.official for variant in builtin):
        raise RegistryError(f"{builtin_path}: every variant must come from {OFFICIAL_BASE_URL}NAME.tgz")
    registry = Registry({v.name: v for v in builtin}, (builtin_path,))
    user_registry = user_registry or os.environ.get(REGISTRY_ENV)
    if user_registry:
        user_path = Path(user_registry).expanduser()
        extra, extends = parse_registry(_read_yaml(user_path), str(user_path), user_path.parent)
        variants = dict(registry.variants) if extends else {}
        variants.update({v.name: v for v in extra})
        registry = Registry(variants, (builtin_path, user_path) if extends else (user_path,))
    return registry


def filter_variants(
    variants: Iterable[Variant],
    quantized: bool | None = None,
    alpha: float | None = None,
    resolution: int | None = None,
    max_macs: float | None = None,
    min_top1: float | None = None,
) -> list[Variant]:
    """Variants that pass every given filter (MACs in millions, published top-1 in percent)."""

    def keep(v: Variant) -> bool:
        macs = v.published.macs_millions if v.published else v.computed_macs_millions
        return (
            (quantized is None or v.quantized == quantized)
            and (alpha is None or abs(v.alpha - alpha) < 1e-9)
            and (resolution is None or v.resolution == resolution)
            and (max_macs is None or macs <= max_macs)
            and (min_top1 is None or (v.published is not None and v.published.top1 >= min_top1))
        )

    return [v for v in variants if keep(v)]
