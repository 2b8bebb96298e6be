"""Every environment variable and file name the tool reads or writes, in one place (huggingface_hub style)."""

from __future__ import annotations

import os

# Environment variables
HOME_ENV = "MOBILENET_ZOO_HOME"  # cache root (default: the platform's user cache dir)
REGISTRY_ENV = "MOBILENET_ZOO_REGISTRY"  # a user registry YAML
MIRROR_ENV = "MOBILENET_ZOO_MIRROR"  # base URL replacing the official download folder
ATTEMPTS_ENV = "MOBILENET_ZOO_ATTEMPTS"  # download attempts (5)
BACKOFF_ENV = "MOBILENET_ZOO_BACKOFF"  # first retry delay in seconds (1, doubling)
TIMEOUT_ENV = "MOBILENET_ZOO_TIMEOUT"  # socket timeout in seconds (30)
OFFLINE_ENV = "MOBILENET_ZOO_OFFLINE"  # 1: never touch the network, use the cache only
MAX_DOWNLOAD_ENV = "MOBILENET_ZOO_MAX_DOWNLOAD"  # largest download accepted, in bytes (MAX_DOWNLOAD_BYTES)
DEBUG_ENV = "MOBILENET_ZOO_DEBUG"  # 1: tracebacks instead of one-line errors
QUIET_ENV = "MOBILENET_ZOO_QUIET"  # 1: no progress bars, spinners or notes on stderr
VERBOSE_ENV = "MOBILENET_ZOO_VERBOSE"  # 1: keep TensorFlow's start-up log lines
REALDATA_ENV = "MOBILENET_ZOO_REALDATA"  # tests: the folder of real models and images
NO_SKIP_ENV = "MOBILENET_ZOO_NO_SKIP"  # tests: a skipped test is a failure (CI sets it)

# File names
MANIFEST = "mobilenet_zoo.json"  # beside converted models: what each target is and its reference
METADATA_FILE = "mobilenet_zoo.json"  # inside our SavedModels (assets.extra/) and .pt2 archives (extra/)
CHECKSUMS = "checksums.json"  # in the cache: hashes of first verified downloads
REGISTRY_FILE = "registry.yaml"

# Limits
MAX_DOWNLOAD_BYTES = 200_000_000  # no MobileNet V1 download comes near it (the largest official tarball: 94.3 MB)


def env_flag(name: str) -> bool:
    """True when an environment variable is set to 1/true/yes/on."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
