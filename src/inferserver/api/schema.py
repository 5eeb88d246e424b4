"""The OpenAPI schema as the server really answers: request validation errors are a 400 in the envelope."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi


def install_schema(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes,
            )
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                # FastAPI documents a 422 with its own body; our handler answers those as 400 in the envelope.
                if operation.get("responses", {}).pop("422", None) is not None:
                    operation["responses"].setdefault("400", {"description": "Bad request", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}})
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
