"""Options shared by several commands, declared once."""

import typer

from mobilenet_zoo.constants import MIRROR_ENV, OFFLINE_ENV, REGISTRY_ENV

RegistryOption = typer.Option(
    None, "--registry", envvar=REGISTRY_ENV, help="User registry YAML that replaces or extends the built-in one."
)
MirrorOption = typer.Option(
    None, "--mirror", envvar=MIRROR_ENV, help="Base URL replacing the official download folder."
)
JsonOption = typer.Option(False, "--json", help="Machine-readable output.")
RayOption = typer.Option(
    False, "--ray", help="Run on Ray: a local instance on this machine's CPUs (or the cluster $RAY_ADDRESS names)."
)
RayAddressOption = typer.Option(
    None, "--ray-address", help="Run on the Ray cluster at this address (implies --ray), e.g. ray://head:10001 or auto."
)


def _go_offline(value: bool) -> bool:
    """`--offline`: the same as $MOBILENET_ZOO_OFFLINE=1 for this run (and the processes it starts)."""
    if value:
        import os

        os.environ[OFFLINE_ENV] = "1"
    return value


OfflineOption = typer.Option(
    False,
    "--offline",
    callback=_go_offline,
    help="Use only the cache: a registry name that is not cached fails at once instead of downloading "
    "(as $MOBILENET_ZOO_OFFLINE=1).",
)
