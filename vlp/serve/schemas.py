"""Request and response bodies of the HTTP API, as pydantic models: they validate JSON bodies and write the
OpenAPI schema, so ``/openapi.json`` says exactly what each endpoint takes and returns.

Endpoints that take an image accept JSON (the image in base64) or multipart/form-data (the image as a file
field named ``image``, the other fields as form fields): ``*JSON`` and ``*Form`` models describe the two.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TemplateSet = Literal["openai_imagenet", "simple"]  # the keys of vlp.zeroshot.TEMPLATE_SETS
# A 1×1 PNG, so the schema's examples are requests the server really answers
EXAMPLE_IMAGE = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNgYGAAAAAEAAH2FzhVAAAAAElFTkSuQmCC")
BASE64_IMAGE = Field(description="the image file's bytes in base64 (a data: URL is accepted)",
                     examples=[EXAMPLE_IMAGE])
TOP_K = Field(5, ge=1, description="how many results to return, best first")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class _ClassifyOptions(_Body):
    templates: TemplateSet = Field("openai_imagenet", description="prompt template set to ensemble over")
    top_k: int = TOP_K


class ClassifyForm(_ClassifyOptions):
    labels: str = Field(description="comma-separated class names", examples=["sneaker,sandal,bag"])


class ClassifyJSON(_ClassifyOptions):
    image: str = BASE64_IMAGE
    labels: list[str] | str = Field(description="class names, as a list or one comma-separated string",
                                    examples=[["sneaker", "sandal", "bag"]])


class EmbedImageForm(_Body):
    pass


class EmbedImageJSON(_Body):
    image: str = BASE64_IMAGE


class EmbedTextRequest(_Body):
    texts: list[str] = Field(description="texts to embed", examples=[["a photo of a sneaker."]])


class SearchForm(_Body):
    text: str | None = Field(None, description="a text query; or send an image file instead")
    top_k: int = TOP_K


class SearchJSON(SearchForm):
    image: str | None = Field(None, description="an image query, in base64; or send text instead",
                              examples=[EXAMPLE_IMAGE])


class Prediction(BaseModel):
    label: str
    probability: float


class ClassifyResponse(BaseModel):
    predictions: list[Prediction] = Field(description="the top_k labels, most probable first; probabilities "
                                                      "are a softmax over all the labels")


class ImageEmbedding(BaseModel):
    embedding: list[float] = Field(description="L2-normalized")
    dim: int


class TextEmbeddings(BaseModel):
    embeddings: list[list[float]] = Field(description="L2-normalized, one per text, in order")
    dim: int


class SearchHit(BaseModel):
    path: str
    score: float = Field(description="cosine similarity")


class SearchResponse(BaseModel):
    results: list[SearchHit]


class BatchStats(BaseModel):
    items: int = Field(description="images and texts embedded since the server started")
    forwards: int = Field(description="batched forward passes that embedded them")
    largest_batch: int
    calls: int = Field(description="other model calls, such as building a zero-shot classifier")


class Health(BaseModel):
    status: Literal["ok"]
    batching: BatchStats


class IndexInfo(BaseModel):
    images: int
    kind: str = Field(description="'exact', or the IVF parameters")


class Info(BaseModel):
    checkpoint: str
    embed_dim: int
    image_size: int
    tokenizer: str
    context_length: int
    template_sets: list[str]
    limits: dict[str, int]
    max_batch: int
    max_wait_ms: float
    index: IndexInfo | None


class ErrorResponse(BaseModel):
    detail: str = Field(description="one sentence saying what was wrong with the request")
