"""The OpenAPI 3.1 description of the download API, served at ``/api/v1/openapi.json``.

Written out by hand (the handlers are plain aiohttp), and kept honest by a test that compares
its paths and methods with the app's router (tests/unit/test_openapi.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from services.download import openapi_custody

_ERR = {"$ref": "#/components/responses/Error"}
_CARVE_ID = {"name": "carve_id", "in": "path", "required": True, "schema": {"type": "string"}}
_PATH = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
_INDEX = {
    "name": "index",
    "in": "path",
    "required": True,
    "description": "the member's position in the archive (the listing's index; 0: the first)",
    "schema": {"type": "integer", "minimum": 0},
}
_REQUEST_ID = {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}
_TICKET = {
    "name": "ticket",
    "in": "query",
    "description": "a download ticket instead of a token (single use, about 60 s)",
    "schema": {"type": "string"},
}


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "description": description,
        "schema": {"type": "string", **schema},
    }


def _op(summary: str, *params: dict[str, Any], ok: str = "OK", **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": list(params),
        "responses": {"200": {"description": ok}, "4XX": _ERR, "5XX": _ERR},
        **extra,
    }


def _json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _strings_body(*required: str, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A required JSON object body of string members: ``required`` ones, then ``optional``."""
    properties = {name: {"type": "string"} for name in (*required, *optional)}
    return _json_body({"type": "object", "required": list(required), "properties": properties})


_BINARY = {"content": {"application/octet-stream": {"schema": {"type": "string"}}}}
_LIST = (
    _query("status", "receiving, complete, failed, expired or deleted"),
    _query("since", "created at or after (ISO 8601 with a zone)", format="date-time"),
    _query("request_id", "the request id osquery printed (exact)"),
    _query("device", "device certificate subject CN, or its SHA-256 fingerprint"),
    _query(
        "q",
        "carve id or request id prefix, or part of the host or of a carved path "
        "(3 characters or more; case-insensitive)",
    ),
    _query("sort", "created, size, status or host; a leading - for descending (-created)"),
    _query("verdict", "triage verdict: clean, flagged or incomplete"),
    _query("case", "carves tagged with this case id, or held for it"),
    _query("held", "true: carves a legal hold stands on; false: the others"),
    _query("limit", "page size, 1 to 1000"),
    _query("cursor", "next_cursor of the previous page"),
)
_AUDIT = (
    _query("carve_id", "rows about this carve"),
    _query("identity", "display name or entity id"),
    _query("action", "route name: list, carve, archive, files, file, delete, login..."),
    _query("outcome", "allowed, denied, refused, error or aborted"),
    _query("since", "at or after (ISO 8601 with a zone)", format="date-time"),
    _query("until", "before (ISO 8601 with a zone)", format="date-time"),
    _query("limit", "page size, 1 to 1000"),
    _query("cursor", "next_cursor of the previous page"),
)
_DELIVERIES = (
    _query("endpoint", "one endpoint's deliveries"),
    _query("state", "pending, delivered or dead"),
    _query("carve_id", "deliveries of this carve's events"),
    _query("event_id", "deliveries of one event"),
    _query("limit", "page size, 1 to 500"),
    _query("cursor", "next_cursor of the previous page"),
)
CARVE = "/api/v1/carves/{carve_id}"

