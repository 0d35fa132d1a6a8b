"""Endpoints declared once: the router, the request validation and the OpenAPI document all
come from the same declarations, so the document always matches what is served.

Schemas are plain JSON Schema dicts (the subset OpenAPI 3.1 shares with it).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api.context import Context

Handler = Callable[[Context], Awaitable[Response]]
VERSION = version("disco")  # the package's own, from pyproject.toml


class ApiError(Exception):
    """Becomes `{"error": {"code": ..., "message": ...}}` with its HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # under /api/v1, with {name} parameters
    summary: str
    handler: Handler
    tag: str
    body: dict | None  # JSON Schema of the request body
    query: dict[str, dict]  # name -> schema
    responses: dict[int, dict | str]  # status -> schema, or a media type
    admin_only: bool
    path_params: dict[str, dict]  # name -> schema, for each {name} in the path

    @property
    def path_names(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


class EndpointList:
    """The API's endpoints, each declared beside its handler, handed to build_app as a list.

    `path_params` gives the schema of a path parameter wherever it appears (a project name,
    a deployment number); the dispatcher validates and converts it there and nowhere else.
    """

    def __init__(self, path_params: dict[str, dict]) -> None:
        self.path_params = path_params
        self.endpoints: list[Endpoint] = []

    def declare(self, method: str, path: str, summary: str, *, tag: str, body: dict | None = None,
                query: dict[str, dict] | None = None, responses: dict[int, dict | str] | None = None,
                admin_only: bool = False) -> Callable[[Handler], Handler]:
        def add(handler: Handler) -> Handler:
            names = re.findall(r"{(\w+)}", path)
            self.endpoints.append(Endpoint(method, path, summary, handler, tag, body, query or {},
                                           responses or {200: OBJECT}, admin_only,
                                           {n: self.path_params.get(n, STRING) for n in names}))
            return handler
        return add


# -- schema helpers -------------------------------------------------------------------------

OBJECT: dict = {"type": "object"}
STRING: dict = {"type": "string"}
BOOLEAN: dict = {"type": "boolean"}


MAX_INT = 2**63 - 1  # SQLite's INTEGER: a larger one raises OverflowError on any store read


def integer(minimum: int | None = None, maximum: int = MAX_INT) -> dict:
    """An integer schema; every one has a maximum, so no input reaches the store out of range."""
    schema: dict = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    schema["maximum"] = maximum
    return schema


def obj(required: list[str] | None = None, **properties: dict) -> dict:
    schema: dict = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def array(items: dict) -> dict:
    return {"type": "array", "items": items}


def nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


ERROR = obj(["error"], error=obj(["code", "message"], code=STRING, message=STRING))

# -- validation -----------------------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "integer": (int,), "boolean": (bool,),
    "number": (int, float), "null": (type(None),),
}


