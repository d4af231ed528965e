//! The OpenAPI 3.1 document of the admin listener, served at `GET /api/v1/openapi.json`.
//!
//! Written by hand as JSON, next to the route table it describes; a test holds the two together
//! (every route the router serves is documented with the right security, and every documented
//! operation is served).

use std::sync::OnceLock;

use axum::Json;
use serde_json::{json, Map, Value};

use super::auth::Access;
use crate::export::CSV_COLUMNS;

/// `GET /api/v1/openapi.json`. Public: it describes the API and holds no data.
pub async fn serve() -> Json<Value> {
    Json(document().clone())
}

/// The document, built once.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(build)
}

/// The `security` of an operation with this access: none, any credential, or one holding the
/// scope (OpenAPI 3.1 lets non-OAuth schemes list required roles).
pub fn security(access: Access) -> Value {
    match access {
        Access::Public => json!([]),
        Access::Authenticated => json!([{"bearerAuth": []}, {"sessionCookie": []}]),
        Access::Scope(scope) => {
            let scope = scope.name();
            json!([{"bearerAuth": [scope]}, {"sessionCookie": [scope]}])
        }
    }
}

fn param(name: &str) -> Value {
    json!({"$ref": format!("#/components/parameters/{name}")})
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_response(description: &str, schema_name: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": schema(schema_name)}}
    })
}

fn error_response(description: &str) -> Value {
    json_response(description, "Error")
}

/// The responses every protected operation may give besides its own.
fn with_auth_errors(access: Access, mut responses: Map<String, Value>) -> Value {
    if access != Access::Public {
        responses.insert(
            "401".into(),
            json!({
                "description": "No credentials, an unknown token, or an ended session.",
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                "content": {"application/json": {"schema": schema("Error")}}
            }),
        );
        responses.insert(
            "403".into(),
            error_response(
                "The token lacks the scope (`scope` names it), or a cookie-authenticated change came from another origin.",
            ),
        );
    }
    Value::Object(responses)
}

fn operation(
    id: &str,
    summary: &str,
    access: Access,
    parameters: Vec<Value>,
    responses: Value,
) -> Value {
    let responses = match responses {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    json!({
        "operationId": id,
        "summary": summary,
        "security": security(access),
        "parameters": parameters,
        "responses": with_auth_errors(access, responses),
    })
}

fn filters() -> Vec<Value> {
    crate::store::query::FILTER_PARAMS
        .iter()
        .map(|name| param(name))
        .collect()
}

fn string_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description,
           "schema": {"type": "string", "maxLength": 1024}})
}

