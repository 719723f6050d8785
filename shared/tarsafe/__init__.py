"""Reading archives that an attacker wrote: a tar (or zstd tar) walked within a budget.

Shared by the download service (listings, member downloads), ``carvectl extract`` and the
finalizer. See ``reader`` for why ``tarfile`` does not parse the headers.
"""

from shared.tarsafe.limits import Budget, Limits, Malformed, Refused, Stopped
from shared.tarsafe.names import (
    display_name,
    extractable,
    link_escape,
    original_path,
    path_reason,
    relative_path,
    stripped_path,
    unsafe_reason,
)
from shared.tarsafe.reader import PIECE, Member, TarReader, is_zstd, open_tar

__all__ = [
    "PIECE",
    "Budget",
    "Limits",
    "Malformed",
    "Member",
    "Refused",
    "Stopped",
    "TarReader",
    "display_name",
    "extractable",
    "is_zstd",
    "link_escape",
    "open_tar",
    "original_path",
    "path_reason",
    "relative_path",
    "stripped_path",
    "unsafe_reason",
]
