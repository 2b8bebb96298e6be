"""The zoo side of the API: names and what they resolve to, the registry of variants, pulls and the cache, the
registry of formats. Nothing here imports a framework; internals are imported inside the functions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from mobilenet_zoo.formats import WriterOption
    from mobilenet_zoo.model.canonical import MobileNetV1Model
    from mobilenet_zoo.zoo.cache import CacheEntry
    from mobilenet_zoo.zoo.pulling import PullResult
    from mobilenet_zoo.zoo.sources import Named, Source
    from mobilenet_zoo.zoo.variants import Registry, Variant

PathLike = str | Path


def resolve(name: PathLike, *, registry_file: PathLike | None = None) -> Named:
    """What `name` is: a registry name, a tarball, an extracted official folder, or a model file/folder."""
    from mobilenet_zoo.zoo.sources import resolve as _resolve

    return _resolve(name, registry=registry_file)


def open_source(source: PathLike, *, registry_file: PathLike | None = None, mirror: str | None = None) -> Source:
    """The canonical model of `source` and the original artifact that is its reference forward pass."""
    from mobilenet_zoo.zoo.sources import open_source as _open_source

    return _open_source(source, registry=registry_file, mirror=mirror)


def load(source: PathLike, *, registry_file: PathLike | None = None, mirror: str | None = None) -> MobileNetV1Model:
    """Any source (registry name pulled on demand, tarball, official folder, model file) as the canonical model."""
    return open_source(source, registry_file=registry_file, mirror=mirror).model


def registry(registry_file: PathLike | None = None) -> Registry:
    """The registry of variants: the built-in 32, extended or replaced by a user registry file."""
    from mobilenet_zoo.zoo.variants import load_registry

    return load_registry(registry_file)


def variants(registry_file: PathLike | None = None, **filters: Any) -> list[Variant]:
    """The registry's variants that pass `filters` (`quantized`, `alpha`, `resolution`, `max_macs`, `min_top1`)."""
    return filter_variants(registry(registry_file), **filters)


def filter_variants(variants: list[Variant], **filters: Any) -> list[Variant]:
    """The variants among `variants` that pass `filters` (as `variants`)."""
    from mobilenet_zoo.zoo.variants import filter_variants as _filter

    return _filter(variants, **filters)


def info(name: str, *, registry_file: PathLike | None = None) -> dict[str, Any]:
    """Everything known about one variant: its registry entry, tarball members, the parameter-count convention and
    its cache state."""
    from mobilenet_zoo.model.arch import PARAMETER_CONVENTION
    from mobilenet_zoo.zoo.pulling import cache_state

    variant = registry(registry_file).get(name)
    data = variant.as_dict()
    data["members"] = list(variant.members)
    data["parameter_convention"] = PARAMETER_CONVENTION
    data["cache"] = cache_state(variant)
    return data


def pull(
    name: str, *, mirror: str | None = None, sha256: str | None = None, registry_file: PathLike | None = None
) -> Path:
    """The extracted folder of a registry variant, downloaded, verified and cached on first use."""
    return pull_variant(registry(registry_file).get(name), mirror=mirror, sha256=sha256).path


def pull_variant(
    variant: Variant,
    *,
    mirror: str | None = None,
    sha256: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    quiet: bool | None = None,
) -> PullResult:
    """`pull` of a variant, with the details: where it lives and whether this pull downloaded it; `progress(done,
    total)` as bytes come, retries announced on stderr unless `quiet`."""
    from mobilenet_zoo.zoo.pulling import pull_variant as _pull_variant

    return _pull_variant(variant, mirror=mirror, sha256=sha256, progress=progress, quiet=quiet)


def cache_folder() -> Path:
    """The cache folder ($MOBILENET_ZOO_HOME)."""
    from mobilenet_zoo.zoo.cache import Cache

    return Cache.at().root


def cache_entries() -> list[CacheEntry]:
    """What the cache holds: extracted models, extracted local tarballs, partial downloads."""
    from mobilenet_zoo.zoo.cache import Cache

    return Cache.at().entries()


def remove_cached(names: list[str] | None = None, *, registry_file: PathLike | None = None) -> list[Path]:
    """Delete cached entries (None: all of them) named as `cache_entries` names them or as registry variants;
    recorded checksums stay. Returns the paths removed."""
    from mobilenet_zoo.errors import ZooError
    from mobilenet_zoo.zoo.cache import Cache

    cache = Cache.at()
    cached = {entry.name for entry in cache.entries()}
    chosen = sorted(cached) if names is None else []
    for name in names or []:
        canonical = name if name in cached else registry(registry_file).get(name).name
        if canonical not in cached:
            raise ZooError(f"{canonical} is not in the cache")
        chosen.append(canonical)
    return [path for name in chosen for path in cache.remove(name)]


def format_names(quantized: bool | None = None) -> list[str]:
    """The registered formats (`convert --to`); with `quantized`, those with a writer of quantized (or float)
    models."""
    from mobilenet_zoo.formats import can_write, names

    return [name for name in names() if quantized is None or can_write(name, quantized)]


def writer_options() -> dict[str, tuple[WriterOption, tuple[str, ...]]]:
    """Every writer option the formats declare, by name, with the titles of the formats that take it."""
    from mobilenet_zoo.formats import writer_options as _writer_options

    return _writer_options()


def check_writer_options(options: dict[str, Any]) -> dict[str, Any]:
    """Writer options checked against their declarations (each value in its declared spelling), or a usage error
    naming the flag."""
    from mobilenet_zoo.formats import checked_writer_options

    return checked_writer_options(options)


def runtimes() -> list[str]:
    """The runtimes `bench` measures in: each registered format's own."""
    from mobilenet_zoo.tasks.bench import registered_runtimes

    return list(registered_runtimes())