fn build() -> Value {
    use crate::admin::config::Scope::{Export, Read};
    let read = Access::Scope(Read);
    let export = Access::Scope(Export);
    let bad_params = error_response(
        "A parameter is invalid: `param` names the first, `errors` lists every one.",
    );

    let mut paths = Map::new();
    let mut add = |path: &str, method: &str, op: Value| {
        let item = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        if let Value::Object(item) = item {
            item.insert(method.to_string(), op);
        }
    };

    add(
        "/healthz",
        "get",
        operation(
            "healthz",
            "The process is up.",
            Access::Public,
            vec![],
            json!({"200": {"description": "`ok`", "content": {"text/plain": {"schema": {"type": "string"}}}}}),
        ),
    );
    add(
        "/readyz",
        "get",
        operation(
            "readyz",
            "The store takes writes.",
            Access::Public,
            vec![],
            json!({
                "200": {"description": "`ready`", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "503": {"description": "Not ready, with the reason.", "content": {"text/plain": {"schema": {"type": "string"}}}}
            }),
        ),
    );
    add(
        "/metrics",
        "get",
        operation(
            "metrics",
            "Prometheus metrics.",
            Access::Public,
            vec![],
            json!({"200": {"description": "Prometheus text format 0.0.4.", "content": {"text/plain": {"schema": {"type": "string"}}}}}),
        ),
    );
    add(
        "/api/v1/openapi.json",
        "get",
        operation(
            "openapi",
            "This document.",
            Access::Public,
            vec![],
            json!({"200": {"description": "OpenAPI 3.1.", "content": {"application/json": {"schema": {"type": "object"}}}}}),
        ),
    );

    let mut sign_in = operation(
        "createSession",
        "Sign in: trade a token for an HttpOnly, SameSite=Strict session cookie (12 h).",
        Access::Public,
        vec![],
        json!({
            "204": {"description": "Signed in.", "headers": {"Set-Cookie": {"schema": {"type": "string"},
                "description": "`auditgate_session=<id>; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200`"}}},
            "400": error_response("The body is not `{\"token\": \"...\"}`."),
            "401": error_response("Unknown token."),
            "403": error_response("Cross-origin request."),
            "415": error_response("Content-Type is not application/json.")
        }),
    );
    sign_in["requestBody"] = json!({
        "required": true,
        "content": {"application/json": {"schema": schema("SignIn")}}
    });
    add("/api/v1/session", "post", sign_in);

    let mut ingest = operation(
        "ingestEvents",
        "Record entries from the app itself (the reference's logAction() shape): one entry or an array of up to 1000. Answered once they are stored. `Idempotency-Key` makes retries safe.",
        Access::Scope(crate::admin::config::Scope::Write),
        vec![json!({"name": "Idempotency-Key", "in": "header", "required": false,
            "description": "A key that makes retries safe: the same key and body answer with the first request's ids.",
            "schema": {"type": "string", "maxLength": 255}})],
        json!({
            "201": json_response("Stored.", "IngestResult"),
            "200": json_response("A retry of a request already stored (same Idempotency-Key and body).", "IngestResult"),
            "400": bad_params.clone(),
            "409": error_response("A request with this Idempotency-Key is still being stored."),
            "415": error_response("Content-Type is not application/json."),
            "422": error_response("The Idempotency-Key was used with a different body, or an action starts with audit. (reserved for auditgate's own entries; the field is named as in a 400)."),
            "503": error_response("The store cannot take entries now.")
        }),
    );
    ingest["requestBody"] = json!({
        "required": true,
        "content": {"application/json": {"schema": {"oneOf": [
            schema("Event"),
            {"type": "array", "items": schema("Event"), "minItems": 1, "maxItems": 1000}
        ]}}}
    });
    add("/api/v1/events", "post", ingest);
    add(
        "/api/v1/session",
        "get",
        operation(
            "getSession",
            "Who the caller is. `expiresAt` is null for a bearer token.",
            Access::Authenticated,
            vec![],
            json!({"200": json_response("The caller.", "Session")}),
        ),
    );
    add(
        "/api/v1/session",
        "delete",
        operation(
            "deleteSession",
            "Sign out: forget the session and clear the cookie.",
            Access::Authenticated,
            vec![],
            json!({"204": {"description": "Signed out."}}),
        ),
    );

    let mut list_params = filters();
    list_params.extend(["limit", "cursor", "order", "count"].map(param));
    add("/api/v1/entries", "get", operation("listEntries",
        "Entries matching every given filter, one keyset page at a time, newest first by default.",
        read, list_params,
        json!({"200": json_response("One page.", "EntryPage"), "400": bad_params.clone()})));
    add(
        "/api/v1/entries/{id}",
        "get",
        operation(
            "getEntry",
            "One entry by id (ULID) or sequence number.",
            read,
            vec![param("id")],
            json!({"200": json_response("The entry.", "Entry"), "404": error_response("No such entry.")}),
        ),
    );
    add(
        "/api/v1/entries/{id}/proof",
        "get",
        operation(
            "getEntryProof",
            "The entry's Merkle inclusion proof against the latest signed tree head.",
            read,
            vec![param("id")],
            json!({
                "200": json_response("The proof.", "InclusionProof"),
                "404": error_response("No such entry."),
                "409": error_response("No signed tree head covers the entry yet (the next one will), or the entry belongs to another sidecar's log.")
            }),
        ),
    );

    add(
        "/api/v1/entries/{id}/tlog-proof",
        "get",
        operation(
            "getEntryTlogProof",
            "The entry's offline proof in the C2SP tlog-proof form (c2sp.org/tlog-proof): `extra` is the base64 of the entry's canonical bytes (the leaf is SHA-256 of 0x00 and those bytes), `index` its leaf index (seq - 1), the inclusion proof, and the log's latest signed checkpoint. `auditgate verify-proof FILE --vkey VKEY` checks it offline, as does any C2SP client with the `vkey` of `/api/v1/log/key`.",
            read,
            vec![param("id")],
            json!({
                "200": {
                    "description": "The proof, as an attachment named entry-<seq>.tlog-proof.",
                    "headers": {"Content-Disposition": {"schema": {"type": "string"}}},
                    "content": {"text/plain": {"schema": {"type": "string"}}}
                },
                "404": error_response("No such entry."),
                "409": error_response("No signing key is configured, no signed tree head covers the entry yet (the next one will), the latest head does not verify under the running key, or the entry belongs to another sidecar's log."),
                "410": error_response("The entry was pruned by retention: its content is gone (its leaf is still proved by /proof).")
            }),
        ),
    );

    let mut stats_params = filters();
    stats_params.extend([param("by"), param("statsLimit")]);
    add(
        "/api/v1/stats",
        "get",
        operation(
            "stats",
            "Counts of the matching entries grouped by action, actor, day, hour or outcome.",
            read,
            stats_params,
            json!({"200": json_response("The buckets.", "Stats"), "400": bad_params.clone()}),
        ),
    );

    add(
        "/api/v1/coverage",
        "get",
        operation(
            "coverage",
            "The route templates learned from traffic ([discover] enabled = true), busiest first, each method with the rule that covers it, or the generic fallback, or nothing; with a draft rule where no rule covers it.",
            read,
            vec![],
            json!({"200": json_response("The learned routes.", "Coverage")}),
        ),
    );

    let mut export_params = vec![param("format"), param("proofs")];
    export_params.extend(filters());
    export_params.extend([param("cursor"), param("order")]);
    add("/api/v1/export", "get", operation("export",
        "Every matching entry as a streamed download (a snapshot of the log when the export began).",
        export, export_params,
        json!({
            "200": {
                "description": "The file, as an attachment named auditgate-export-<UTC time>.<format>. CSV (RFC 4180, CRLF, a header row, metadata as JSON in one column, cells starting with = + - @ tab or CR prefixed with ') or JSON (one array) or NDJSON (one entry per line) or OCSF (NDJSON of OCSF 1.3.0 API Activity events, class_uid 6003, one per entry; served as application/x-ndjson). With proofs=true, NDJSON whose entry lines also carry leafHash, leafIndex and auditPath, oldest first, and whose last line is {\"treeHead\": <the signed head>, \"entries\": <count>}: `auditgate verify-export FILE --key PUBKEY` checks it without the database.",
                "headers": {"Content-Disposition": {"schema": {"type": "string"}}},
                "content": {
                    "text/csv": {"schema": {"type": "string"}, "example": CSV_COLUMNS.join(",")},
                    "application/json": {"schema": {"type": "array", "items": schema("Entry")}},
                    "application/x-ndjson": {"schema": {"type": "string"}}
                }
            },
            "400": bad_params.clone(),
            "409": error_response("proofs=true, but the log has no signed tree head yet (no [log] signing_key, or none signed so far).")
        })));

    add(
        "/api/v1/log/head",
        "get",
        operation(
            "logHead",
            "The latest signed tree head.",
            read,
            vec![],
            json!({"200": json_response("The head.", "SignedTreeHead"), "404": error_response("No signed tree head yet.")}),
        ),
    );
    add(
        "/api/v1/log/checkpoint",
        "get",
        operation(
            "logCheckpoint",
            "The latest signed tree head as a C2SP checkpoint: a signed note (c2sp.org/signed-note) whose text is the origin, the tree size and the base64 root hash (c2sp.org/tlog-checkpoint), signed with the log's Ed25519 key; the `vkey` of `/api/v1/log/key` verifies it. The witnesses' cosignatures of the same checkpoint (c2sp.org/tlog-cosignature, `[[log.witnesses]]`) follow as further signature lines.",
            read,
            vec![],
            json!({
                "200": {"description": "The checkpoint.", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "404": error_response("No signing key is configured, or no signed tree head yet."),
                "409": error_response("The latest stored head does not verify under the running key (signed by a key since rotated, or altered).")
            }),
        ),
    );
    add(
        "/api/v1/log/key",
        "get",
        operation(
            "logKey",
            "The public key that signs tree heads.",
            read,
            vec![],
            json!({"200": json_response("The key.", "LogKey"), "404": error_response("No signing key is configured.")}),
        ),
    );
    add(
        "/api/v1/log/consistency",
        "get",
        operation(
            "logConsistency",
            "A consistency proof between two tree sizes.",
            read,
            vec![param("from"), param("to")],
            json!({"200": json_response("The proof.", "ConsistencyProof"), "400": bad_params.clone()}),
        ),
    );
    add("/api/v1/verify", "get", operation("verify",
        "Recompute the Merkle tree over the stored entries and compare it with the signed heads.",
        read, vec![], json!({"200": json_response("The result.", "Verification")})));

    add("/api/audit-log", "get", operation("referenceAuditLog",
        "The reference product's endpoint: 50 entries a page, newest first, `action` as a case-insensitive substring. Other parameters are ignored.",
        read, vec![param("page"), param("referenceAction")],
        json!({"200": json_response("One page and the total.", "AuditLogPage"), "400": bad_params})));

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "auditgate admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Query, export and verify the audit log kept by an auditgate sidecar. Served on the admin listener only, never on the proxy port. Authenticate with `Authorization: Bearer <token>` (configured as a SHA-256 hash with scopes) or a viewer session cookie. Every query and export is itself recorded (`audit.query`, `audit.export`)."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                    "description": "An admin token from `auditgate token`; scopes `read`, `export`."},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "auditgate_session",
                    "description": "Set by POST /api/v1/session. Changes (POST, DELETE) must be same-origin."}
            },
            "parameters": parameters(),
            "schemas": schemas()
        }
    })
}

