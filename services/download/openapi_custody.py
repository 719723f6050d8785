"""The OpenAPI paths of holds, expiry, case tags and custody records (merged by openapi.py)."""

from __future__ import annotations

from typing import Any

_ERR = {"$ref": "#/components/responses/Error"}
_CARVE_ID = {"name": "carve_id", "in": "path", "required": True, "schema": {"type": "string"}}
_CASE = {"name": "case", "in": "path", "required": True, "schema": {"type": "string"}}
_CASE_SCHEMA = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"}
CARVE = "/api/v1/carves/{carve_id}"
_CARVE_REF = {"$ref": "#/components/schemas/Carve"}


def _op(summary: str, *params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    ok = {"description": "the carve", "content": {"application/json": {"schema": _CARVE_REF}}}
    return {
        "summary": summary,
        "parameters": list(params),
        "responses": {"200": ok, "4XX": _ERR, "5XX": _ERR},
        **extra,
    }


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


# Added to the Carve schema's properties.
CARVE_PROPERTIES: dict[str, Any] = {
    "holds": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {n: {"type": "string"} for n in ("case", "reason", "placed_by")}
            | {"placed_at": {"$ref": "#/components/schemas/Time"}},
        },
    },
    "cases": {"type": "array", "items": _CASE_SCHEMA},
    "expires_at": {"oneOf": [{"$ref": "#/components/schemas/Time"}, {"type": "null"}]},
}

PATHS: dict[str, Any] = {
    CARVE + "/hold": {
        "put": _op(
            "Place a legal hold for a case (admin policy); 201 when placed, 200 when that "
            "case held it already",
            _CARVE_ID,
            requestBody=_body(
                {
                    "type": "object",
                    "required": ["case", "reason"],
                    "properties": {
                        "case": _CASE_SCHEMA,
                        "reason": {"type": "string", "minLength": 1, "maxLength": 1000},
                    },
                }
            ),
        )
    },
    CARVE + "/hold/{case}": {
        "delete": _op("Release the case's hold (admin policy)", _CARVE_ID, _CASE),
    },
    CARVE + "/expiry": {
        "put": _op(
            "When the carve's bytes go (admin policy); null: the service's retention",
            _CARVE_ID,
            requestBody=_body(
                {
                    "type": "object",
                    "required": ["expires_at"],
                    "properties": {"expires_at": {"type": ["string", "null"]}},
                }
            ),
        )
    },
    CARVE + "/custody": {
        "get": {
            "summary": "The carve's custody record, signed by Vault Transit (ed25519): identity, "
            "archive and manifest digests, timeline and every access (docs/security.md)",
            "parameters": [_CARVE_ID],
            "responses": {"200": {"description": "{record, signature}"}, "4XX": _ERR, "5XX": _ERR},
        }
    },
    "/api/v1/custody/keys": {
        "get": {
            "summary": "The custody signing key's public keys, every version, as PEM",
            "parameters": [],
            "responses": {"200": {"description": "the keys"}, "4XX": _ERR, "5XX": _ERR},
        }
    },
    CARVE + "/cases": {
        "patch": _op(
            "Tag the carve with case ids, or untag it",
            _CARVE_ID,
            requestBody=_body(
                {
                    "type": "object",
                    "properties": {
                        "add": {"type": "array", "items": _CASE_SCHEMA, "maxItems": 32},
                        "remove": {"type": "array", "items": _CASE_SCHEMA, "maxItems": 32},
                    },
                }
            ),
        )
    },
}