# Every time the API writes: RFC 3339, UTC, "Z", milliseconds only when the time has them.
_TIME = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$",
    "examples": ["2026-11-27T10:00:00Z", "2026-11-27T10:00:00.911Z"],
}
_NULLABLE_TIME = {"oneOf": [{"$ref": "#/components/schemas/Time"}, {"type": "null"}]}
_STR = {"type": "string"}
_NULLABLE_STR = {"type": ["string", "null"]}
_INT = {"type": "integer"}
CARVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["carve_id", "request_id", "status", "created_at", "updated_at"],
    "properties": {
        "carve_id": _STR,
        "request_id": _STR,
        "status": {"enum": ["receiving", "complete", "failed", "expired", "deleted"]},
        "block_count": _INT,
        "block_size": _INT,
        "carve_size": _INT,
        "blocks_received": _INT,
        "progress": {"type": "number"},
        "compression": {"enum": ["none", "zstd", None]},
        "sha256": _NULLABLE_STR,
        "filename": _NULLABLE_STR,
        "host": _NULLABLE_STR,
        "paths": {"type": "array", "items": _STR},
        "path_count": {"type": ["integer", "null"]},
        "failure_reason": _NULLABLE_STR,
        "deleted_by": _NULLABLE_STR,
        **{
            name: _NULLABLE_TIME
            for name in ("completed_at", "failed_at", "expired_at", "deleted_at")
        },
        "created_at": {"$ref": "#/components/schemas/Time"},
        "updated_at": {"$ref": "#/components/schemas/Time"},
        "device": {"type": ["object", "null"]},
        "manifest": {"type": ["object", "null"]},
        # carve-triage's scan on arrival (docs/triage.md): verdict, hits, skipped members.
        "triage": {
            "type": ["object", "null"],
            "properties": {
                "status": {"enum": ["pending", "running", "done", "failed"]},
                "verdict": {"enum": ["clean", "flagged", "incomplete", None]},
                "rules_version": _NULLABLE_STR,
                "hits": {"type": "array", "items": {"type": "object"}},
                "skipped": {"type": "array", "items": {"type": "object"}},
            },
        },
        "triage_history": {"type": "array", "items": {"type": "object"}},
        # Encryption at rest (docs/security.md): null for a carve stored in the clear.
        "encryption": {
            "type": ["object", "null"],
            "properties": {
                "scheme": _STR,
                "sealed": {"enum": ["all", "partial"]},
                "shredded": {"type": "boolean"},
            },
        },
    },
}


def _json_ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "200": {"description": description, "content": {"application/json": {"schema": schema}}},
        "4XX": _ERR,
        "5XX": _ERR,
    }


_CARVE_REF = {"$ref": "#/components/schemas/Carve"}
_PAGE = {
    "type": "object",
    "properties": {
        "carves": {"type": "array", "items": _CARVE_REF},
        "next_cursor": _NULLABLE_STR,
    },
}

PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/carves": {
        "get": _op("List carves, newest first", *_LIST, responses=_json_ok("a page", _PAGE))
    },
    "/api/v1/summary": {"get": _op("How many carves are receiving, complete, failed")},
    CARVE: {
        "get": _op("One carve's metadata", _CARVE_ID, responses=_json_ok("the carve", _CARVE_REF)),
        "delete": _op("Delete a carve's bytes (admin policy); the document stays", _CARVE_ID),
    },
    CARVE + "/archive": {
        "get": _op(
            "The archive (Range, If-Range, If-None-Match)",
            _CARVE_ID,
            _TICKET,
            responses={
                "200": _BINARY | {"description": "the archive"},
                "206": _BINARY | {"description": "one range"},
                "4XX": _ERR,
                "5XX": _ERR,
            },
        ),
    },
    CARVE + "/files": {"get": _op("The carve's manifest (per-file SHA-256)", _CARVE_ID)},
    CARVE + "/files/{path}": {
        "get": _op("One member's bytes", _CARVE_ID, _PATH, _TICKET, ok="the member"),
    },
    CARVE + "/members/{index}": {
        "get": _op(
            "The member at a position, whatever its name (CR, LF)",
            _CARVE_ID,
            _INDEX,
            _TICKET,
            ok="the member",
        ),
    },
    CARVE + "/download-ticket": {
        "post": _op(
            "A short-lived, single-use download ticket for a browser",
            _CARVE_ID,
            requestBody=_json_body(
                {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string"},
                        "index": {"type": "integer", "minimum": 0},
                    },
                },
                required=False,
            ),
        ),
    },
    CARVE + "/triage": {
        "post": _op("Scan the carve again with the current rules (admin policy)", _CARVE_ID)
        | {"responses": {"202": {"description": "pending"}, "4XX": _ERR, "5XX": _ERR}},
    },
    "/api/v1/triage": {
        "post": _op(
            "Scan again every carve completed since a time (admin policy; bounded)",
            requestBody=_strings_body("since"),
        )
        | {"responses": {"202": {"description": "requested"}, "4XX": _ERR, "5XX": _ERR}},
    },
    "/api/v1/audit": {"get": _op("The audit trail (admin policy)", *_AUDIT)},
    "/api/v1/requests/{request_id}": {
        "get": _op(
            "A campaign: every carve of one request id (paths, hosts, counts, bytes, "
            "progress, first and last activity) and a page of them",
            _REQUEST_ID,
            _query("sort", "created, size, status or host (default); - for descending"),
            _query("limit", "page size, 1 to 1000"),
            _query("cursor", "next_cursor of the previous page"),
        )
    },
    "/api/v1/requests/{request_id}/export-ticket": {
        "post": _op(
            "A short-lived, single-use ticket for a browser to fetch the export", _REQUEST_ID
        )
    },
    "/api/v1/requests/{request_id}/export": {
        "get": _op(
            "One ZIP of the campaign's complete carves, manifest.json and manifest.csv "
            "(streamed; ZIP64 where needed). Resume: the same as_of, offset = bytes kept, "
            "If-Match: the first answer's ETag",
            _REQUEST_ID,
            _query(
                "as_of",
                "the set: carves complete at this time (the default: now)",
                format="date-time",
            ),
            _query("offset", "start at this byte of the ZIP"),
            _TICKET,
            responses={
                "200": {
                    "description": "the ZIP",
                    "content": {"application/zip": {"schema": {"type": "string"}}},
                },
                "4XX": _ERR,
                "5XX": _ERR,
            },
        )
    },
    "/api/v1/webhooks/deliveries": {
        "get": _op("Webhook deliveries of carve events (admin policy)", *_DELIVERIES)
    },
    "/api/v1/login": {
        "post": _op(
            "Vault userpass login, forwarded (rate limited)",
            security=[],
            requestBody=_strings_body("username", "password"),
        ),
    },
    "/api/v1/login/oidc": {
        "get": _op("Whether single sign-on (Vault's OIDC method) is configured", security=[]),
        "post": _op(
            "Where to send the browser to sign in (Vault's auth_url); sets the sign-in's "
            "nonce cookie, which the callback needs back",
            security=[],
        ),
    },
    "/api/v1/login/oidc/callback": {
        "post": _op(
            "The provider's code and state, and the nonce cookie of the sign-in, exchanged by "
            "Vault for a token (rate limited)",
            security=[],
            requestBody=_strings_body("code", "state"),
        ),
    },
    "/api/v1/logout": {"post": _op("Revoke the caller's token")},
    "/api/v1/whoami": {"get": _op("The caller's identity and what it may do")},
    "/api/v1/openapi.json": {"get": _op("This document", security=[])},
    "/file_request": {
        "post": _op(
            "The original server's endpoint: token and carve id in the body",
            security=[],
            requestBody=_strings_body("token", "file_carve_guid", optional=("token_accessor",)),
        ),
    },
}

PATHS |= openapi_custody.PATHS
CARVE_SCHEMA["properties"] |= openapi_custody.CARVE_PROPERTIES

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "osquery carve server: download API", "version": "1"},
    "security": [{"vaultToken": []}, {"bearer": []}],
    "paths": PATHS,
    "components": {
        "schemas": {"Time": _TIME, "Carve": CARVE_SCHEMA},
        "securitySchemes": {
            "vaultToken": {"type": "apiKey", "in": "header", "name": "X-Vault-Token"},
            "bearer": {"type": "http", "scheme": "bearer"},
        },
        "responses": {
            "Error": {
                "description": "a JSON error: {error, code, ...details}",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["error", "code"],
                            "properties": {
                                "error": {"type": "string"},
                                "code": {"type": "string"},
                            },
                        }
                    }
                },
            }
        },
    },
}
_BODY = orjson.dumps(DOCUMENT)


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_BODY, content_type="application/json")