fn parameters() -> Value {
    json!({
        "actor": string_param("actor", "Actor id or email, exactly."),
        "action": string_param("action", "Action, exactly."),
        "action_prefix": string_param("action_prefix", "Start of the action, case-sensitive (`user.`)."),
        "exclude_action_prefix": {"name": "exclude_action_prefix", "in": "query", "required": false,
            "description": "Leave out entries whose action starts with this, case-sensitive; repeat the parameter for several (at most 16 distinct). `audit.` hides auditgate's own entries (admin queries, exports, sign-ins, prunes).",
            "style": "form", "explode": true,
            "schema": {"type": "array", "maxItems": 16, "uniqueItems": true,
                "items": {"type": "string", "minLength": 1, "maxLength": 1024}}},
        "resource_type": string_param("resource_type", "Resource type, exactly."),
        "resource_id": string_param("resource_id", "Resource id, exactly."),
        "outcome": {"name": "outcome", "in": "query", "required": false,
            "schema": {"type": "string", "enum": ["success", "failure", "error", "unknown"]}},
        "status": {"name": "status", "in": "query", "required": false,
            "description": "A status (`404`) or class (`4xx`).",
            "schema": {"type": "string", "pattern": "^([1-5][0-9][0-9]|[1-5][xX][xX])$"}},
        "ip": string_param("ip", "Client address, or a CIDR network (`10.0.0.0/8`)."),
        "since": string_param("since", "At or after: RFC 3339, a date (`2026-01-01`, UTC midnight), or a duration back from now (`15m`, `24h`, `7d`, `2w`)."),
        "until": string_param("until", "Before (exclusive), in the same forms as `since`."),
        "q": string_param("q", "Free text: a case-insensitive substring of actor id or email, action, resource type or id, or path."),
        "log_id": string_param("log_id", "One log, when several sidecars share a database."),
        "limit": {"name": "limit", "in": "query", "required": false,
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}},
        "cursor": {"name": "cursor", "in": "query", "required": false,
            "description": "Opaque position from `nextCursor` or `prevCursor`; stable while entries are written.",
            "schema": {"type": "string", "maxLength": 64}},
        "order": {"name": "order", "in": "query", "required": false,
            "schema": {"type": "string", "enum": ["desc", "asc"], "default": "desc"}},
        "count": {"name": "count", "in": "query", "required": false,
            "description": "Also return `total`, the number of matching entries.",
            "schema": {"type": "boolean", "default": false}},
        "format": {"name": "format", "in": "query", "required": true,
            "schema": {"type": "string", "enum": ["csv", "json", "ndjson", "ocsf"]}},
        "proofs": {"name": "proofs", "in": "query", "required": false,
            "description": "Each entry with its inclusion proof against the latest signed head, which ends the file (format=ndjson only; not with cursor or order=desc: the file holds every matching entry the head covers, oldest first).",
            "schema": {"type": "boolean", "default": false}},
        "by": {"name": "by", "in": "query", "required": false,
            "schema": {"type": "string", "enum": ["action", "actor", "day", "hour", "outcome"], "default": "day"}},
        "statsLimit": {"name": "limit", "in": "query", "required": false,
            "description": "Most buckets. Action, actor and outcome buckets come largest first; day and hour buckets in time order, the most recent kept.",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1000}},
        "page": {"name": "page", "in": "query", "required": false,
            "description": "The page, from 1; empty means 1, as the reference's `?page=&action=` sends it.",
            "schema": {"anyOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "maxLength": 0}
            ], "default": 1}},
        "referenceAction": string_param("action", "A substring of the action, case-insensitive."),
        "id": {"name": "id", "in": "path", "required": true,
            "description": "The entry's id (ULID) or its sequence number.",
            "schema": {"type": "string"}},
        "from": {"name": "from", "in": "query", "required": true,
            "description": "The older tree size (0, the empty tree, is consistent with every tree).",
            "schema": {"type": "integer", "minimum": 0}},
        "to": {"name": "to", "in": "query", "required": false,
            "description": "The newer tree size; the latest signed head's size when left out.",
            "schema": {"type": "integer", "minimum": 0}}
    })
}

