"""``edgekit fleet join|status|bench|convert``: a fleet of boards on Ray."""

from __future__ import annotations

import click


@click.group("fleet")
def fleet() -> None:
    """Benchmark and convert across boards joined into a Ray cluster (edgekit[fleet])."""
