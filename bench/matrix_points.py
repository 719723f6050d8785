"""The benchmark matrix's points: the sweeps, each along one axis from a baseline
(``bench.matrix`` says which and why)."""

from __future__ import annotations

from collections.abc import Sequence

from bench.download_run import Scenario as DownloadScenario
from bench.render import GB, MB, GiB, KiB, MiB
from bench.upload_run import Scenario

CEILING_SIZES = (8 * KiB, 256 * KiB, MiB, 8 * MiB)

# Which sweeps (plots and report sections) each point belongs to.
SWEEPS: dict[str, tuple[str, ...]] = {
    "B8K": ("block-size", "hosts-8k", "compression"),
    "B256K": ("block-size",),
    "B1M": ("block-size", "hosts-1m", "compression"),
    "B8M": ("block-size",),
    "Z8K": ("compression",),
    "Z1M": ("compression",),
    "H1-8K": ("hosts-8k",),
    "H50-8K": ("hosts-8k",),
    "H200-8K": ("hosts-8k",),
    "H50-1M": ("hosts-1m",),
    "H200-1M": ("hosts-1m",),
    **{f"R8K-{grid}": ("replicas-8k",) for grid in ("1x1", "2x1", "1x2", "2x2")},
    **{f"R1M-{grid}": ("replicas-1m",) for grid in ("1x1", "2x1", "1x2", "2x2")},
    "D10M": ("carve-size",),
    "D100M": ("carve-size", "hosts-1m"),
    "D1G": ("carve-size",),
    **{name: ("downloads",) for name in ("DA1", "DA20", "DM1", "DM20")},
}


def replica_grid(
    prefix: str, hosts: int, carve: int, block: int, what: str, grids: Sequence[str]
) -> list[Scenario]:
    """Staged points for each "IxA" grid: I ingests, A assemblers."""
    points = []
    for grid in grids:
        ingests, assemblers = (int(n) for n in grid.split("x"))
        purpose = f"{what}, {ingests} ingest(s) x {assemblers} assembler(s), staged"
        points.append(
            Scenario(
                f"{prefix}-{grid}",
                hosts,
                carve,
                block,
                purpose,
                staged=True,
                ingests=ingests,
                assemblers=assemblers,
            )
        )
    return points


GRIDS = ("1x1", "2x1", "1x2", "2x2")
FULL_UPLOADS = (
    Scenario("B8K", 10, 2 * MB, 8 * KiB, "block size 8 KiB (osquery's default), 10 hosts"),
    Scenario("B256K", 10, 20 * MB, 256 * KiB, "block size 256 KiB, 10 hosts"),
    Scenario("B1M", 10, 20 * MB, MiB, "block size 1 MiB, 10 hosts (baseline)"),
    Scenario("B8M", 10, 32 * MB, 8 * MiB, "block size 8 MiB (the ingest's maximum), 10 hosts"),
    Scenario("Z8K", 10, 2 * MB, 8 * KiB, "B8K with zstd-compressed archives", compress=True),
    Scenario("Z1M", 10, 20 * MB, MiB, "B1M with zstd-compressed archives", compress=True),
    Scenario("H1-8K", 1, 4 * MB, 8 * KiB, "1 host, 8 KiB blocks"),
    Scenario("H50-8K", 50, 500 * 1000, 8 * KiB, "50 hosts, 8 KiB blocks"),
    Scenario("H200-8K", 200, 160 * 1000, 8 * KiB, "200 hosts, 8 KiB blocks"),
    Scenario("H50-1M", 50, 8 * MB, MiB, "50 hosts, 1 MiB blocks (the RSS target)"),
    Scenario("H200-1M", 200, 2 * MB, MiB, "200 hosts, 1 MiB blocks"),
    *replica_grid("R8K", 50, 1 * MB, 8 * KiB, "50 hosts, 8 KiB blocks", GRIDS),
    *replica_grid("R1M", 20, 16 * MB, MiB, "20 hosts, 1 MiB blocks", GRIDS),
    Scenario("D10M", 1, 10 * MB, MiB, "RSS vs carve size: 10 MB"),
    Scenario("D100M", 1, 100 * MB, MiB, "RSS vs carve size: 100 MB"),
    Scenario("D1G", 1, 1 * GB, MiB, "RSS vs carve size: 1 GB (the slowest upload point)"),
)


QUICK_UPLOADS = (
    Scenario("B8K", 2, 200 * 1000, 8 * KiB, "8 KiB blocks, 2 hosts"),
    Scenario("Z1M", 2, 3 * MB, MiB, "1 MiB blocks, zstd-compressed archives", compress=True),
    *replica_grid("R1M", 2, 3 * MB, MiB, "2 hosts, 1 MiB blocks", ("2x2",)),
)


def download_points(clients: int) -> tuple[DownloadScenario, ...]:
    """DA1, DM1, DA20 and DM20 (named for the full run's 20 clients even when quick has fewer)."""
    many = f"{clients} concurrent downloads"
    return (
        DownloadScenario("DA1", 1, "archive", "1 download of the whole archive"),
        DownloadScenario("DM1", 1, "member", "1 download of the tar member"),
        DownloadScenario("DA20", clients, "archive", f"{many} of the whole archive"),
        DownloadScenario("DM20", clients, "member", f"{many} of the tar member"),
    )


FULL_DOWNLOADS = download_points(20)
QUICK_DOWNLOADS = download_points(3)
DEFAULT_DOWNLOAD_SIZE = 1 * GiB
QUICK_DOWNLOAD_SIZE = 8 * MiB