fn nullable(kind: &str) -> Value {
    json!({"type": [kind, "null"]})
}

fn schemas() -> Value {
    let hex = json!({"type": "string", "pattern": "^[0-9a-f]{64}$"});
    let head = json!({
        "type": "object",
        "required": ["logId", "size", "rootHash", "timestamp", "keyId", "signature"],
        "properties": {
            "logId": {"type": "string"},
            "size": {"type": "integer", "minimum": 0},
            "rootHash": hex,
            "timestamp": {"type": "string", "format": "date-time"},
            "keyId": {"type": "string"},
            "signature": {"type": "string"}
        }
    });
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "param": {"type": "string", "description": "The first invalid parameter."},
                "errors": {"type": "array", "items": {
                    "type": "object", "required": ["param", "message"],
                    "properties": {"param": {"type": "string"}, "message": {"type": "string"}}}},
                "scope": {"type": "string", "description": "The missing scope (403)."}
            }
        },
        "Entry": {
            "type": "object",
            "required": ["id", "seq", "createdAt", "logId", "action", "outcome", "actorVerified", "metadata"],
            "properties": {
                "id": {"type": "string", "description": "ULID."},
                "seq": {"type": "integer", "minimum": 1, "description": "Position in the log."},
                "createdAt": {"type": "string", "format": "date-time"},
                "logId": {"type": "string"},
                "actorId": nullable("string"),
                "actorEmail": nullable("string"),
                "actorName": nullable("string"),
                "actorSource": nullable("string"),
                "actorVerified": {"type": "boolean"},
                "tenant": nullable("string"),
                "action": {"type": "string"},
                "resourceType": nullable("string"),
                "resourceId": nullable("string"),
                "outcome": {"type": "string", "enum": ["success", "failure", "error", "unknown"]},
                "status": nullable("integer"),
                "method": nullable("string"),
                "path": nullable("string"),
                "route": nullable("string"),
                "rule": nullable("string"),
                "ip": nullable("string"),
                "userAgent": nullable("string"),
                "requestId": nullable("string"),
                "durationUs": nullable("integer"),
                "durationMs": nullable("number"),
                "error": nullable("string"),
                "metadata": {"type": "object"}
            }
        },
        "EntryPage": {
            "type": "object",
            "required": ["entries", "nextCursor", "prevCursor"],
            "properties": {
                "entries": {"type": "array", "items": schema("Entry")},
                "nextCursor": {"type": ["string", "null"], "description": "Continue in the same order; null at the end."},
                "prevCursor": {"type": ["string", "null"], "description": "The first entry's position: reverse `order` and pass it to walk back (or poll for newer entries)."},
                "total": {"type": "integer", "description": "Only with count=true."}
            }
        },
        "Stats": {
            "type": "object",
            "required": ["by", "buckets", "total"],
            "properties": {
                "by": {"type": "string"},
                "buckets": {"type": "array", "items": {
                    "type": "object", "required": ["key", "count"],
                    "properties": {"key": {"type": "string"}, "count": {"type": "integer"}}}},
                "total": {"type": "integer", "description": "All matching entries, not only those in the returned buckets."}
            }
        },
        "Coverage": {
            "type": "object",
            "required": ["enabled", "routes", "unlearned", "unmatchedMutations", "limits"],
            "properties": {
                "enabled": {"type": "boolean", "description": "Whether [discover] is on; off, routes is empty."},
                "unlearned": {"type": "integer", "description": "Exchanges not learned because the template cap was reached."},
                "unmatchedMutations": {"type": "integer", "description": "Mutations only the generic fallback recorded since start."},
                "limits": {"type": "object", "properties": {
                    "maxTemplates": {"type": "integer"},
                    "maxValuesPerSegment": {"type": "integer"},
                    "maxDepth": {"type": "integer"}}},
                "routes": {"type": "array", "items": {
                    "type": "object", "required": ["template", "count", "methods"],
                    "properties": {
                        "template": {"type": "string", "description": "Route template: {id}, {id2} where ids were seen."},
                        "sample": nullable("string"),
                        "count": {"type": "integer"},
                        "methods": {"type": "array", "items": {
                            "type": "object",
                            "required": ["method", "count", "statusClasses", "firstSeen", "lastSeen", "fallbackCount", "coverage"],
                            "properties": {
                                "method": {"type": "string"},
                                "count": {"type": "integer"},
                                "statusClasses": {"type": "object", "additionalProperties": {"type": "integer"}},
                                "firstSeen": {"type": "string", "format": "date-time"},
                                "lastSeen": {"type": "string", "format": "date-time"},
                                "fallbackCount": {"type": "integer"},
                                "coverage": {"type": "string", "enum": ["rule", "skipped", "fallback", "not_recorded"]},
                                "rule": nullable("string"),
                                "draftRule": {"type": ["string", "null"], "description": "A [[rule]] to append to the configuration, where no rule covers the route."}
                            }}}
                    }}}
            }
        },
        "Session": {
            "type": "object",
            "required": ["name", "scopes", "expiresAt"],
            "properties": {
                "name": {"type": "string"},
                "scopes": {"type": "array", "items": {"type": "string", "enum": ["read", "export", "write"]}},
                "expiresAt": {"type": ["string", "null"], "format": "date-time"}
            }
        },
        "Event": {
            "type": "object",
            "additionalProperties": false,
            "required": ["action"],
            "properties": {
                "actorId": {"type": "string", "maxLength": 512},
                "actorEmail": {"type": "string", "maxLength": 512},
                "action": {"type": "string", "maxLength": 128, "pattern": "^[A-Za-z0-9._:/-]+$"},
                "resourceType": {"type": ["string", "null"], "maxLength": 512},
                "resourceId": {"type": ["string", "null"], "maxLength": 512},
                "metadata": {"type": ["object", "null"]},
                "ip": {"type": ["string", "null"]},
                "userAgent": {"type": ["string", "null"], "maxLength": 2048}
            }
        },
        "IngestResult": {
            "type": "object",
            "required": ["ids", "count", "replayed"],
            "properties": {
                "ids": {"type": "array", "items": {"type": "string"}},
                "count": {"type": "integer"},
                "replayed": {"type": "boolean"}
            }
        },
        "SignIn": {
            "type": "object",
            "required": ["token"],
            "properties": {"token": {"type": "string"}}
        },
        "AuditLogPage": {
            "type": "object",
            "required": ["logs", "total"],
            "properties": {
                "logs": {"type": "array", "items": schema("Entry"),
                    "description": "As Entry, except that actorId and actorEmail are \"\" rather than null."},
                "total": {"type": "integer"}
            }
        },
        "SignedTreeHead": head,
        "LogKey": {
            "type": "object",
            "required": ["algorithm", "keyId", "publicKeyPem", "origin", "vkey"],
            "properties": {
                "keyId": {"type": "string"},
                "algorithm": {"type": "string", "enum": ["Ed25519"]},
                "publicKeyPem": {"type": "string", "description": "The Ed25519 public key, SPKI PEM."},
                "origin": {"type": "string", "description": "The origin of the log's checkpoints (their first line and key name)."},
                "vkey": {"type": "string", "description": "The C2SP signed-note verifier key that verifies the checkpoints: origin+keyID+base64(0x01 || public key)."}
            }
        },
        "InclusionProof": {
            "type": "object",
            "required": ["seq", "leafIndex", "leafHash", "treeSize", "auditPath", "head"],
            "properties": {
                "seq": {"type": "integer"},
                "leafIndex": {"type": "integer", "minimum": 0},
                "leafHash": hex,
                "treeSize": {"type": "integer"},
                "auditPath": {"type": "array", "items": hex},
                "head": schema("SignedTreeHead")
            }
        },
        "ConsistencyProof": {
            "type": "object",
            "required": ["from", "to", "proof"],
            "properties": {
                "from": {"type": "integer"},
                "to": {"type": "integer"},
                "proof": {"type": "array", "items": hex}
            }
        },
        "Verification": {
            "type": "object",
            "required": ["ok", "size", "checkedAt", "firstBadSeq", "problem"],
            "properties": {
                "ok": {"type": "boolean"},
                "size": {"type": "integer"},
                "checkedAt": {"type": "string", "format": "date-time"},
                "firstBadSeq": nullable("integer"),
                "problem": nullable("string")
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::admin::route_specs;
    use crate::entry::AuditEntry;

    /// Documented routes that `log_api.rs` (tamper evidence) will serve once merged. They are
    /// allowed to be missing from the router, and only they; when they are mounted this test says
    /// so, and the allowance goes: replace the list with `&[]`.
    const AWAITING_LOG_API: &[(&str, &str)] = &[];

    fn documented() -> BTreeSet<(String, String)> {
        let mut operations = BTreeSet::new();
        for (path, item) in document()["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
        operations
    }

    fn served() -> BTreeSet<(String, String)> {
        route_specs()
            .into_iter()
            .map(|spec| (spec.method.as_str().to_string(), spec.path.to_string()))
            .collect()
    }

    #[test]
    fn every_served_route_is_documented_and_every_documented_one_is_served() {
        let documented = documented();
        let served = served();
        let awaiting: BTreeSet<(String, String)> = AWAITING_LOG_API
            .iter()
            .map(|(method, path)| (method.to_string(), path.to_string()))
            .collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "served but not in openapi.rs: {undocumented:?}"
        );
        let now_mounted: Vec<_> = served.intersection(&awaiting).collect();
        assert!(
            now_mounted.is_empty(),
            "{now_mounted:?} are mounted now: remove them from AWAITING_LOG_API"
        );
        let unserved: Vec<_> = documented
            .difference(&served)
            .filter(|operation| !awaiting.contains(*operation))
            .collect();
        assert!(
            unserved.is_empty(),
            "documented but not served: {unserved:?}"
        );
        assert_eq!(served.len(), route_specs().len(), "a route is listed twice");
    }

    #[test]
    fn documented_security_matches_each_routes_access() {
        for spec in route_specs() {
            let operation = &document()["paths"][spec.path][spec.method.as_str().to_lowercase()];
            assert_eq!(
                operation["security"],
                security(spec.access),
                "{} {}",
                spec.method.as_str(),
                spec.path
            );
            if spec.access != Access::Public {
                assert!(
                    operation["responses"].get("401").is_some(),
                    "{} does not document its 401",
                    spec.path
                );
            }
        }
        // Everything under /api/ is protected, except the document itself and signing in.
        for spec in route_specs() {
            let public_api = spec.path.starts_with("/api/") && spec.access == Access::Public;
            assert_eq!(
                public_api,
                matches!(
                    (spec.method.as_str(), spec.path),
                    ("GET", "/api/v1/openapi.json") | ("POST", "/api/v1/session")
                ),
                "{} {}",
                spec.method.as_str(),
                spec.path
            );
        }
    }

    fn collect_refs(value: &Value, refs: &mut Vec<String>) {
        match value {
            Value::Object(object) => {
                for (key, child) in object {
                    match (key.as_str(), child) {
                        ("$ref", Value::String(target)) => refs.push(target.clone()),
                        _ => collect_refs(child, refs),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| collect_refs(item, refs)),
            _ => {}
        }
    }

    #[test]
    fn the_document_is_well_formed() {
        let document = document();
        assert_eq!(document["openapi"], "3.1.0");
        let mut refs = Vec::new();
        collect_refs(document, &mut refs);
        assert!(refs.len() > 20);
        for target in refs {
            let pointer = target.strip_prefix('#').expect("local reference");
            assert!(
                document.pointer(pointer).is_some(),
                "{target} does not resolve"
            );
        }
        let mut operation_ids = BTreeSet::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for operation in item.as_object().expect("item").values() {
                assert!(operation_ids.insert(operation["operationId"].to_string()));
                let declared: Vec<String> = operation["parameters"]
                    .as_array()
                    .expect("parameters")
                    .iter()
                    .map(|parameter| {
                        let pointer = parameter["$ref"]
                            .as_str()
                            .unwrap_or("")
                            .trim_start_matches('#');
                        document.pointer(pointer).unwrap_or(parameter).clone()
                    })
                    .filter(|parameter| parameter["in"] == "path")
                    .map(|parameter| parameter["name"].as_str().unwrap_or("").to_string())
                    .collect();
                let in_template: Vec<String> = path
                    .split('/')
                    .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
                    .map(str::to_string)
                    .collect();
                assert_eq!(declared, in_template, "{path}");
            }
        }
    }

    #[test]
    fn the_listing_documents_exactly_the_parameters_the_parser_knows() {
        let document = document();
        let documented: BTreeSet<String> = document["paths"]["/api/v1/entries"]["get"]
            ["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .map(|parameter| {
                let pointer = parameter["$ref"]
                    .as_str()
                    .unwrap_or("")
                    .trim_start_matches('#');
                let resolved = document.pointer(pointer).unwrap_or(parameter);
                resolved["name"].as_str().unwrap_or("").to_string()
            })
            .collect();
        let known: BTreeSet<String> = crate::store::query::FILTER_PARAMS
            .iter()
            .chain(crate::store::query::PAGE_PARAMS)
            .map(|name| name.to_string())
            .collect();
        assert_eq!(documented, known);
        // The repeatable ones are arrays, sent as `name=a&name=b`.
        for name in crate::store::query::REPEATABLE_PARAMS {
            let parameter = &document["components"]["parameters"][*name];
            assert_eq!(parameter["schema"]["type"], "array", "{name}");
            assert_eq!(parameter["explode"], true, "{name}");
        }
    }

    #[test]
    fn the_entry_schema_lists_exactly_the_api_fields() {
        let documented: BTreeSet<String> = document()["components"]["schemas"]["Entry"]
            ["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .cloned()
            .collect();
        let served: BTreeSet<String> = AuditEntry::new("log", "x")
            .to_api_json()
            .as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect();
        assert_eq!(documented, served);
    }
}
