"""Simulate osquery's file-carve upload client, as a library and as a load-generating CLI.

It reproduces what osquery 5.21 to 5.23 put on the wire (docs/osquery-protocol.md):

* the archive: a POSIX pax tar whose members are named
  ``/tmp/osquery_carve_<guid>/<original absolute path>`` (mode 0644, mtime 0, as libarchive
  writes them for osquery), optionally compressed as a whole with zstd level 1;
* one start request, compact JSON with osquery's key order, that must be answered with a JSON
  object holding a non-empty string ``session_id``;
* the blocks, strictly one after another, base64 inside JSON;
* how osquery judges a reply: the HTTP status is never looked at, an empty or JSON body is a
  success, a non-JSON body, a dropped connection or the 16 s request limit is a transport failure;
* 5.21 and older skip a failed block and still end ``SUCCESS``; 5.22+ make three attempts per
  request (sleeping 1 s then 4 s) and end ``DATA POST FAILED``; 5.23 adds
  ``Authorization: NodeKey <key>`` to every request;
* a start that fails (no reply, or a reply without a non-empty string ``session_id``) ends the
  carve ``DATA POST FAILED`` too: osquery's ``carves`` table has no status of its own for it;
* the HTTP client silently re-sends once after a socket error, so a server can see a block twice.

The package, by job: ``archive`` (the tar and its zstd), ``wire`` (request bodies, headers, the
verdict on a reply), ``host`` (one host's upload and retry rules, many hosts at once) and
``cli`` (the load generator). osquery's status names come from ``shared.protocol``, the
server's reading of the same document.
"""

from __future__ import annotations

from clients.osquery_sim.archive import (
    CARVE_DIR_PREFIX,
    PIECE_SIZE,
    build_archive,
    build_synthetic_archive,
    carve_member_name,
    sha256_file,
    synthetic_pieces,
)
from clients.osquery_sim.cli import main, parse_size, parse_version, percentile, summarize
from clients.osquery_sim.host import CarveResult, carve, carve_many, client_ssl_context
from clients.osquery_sim.wire import (
    DEFAULT_VERSION,
    NODE_KEY_HEADER_SINCE,
    RETRIES_SINCE,
    Reply,
    block_body,
    judge_reply,
    request_headers,
    start_body,
    version_string,
)
from shared.protocol import STATUS_DATA_POST_FAILED, STATUS_PENDING, STATUS_SUCCESS

__all__ = [
    "CARVE_DIR_PREFIX",
    "DEFAULT_VERSION",
    "NODE_KEY_HEADER_SINCE",
    "PIECE_SIZE",
    "RETRIES_SINCE",
    "STATUS_DATA_POST_FAILED",
    "STATUS_PENDING",
    "STATUS_SUCCESS",
    "CarveResult",
    "Reply",
    "block_body",
    "build_archive",
    "build_synthetic_archive",
    "carve",
    "carve_many",
    "carve_member_name",
    "client_ssl_context",
    "judge_reply",
    "main",
    "parse_size",
    "parse_version",
    "percentile",
    "request_headers",
    "sha256_file",
    "start_body",
    "summarize",
    "synthetic_pieces",
    "version_string",
]
