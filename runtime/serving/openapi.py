"""The OpenAPI document of the served application: FastAPI's own routes, plus, for each live model, its inference
routes with request schemas built from the model's input schema in the registry (names, types, categories,
nullability, tensor shapes), so ``/docs`` shows exactly what each model takes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .oip import datatypes, shape_text
from .protocol import Schema
from .scoring import MLFLOW_FORMATS

_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "string": "string", "category": "string",
               "timestamp": "string"}
_ERROR = {"$ref": "#/components/schemas/Error"}
_DATATYPES = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32",
              "FP64", "BF16", "BYTES"]


def _element(dtype: str) -> dict[str, Any]:
    return {"type": "boolean" if dtype == "BOOL" else "integer" if "INT" in dtype else "number"}


def _nested(shape: list[int], item: dict[str, Any]) -> dict[str, Any]:
    for d in reversed(shape):
        item = {"type": "array", "items": item, "minItems": d, "maxItems": d}
    return item


def _value(spec: dict[str, Any]) -> dict[str, Any]:
    """One row's value of an input: a scalar, or a tensor input's nested lists of its declared shape."""
    if spec["type"] == "tensor":
        return {**_nested(list(spec["shape"]), _element(spec["dtype"])),
                "description": f"{spec['dtype']} tensor of shape {list(spec['shape'])}"}
    out: dict[str, Any] = {"type": _JSON_TYPES[spec["type"]]}
    if spec["type"] == "category" and spec.get("categories"):
        out["enum"] = list(spec["categories"])
    if spec["type"] == "timestamp":
        out["format"] = "date-time"
    if spec.get("nullable", True):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def _record(schema: Schema) -> dict[str, Any]:
    return {"type": "object", "properties": {c: _value(s) for c, s in schema.items()}, "required": list(schema),
            "additionalProperties": False}


def _tensor(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    if spec["type"] == "tensor":
        dims = list(spec["shape"])
        shape: dict[str, Any] = {
            "type": "array", "prefixItems": [{"type": "integer", "minimum": 0}, *({"const": d} for d in dims)],
            "minItems": len(dims) + 1, "maxItems": len(dims) + 1, "description": shape_text(dims)}
        data: dict[str, Any] = {"type": "array", "items": {"anyOf": [_element(spec["dtype"]), {"type": "array"}]},
                                "description": "the values of every row, flat or nested, row-major"}
    else:
        shape = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "maxItems": 2}
        data = {"type": "array", "items": _value(spec)}
    return {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"const": name},
            "shape": shape,
            "datatype": {"enum": sorted(datatypes(spec))},
            "data": data,
            "parameters": {"type": "object"},
        },
    }


def _responses(ok: dict[str, Any], *, media: str = "application/json") -> dict[str, Any]:
    return {
        "200": {"description": "Predictions", "content": {media: {"schema": ok}}},
        "default": {"description": "A client error (4xx) or overload (503/429), named",
                    "content": {"application/json": {"schema": _ERROR}}},
    }


def _model_paths(name: str, schema: Schema, classes: list[Any]) -> dict[str, Any]:
    ref = f"#/components/schemas/{name}"
    predict_body = {"oneOf": [
        {"type": "array", "items": {"$ref": f"{ref}.Record"}, "minItems": 1},
        {"type": "object", "required": ["records"], "additionalProperties": False,
         "properties": {"records": {"type": "array", "items": {"$ref": f"{ref}.Record"}, "minItems": 1}}},
        {"type": "object", "required": ["entities"], "additionalProperties": False,
         "properties": {"entities": {"type": "array", "items": {"type": "object"}, "minItems": 1}}},
    ]}
    predict_ok = {"type": "object", "properties": {
        "model": {"type": "string"}, "version": {"type": "integer"},
        "predictions": {"type": "array"}, "probabilities": {"type": "array", "items": {"type": "array"}},
        "classes": {"type": "array", "items": {}, "example": classes}}}
    infer_body = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "minItems": 1, "items": {"oneOf": [{"$ref": f"{ref}.Input.{c}"} for c in schema]}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"enum": ["predicted", "probabilities"]}, "parameters": {"type": "object"}}}},
        "parameters": {"type": "object"}}}
    tag = [f"model: {name}"]
    return {
        f"/predict/{name}": {"post": {
            "tags": tag, "summary": f"Predict {name} from records or entity keys",
            "description": "Records with every input column, or entity keys whose features come from the online "
                           "feature store. Name a version with `" + name + "@<alias>` in the path.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": predict_body}}},
            "responses": _responses(predict_ok)}},
        f"/v2/models/{name}/infer": {"post": {
            "tags": tag, "summary": f"Open Inference Protocol v2 inference on {name}",
            "requestBody": {"required": True, "content": {"application/json": {"schema": infer_body}}},
            "responses": _responses({"$ref": "#/components/schemas/InferResponse"})}},
        f"/models/{name}/invocations": {"post": {
            "tags": tag, "summary": f"MLflow scoring protocol on {name}",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": f"{ref}.Scoring"}},
                "text/csv": {"schema": {"type": "string"}}}},
            "responses": _responses({"$ref": "#/components/schemas/ScoringResponse"})}},
    }


def _model_schemas(name: str, schema: Schema) -> dict[str, Any]:
    record = _record(schema)
    out = {f"{name}.Record": record}
    for c, spec in schema.items():
        out[f"{name}.Input.{c}"] = _tensor(c, spec)
    ref = f"#/components/schemas/{name}.Record"
    out[f"{name}.Scoring"] = {"oneOf": [
        {"type": "object", "required": ["dataframe_split"], "additionalProperties": False, "properties": {
            "dataframe_split": {"type": "object", "required": ["columns", "data"], "properties": {
                "columns": {"type": "array", "items": {"enum": list(schema)}},
                "data": {"type": "array", "items": {"type": "array"}}}}}},
        {"type": "object", "required": ["dataframe_records"], "additionalProperties": False,
         "properties": {"dataframe_records": {"type": "array", "items": {"$ref": ref}, "minItems": 1}}},
        {"type": "object", "required": ["instances"], "additionalProperties": False,
         "properties": {"instances": {"type": "array", "items": {"$ref": ref}, "minItems": 1}}},
        {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {"inputs": {
            "type": "object", "properties": {c: {"type": "array", "items": _value(s)} for c, s in schema.items()}}}},
    ]}
    return out


_COMMON_SCHEMAS = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name", "datatype", "shape"]}}}},
    "ScoringResponse": {"type": "object", "required": ["predictions"],
                        "properties": {"predictions": {"type": "array"}}},
    "GenericInfer": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["name", "shape", "datatype"],
                                                          "properties": {"name": {"type": "string"},
                                                                         "datatype": {"enum": _DATATYPES},
                                                                         "shape": {"type": "array"},
                                                                         "data": {"type": "array"}}}},
        "outputs": {"type": "array"}}},
    "GenericScoring": {"type": "object", "description": "One of: " + ", ".join(MLFLOW_FORMATS)},
}


def _generic_paths() -> dict[str, Any]:
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "Model name, or name@alias"}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    infer = {"tags": ["Open Inference Protocol v2"], "parameters": [name],
             "requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/GenericInfer"}}}},
             "responses": _responses({"$ref": "#/components/schemas/InferResponse"})}
    return {
        f"/v2/models/{{name}}/infer": {"post": {**infer, "summary": "Inference (any served model)"}},
        f"/v2/models/{{name}}/versions/{{version}}/infer": {"post": {
            **infer, "parameters": [name, version], "summary": "Inference on one live version"}},
        f"/invocations": {"post": {
            "tags": ["MLflow scoring"], "summary": "MLflow scoring protocol on the project's model",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/GenericScoring"}},
                "text/csv": {"schema": {"type": "string"}}}},
            "responses": _responses({"$ref": "#/components/schemas/ScoringResponse"})}},
    }


def build_openapi(base: dict[str, Any], models: Iterable[tuple[str, Schema, list[Any]]]) -> dict[str, Any]:
    """``base`` (FastAPI's document of its own routes) plus the inference routes of every model."""
    doc = {**base, "paths": dict(base.get("paths", {}))}
    components = dict(doc.get("components", {}))
    schemas = {**components.get("schemas", {}), **_COMMON_SCHEMAS}
    doc["paths"].update(_generic_paths())
    for name, schema, classes in models:
        doc["paths"].update(_model_paths(name, schema, classes))
        schemas.update(_model_schemas(name, schema))
    components["schemas"] = schemas
    doc["components"] = components
    return doc
