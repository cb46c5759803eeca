"""Reading request bodies: bounded in size, JSON or multipart, each problem a one-sentence 4xx.

Endpoints that take an image accept two encodings, which FastAPI cannot declare for one route from its
parameters; they read the body here and declare both in the OpenAPI schema with :func:`image_request_body`.
JSON-only endpoints read theirs here too, because FastAPI answers a body it cannot decode with a generic 400.
"""
from __future__ import annotations

import json

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

from vlp.serve.images import decode_base64
from vlp.serve.limits import RequestError

JSON, MULTIPART = "application/json", "multipart/form-data"


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413, whether its Content-Length says so up
    front or a chunked upload grows past it. The body is read here, before the app sees it, because FastAPI
    turns any error while it reads a body into a generic 400."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        chunks, received, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_bytes:
                return await self._refuse(scope, receive, send)
            more = message.get("more_body", False)
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, scope, receive, send):
        detail = f"the request body is larger than the limit of {self.max_bytes} bytes"
        await JSONResponse({"detail": detail}, 413)(scope, receive, send)


def _replay(body: bytes, receive):
    """An ASGI ``receive`` that gives ``body`` once, then waits on the real one (for the disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay


async def read_json_request(request: Request, model: type[BaseModel]) -> BaseModel:
    """A JSON body validated by ``model``."""
    if _media_type(request) != JSON:
        raise RequestError(415, f"send {JSON}; got content type {_media_type(request) or 'none'!r}")
    return validate(model, await _read_json(request))


async def read_image_request(request: Request, form_model: type[BaseModel], json_model: type[BaseModel],
                             image_required: bool = True) -> tuple[bytes | None, BaseModel]:
    """(image bytes or None, the other fields) from a multipart form with an ``image`` file, or from JSON with
    a base64 ``image``."""
    media_type = _media_type(request)
    if media_type == MULTIPART:
        data, options = await _read_form(request, form_model)
    elif media_type == JSON:
        options = validate(json_model, await _read_json(request))
        data = None if options.image is None else decode_base64(options.image)
    else:
        raise RequestError(415, f"send {MULTIPART} with an 'image' file, or {JSON} with a base64 'image'; "
                                f"got content type {media_type or 'none'!r}")
    if image_required and data is None:
        raise RequestError(422, "image: required")
    return data, options


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_form(request: Request, model: type[BaseModel]) -> tuple[bytes | None, BaseModel]:
    form = await request.form(max_files=1, max_fields=16)
    upload = form.get("image")
    if upload is not None and not isinstance(upload, UploadFile):
        raise RequestError(422, "image: must be a file in a multipart form (base64 goes in a JSON body)")
    options = validate(model, {key: value for key, value in form.multi_items() if key != "image"})
    return (None if upload is None else await upload.read()), options


async def _read_json(request: Request):
    try:
        return json.loads(await request.body())
    except ValueError:  # also UnicodeDecodeError
        raise RequestError(400, "the request body is not valid JSON") from None


def validate(model: type[BaseModel], data) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RequestError(422, describe_errors(err.errors())) from None


def describe_errors(errors) -> str:
    """pydantic's or FastAPI's list of validation errors -> one sentence naming the first field at fault."""
    first = errors[0]
    if first["type"] == "json_invalid":
        return "the request body is not valid JSON"
    where = ".".join(str(part) for part in first["loc"] if part != "body") or "request body"
    more = len(errors) - 1
    return f"{where}: {first['msg']}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def json_request_body(model: type[BaseModel]) -> dict:
    """``openapi_extra`` for a route that reads its body with :func:`read_json_request`."""
    return {"requestBody": {"required": True, "content": {JSON: {"schema": model.model_json_schema()}}}}


def image_request_body(form_model: type[BaseModel], json_model: type[BaseModel], image_required: bool = True):
    """``openapi_extra`` for a route that reads its body with :func:`read_image_request`."""
    form = form_model.model_json_schema()
    form.setdefault("properties", {})["image"] = {"type": "string", "format": "binary",
                                                  "description": "the image file"}
    if image_required:
        form["required"] = ["image", *form.get("required", [])]
    body = json_request_body(json_model)
    body["requestBody"]["content"][MULTIPART] = {"schema": form}
    return body
