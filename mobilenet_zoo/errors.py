"""Exceptions the CLI turns into one line on stderr and a nonzero exit."""


class ZooError(Exception):
    """A user-facing error: its message is the whole story."""

    exit_code = 1


class UnknownVariantError(ZooError):
    """A name that matches no registry entry."""


class RegistryError(ZooError):
    """A registry file that is missing, malformed or inconsistent."""


class DownloadError(ZooError):
    """A download that failed after its retries."""


class ChecksumError(ZooError):
    """A file whose size or digest is not the expected one."""


class ArchiveError(ZooError):
    """A tarball that is corrupt, unsafe or missing expected members."""


class MissingDependencyError(ZooError):
    """An optional framework that is not installed."""

    exit_code = 3


class ModelFormatError(ZooError):
    """A file that is not (or not the expected) MobileNet V1 model."""


class VerificationError(ZooError):
    """A parity check that did not meet its thresholds (exit 4: click's usage errors own 2)."""

    exit_code = 4