def validate(value: Any, schema: dict, where: str = "body") -> None:
    """Check `value` against the JSON Schema subset used here; raise a 400 naming the field."""
    if "anyOf" in schema:
        for option in schema["anyOf"]:
            try:
                validate(value, option, where)
                return
            except ApiError:
                continue
        raise bad_request(f"{where} has the wrong type")
    kind = schema.get("type")
    if kind:
        allowed = _TYPES[kind]
        if not isinstance(value, allowed) or (kind in ("integer", "number") and isinstance(value, bool)):
            raise bad_request(f"{where} must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}")
    if "enum" in schema and value not in schema["enum"]:
        raise bad_request(f"{where} must be one of {', '.join(map(str, schema['enum']))}")
    # Counts first: a body of 200 000 small items is refused before any of them is looked at.
    if kind == "object" and "maxProperties" in schema and len(value) > schema["maxProperties"]:
        raise bad_request(f"{where} has more than {schema['maxProperties']} entries")
    if kind == "array" and "maxItems" in schema and len(value) > schema["maxItems"]:
        raise bad_request(f"{where} has more than {schema['maxItems']} items")
    if kind == "object":
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                raise bad_request(f"{where}.{name} is required")
        for name, item in value.items():
            if name in properties:
                validate(item, properties[name], f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                raise bad_request(f"{where}.{name} is not a known field; known: {', '.join(sorted(properties)) or 'none'}")
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(item, schema["additionalProperties"], f"{where}.{name}")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            raise bad_request(f"{where} has more than {schema['maxProperties']} entries")
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            raise bad_request(f"{where} needs at least {schema['minProperties']} entry")
    if kind == "array":
        for index, item in enumerate(value):
            validate(item, schema["items"], f"{where}[{index}]")
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise bad_request(f"{where} needs at least {schema['minItems']} item(s)")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise bad_request(f"{where} has more than {schema['maxItems']} items")
    if kind == "string":
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise bad_request(f"{where} is longer than {schema['maxLength']} characters")
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise bad_request(f"{where} is shorter than {schema['minLength']} characters")
        if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
            rule = schema.get("description") or f"it must match {schema['pattern']}"
            raise bad_request(f"{where} {value[:80]!r} is invalid: {rule}")
    if kind == "integer":
        if "minimum" in schema and value < schema["minimum"]:
            raise bad_request(f"{where} must be at least {schema['minimum']}")
        # Beyond what SQLite stores, whatever the schema says (it always says less).
        if value > schema.get("maximum", MAX_INT):
            raise bad_request(f"{where} must be at most {schema.get('maximum', MAX_INT)}")
        if value < -MAX_INT - 1:
            raise bad_request(f"{where} must be at least {-MAX_INT - 1}")


def query_params(request: Request, declared: dict[str, dict]) -> dict[str, Any]:
    """Declared query parameters, converted and validated; unknown ones are refused."""
    if not request.scope.get("query_string"):  # most requests: nothing to parse
        return {}
    values: dict[str, Any] = {}
    for name, raw in request.query_params.multi_items():
        if name not in declared:
            raise bad_request(f"unknown query parameter {name!r}; known: {', '.join(sorted(declared)) or 'none'}")
        schema = declared[name]
        if schema.get("type") == "integer":
            value: Any = _integer(raw, f"query parameter {name}", schema)
        elif schema.get("type") == "boolean":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise bad_request(f"query parameter {name} must be true or false")
            value = raw.lower() in ("true", "1")
        else:
            value = raw
        validate(value, schema, f"query parameter {name}")
        values[name] = value
    return values


# -- the OpenAPI document --------------------------------------------------------------------

def openapi_document(endpoints: list[Endpoint]) -> dict:
    paths: dict[str, dict] = {}
    for ep in endpoints:
        operation: dict = {
            "summary": ep.summary,
            "tags": [ep.tag],
            "operationId": f"{ep.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', ep.path.lower()).strip('_')}",
            "responses": {},
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": schema}
            for name, schema in ep.path_params.items()
        ] + [{"name": name, "in": "query", "required": False, "schema": schema} for name, schema in ep.query.items()]
        if parameters:
            operation["parameters"] = parameters
        if ep.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ep.body}}}
        for status, schema in ep.responses.items():
            if isinstance(schema, str):
                operation["responses"][str(status)] = {"description": "stream", "content": {schema: {"schema": STRING}}}
            else:
                operation["responses"][str(status)] = {"description": "success",
                                                       "content": {"application/json": {"schema": schema}}}
        # 422: a disco.toml that cannot deploy; 429: too many streams open (logs, output, run)
        errors = [400, 401, 403, 404, 409, 413, 422, 429, 503]  # 503: Docker is not reachable
        for status in errors:
            operation["responses"].setdefault(str(status), {"description": "error",
                                                            "content": {"application/json": {"schema": ERROR}}})
        operation["security"] = [{"bearer": []}, {"basic": []}]
        paths.setdefault(f"/api/v1{ep.path}", {})[ep.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Disco API", "version": VERSION},
        "paths": paths,
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "basic": {"type": "http", "scheme": "basic"},
        }},
    }


def path_params(request: Request, declared: dict[str, dict]) -> dict[str, Any]:
    """The path's parameters, validated against their schemas; integers converted."""
    values: dict[str, Any] = {}
    for name, raw in request.path_params.items():
        schema = declared.get(name, STRING)
        value: Any = raw
        if schema.get("type") == "integer":
            if not raw.isdecimal():
                raise bad_request(f"{name} in the path must be a positive integer, got {raw[:20]!r}")
            value = _integer(raw, f"{name} in the path", schema)
        validate(value, schema, f"{name} in the path")
        values[name] = value
    return values


def _integer(raw: str, where: str, schema: dict) -> int:
    """`raw` as an int; more digits than any allowed value has is out of range, not a 500."""
    text = raw.strip()
    digits = text.lstrip("+-")
    if digits.isdecimal() and len(digits.lstrip("0")) > 19:  # past 2**63, and maybe past int()'s 4300 digits
        if text.startswith("-"):
            raise bad_request(f"{where} must be at least {schema.get('minimum', -MAX_INT - 1)}")
        raise bad_request(f"{where} must be at most {schema.get('maximum', MAX_INT)}")
    try:
        return int(text)
    except ValueError:
        raise bad_request(f"{where} must be an integer") from None
