"""Request bodies read within limits. `/v1/predict` takes one image: a raw body with an image
content type, or the multipart field `file`. `/v1/predict/batch` takes several: multipart
fields named `file` (repeated, in order), or JSON `{"images": [base64, ...]}`. Sizes are checked
from Content-Length before a body is read, and while it streams when none is declared; a batch's
per-image problems (too large, not base64) are returned in its place, so the rest still runs."""

from __future__ import annotations

import base64
import binascii
import json

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

RAW_TYPES = ("image/", "application/octet-stream")
MULTIPART_OVERHEAD = 64 * 1024  # part headers and boundaries on top of the file's bytes


def _list_of(field: str, fmt: str) -> dict:
    items = {"type": "string", "format": fmt}
    return {"type": "object", "properties": {field: {"type": "array", "items": items}}}


# the batch endpoint's body on the OpenAPI page (the endpoint reads the request itself)
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _list_of("file", "binary")},
            "application/json": {"schema": _list_of("images", "byte")},
        },
    }
}


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def check_declared(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {declared} bytes exceeds the limit of {limit}")


async def read_limited(request: Request, limit: int) -> bytes:
    """The raw body, refused (413) past `limit` bytes: from Content-Length when it is sent,
    otherwise while streaming."""
    check_declared(request, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"body exceeds the limit of {limit} bytes")
    return bytes(body)


async def image_bytes(request: Request, limit: int) -> bytes:
    """The image from a raw image body or the multipart field `file`."""
    content_type = media_type(request)
    if content_type == "multipart/form-data":
        files = await multipart_files(request, limit, limit + MULTIPART_OVERHEAD, max_files=1)
        if not files:
            raise RequestError(400, "multipart body has no file field named 'file'")
        data = files[0]
        if isinstance(data, RequestError):
            raise data
    elif content_type.startswith(RAW_TYPES):
        data = await read_limited(request, limit)
    else:
        raise RequestError(
            415, f"content type '{content_type or 'none'}': send an image/* body or multipart field 'file'"
        )
    if not data:
        raise RequestError(400, "empty body")
    return data


async def batch_images(
    request: Request, max_images: int, per_image: int, total: int
) -> list[bytes | RequestError]:
    """The images of a batch request, in order; an image over `per_image` bytes, empty or not
    base64 is a RequestError in its place. The whole body is bounded by `total`, the count by
    `max_images` (413)."""
    content_type = media_type(request)
    if content_type == "multipart/form-data":
        items = await multipart_files(request, per_image, total, max_files=max_images)
    elif content_type == "application/json":
        items = json_images(await read_limited(request, total), per_image)
    else:
        raise RequestError(
            415,
            f"content type '{content_type or 'none'}': send multipart fields 'file' "
            'or JSON {"images": [base64, ...]}',
        )
    if not items:
        raise RequestError(400, "the batch holds no images")
    if len(items) > max_images:
        raise RequestError(413, f"{len(items)} images exceed the limit of {max_images} per request")
    return [RequestError(400, "empty image") if item == b"" else item for item in items]


async def multipart_files(
    request: Request, per_image: int, total: int, max_files: int
) -> list[bytes | RequestError]:
    """The multipart fields named `file`, in order, from a body read within `total` bytes."""
    body = await read_limited(request, total)

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=max_files, max_fields=8)
    except (HTTPException, MultiPartException) as exc:  # too many parts, or malformed
        detail = str(getattr(exc, "detail", None) or getattr(exc, "message", exc))
        raise RequestError(413 if "Too many files" in detail else 400, f"multipart body: {detail}") from None
    files: list[bytes | RequestError] = []
    for field in form.getlist("file"):
        if isinstance(field, str):
            raise RequestError(400, "multipart field 'file' must be a file, not a text value")
        data = await field.read(per_image + 1)
        too_large = RequestError(413, f"image exceeds {per_image} bytes")
        files.append(data if len(data) <= per_image else too_large)
    await form.close()
    return files


def json_images(body: bytes, per_image: int) -> list[bytes | RequestError]:
    """{"images": [base64, ...]}: each decoded, or a RequestError for that image."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"body is not JSON: {exc}") from None
    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, list):
        raise RequestError(400, 'JSON body must be {"images": [base64 strings]}')
    items: list[bytes | RequestError] = []
    for item in images:
        if not isinstance(item, str):
            items.append(RequestError(400, "image is not a base64 string"))
        elif len(item) > per_image * 4 // 3 + 4:  # base64 length before decoding
            items.append(RequestError(413, f"image exceeds {per_image} bytes"))
        else:
            try:
                items.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError):
                items.append(RequestError(400, "image is not valid base64"))
    return items
