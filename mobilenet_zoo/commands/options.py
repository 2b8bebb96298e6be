"""Options shared by several commands, declared once."""

import typer

RegistryOption = typer.Option(None, "--registry", envvar="MOBILENET_ZOO_REGISTRY", help="User registry YAML that replaces or extends the built-in one.")
MirrorOption = typer.Option(None, "--mirror", envvar="MOBILENET_ZOO_MIRROR", help="Base URL replacing the official download folder.")
JsonOption = typer.Option(False, "--json", help="Machine-readable output.")
RayOption = typer.Option(False, "--ray", help="Run on Ray: a local instance on this machine's CPUs (or the cluster $RAY_ADDRESS names).")
RayAddressOption = typer.Option(None, "--ray-address", help="Run on the Ray cluster at this address (implies --ray), e.g. ray://head:10001 or auto.")
