"""The FastAPI app: routes under ``/v1`` that read and check requests, call :class:`ModelService`, and answer
with the pydantic models of :mod:`vlp.serve.schemas`. Every refusal is ``{"detail": "one sentence"}``."""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from vlp import __version__
from vlp.serve.bodies import (BodyLimit, describe_errors, image_request_body, json_request_body, read_image_request,
                              read_json_request)
from vlp.serve.limits import Limits, RequestError
from vlp.serve.schemas import (ClassifyForm, ClassifyJSON, ClassifyResponse, EmbedImageForm, EmbedImageJSON,
                               EmbedTextRequest, ErrorResponse, Health, ImageEmbedding, Info, Prediction,
                               SearchForm, SearchHit, SearchJSON, SearchResponse, TextEmbeddings)
from vlp.serve.service import ModelService

DESCRIPTION = ("Zero-shot classification, embeddings and image search with a vlp dual encoder. Concurrent "
               "requests are batched on the server. Images go as multipart/form-data (an `image` file) or as "
               "JSON with the image in base64.")


def _errors(*codes: int) -> dict:
    return {code: {"model": ErrorResponse} for code in codes}


IMAGE_ERRORS = _errors(400, 413, 415, 422)


def create_app(model, limits: Limits | None = None, index=None, max_batch: int = 32,
               max_wait_ms: float = 5.0) -> FastAPI:
    """An app serving ``model`` (a ``vlp.api.LoadedModel``) and, for ``/v1/search``, ``index`` (a
    ``vlp.search.ImageIndex``). Its model thread stops when the app shuts down."""
    service = ModelService(model, limits or Limits(), index, max_batch, max_wait_ms)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="vlp", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=service.limits.max_body_bytes)
    app.add_exception_handler(RequestError, _refuse)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.include_router(_image_routes(service))
    app.include_router(_other_routes(service))
    return app


async def _refuse(_request: Request, err: RequestError) -> JSONResponse:
    return JSONResponse({"detail": err.detail}, err.status)


async def _invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": describe_errors(err.errors())}, 422)


def _image_routes(service: ModelService) -> APIRouter:
    router = APIRouter(prefix="/v1", responses=IMAGE_ERRORS)

    @router.post("/classify", openapi_extra=image_request_body(ClassifyForm, ClassifyJSON))
    async def classify(request: Request) -> ClassifyResponse:
        """Zero-shot classify one image into the given labels (CLIP prompt ensembling); the top_k labels."""
        data, options = await read_image_request(request, ClassifyForm, ClassifyJSON)
        top = await service.classify(data, options.labels, options.templates, options.top_k)
        return ClassifyResponse(predictions=[Prediction(label=label, probability=p) for label, p in top])

    @router.post("/embed/image", openapi_extra=image_request_body(EmbedImageForm, EmbedImageJSON))
    async def embed_image(request: Request) -> ImageEmbedding:
        """The image's L2-normalized embedding."""
        data, _ = await read_image_request(request, EmbedImageForm, EmbedImageJSON)
        embedding = await service.embed_image(data)
        return ImageEmbedding(embedding=embedding.tolist(), dim=len(embedding))

    @router.post("/search", responses=_errors(404),
                 openapi_extra=image_request_body(SearchForm, SearchJSON, image_required=False))
    async def search(request: Request) -> SearchResponse:
        """Search the server's image index (``vlp serve --index``) by a text or by an image."""
        data, options = await read_image_request(request, SearchForm, SearchJSON, image_required=False)
        hits = await service.search(options.text, data, options.top_k)
        return SearchResponse(results=[SearchHit(path=path, score=score) for path, score in hits])

    return router


def _other_routes(service: ModelService) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post("/embed/text", responses=_errors(400, 413, 415, 422),
                 openapi_extra=json_request_body(EmbedTextRequest))
    async def embed_text(request: Request) -> TextEmbeddings:
        """The texts' L2-normalized embeddings, in order."""
        body = await read_json_request(request, EmbedTextRequest)
        embeddings = await service.embed_texts(body.texts)
        return TextEmbeddings(embeddings=embeddings.tolist(), dim=embeddings.shape[1])

    @router.get("/health")
    async def health() -> Health:
        """Liveness, and how the batcher has grouped the work so far."""
        return Health(**service.health())

    @router.get("/info")
    async def info() -> Info:
        """The model, its preprocessing, the request limits and the batching settings."""
        return Info(**service.info())

    return router
