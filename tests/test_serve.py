"""``vlp serve``: the real server (uvicorn) on 127.0.0.1, driven over HTTP with httpx.

Results must equal the Python API's (``vlp.load(run).classify`` / ``embed_images`` / ``search``); every limit and
every broken upload must be a 4xx with a message, never a 500; concurrent requests must share forward passes; and
the server must answer a schemathesis run against its own OpenAPI schema.
"""
import base64
import contextlib
import io
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import schemathesis
from schemathesis import GenerationMode
import uvicorn
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.generation.meta import TestPhase
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

import vlp
from vlp.cli import main
from vlp.data import load_default
from vlp.search import build_index
from vlp.serve.app import create_app
from vlp.serve.limits import Limits

# Tight limits, so that going past each one takes a small request
LIMITS = Limits(max_image_bytes=50_000, max_pixels=200 * 200, max_labels=8, max_text_chars=100, max_texts=8)
LABELS = ["dress", "bag", "sneaker"]
N_GALLERY = 12


@pytest.fixture(scope="module")
def model(tiny_run):
    return vlp.load(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def images():
    data = load_default("val")
    return [data.pil(i).convert("RGB") for i in range(40)]


@pytest.fixture(scope="module")
def index(model, images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gallery")
    for i, image in enumerate(images[:N_GALLERY]):
        image.save(folder / f"{i:02d}.png")
    return build_index(model, folder)


@contextlib.contextmanager
def serving(app):
    """Run ``app`` with uvicorn on a free loopback port in a background thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def server(model, index):
    # a long wait makes batching under concurrency certain, not a matter of timing
    with serving(create_app(model, LIMITS, index, max_batch=32, max_wait_ms=50)) as url:
        yield url


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server, timeout=60) as http:
        yield http


def png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def test_health_and_info(client, model, index):
    assert ok(client.get("/v1/health"))["status"] == "ok"
    info = ok(client.get("/v1/info"))
    assert info["checkpoint"] == str(model.checkpoint)
    assert (info["embed_dim"], info["image_size"], info["tokenizer"]) == (32, 28, "sentencepiece")
    assert info["limits"]["max_labels"] == 8 and info["max_batch"] == 32
    assert info["index"] == {"images": N_GALLERY, "kind": "exact"}


def test_classify_multipart_and_json_equal_python_api(client, model, images):
    expected = model.classify([images[0]], LABELS, templates="simple", top_k=2)[0]
    form = ok(client.post("/v1/classify", files={"image": ("x.png", png(images[0]), "image/png")},
                          data={"labels": "dress, bag,sneaker", "templates": "simple", "top_k": "2"}))
    as_json = ok(client.post("/v1/classify", json={"image": b64(png(images[0])), "labels": LABELS,
                                                   "templates": "simple", "top_k": 2}))
    for answer in (form, as_json):
        assert [p["label"] for p in answer["predictions"]] == [label for label, _ in expected]
        assert [p["probability"] for p in answer["predictions"]] == pytest.approx([p for _, p in expected], abs=1e-5)
    default = ok(client.post("/v1/classify", json={"image": b64(png(images[1])), "labels": "dress,bag"}))
    assert len(default["predictions"]) == 2  # top_k defaults to 5, capped at the number of labels


def test_embeddings_equal_python_api(client, model, images):
    expected = model.embed_images([images[2]])[0]
    for response in (client.post("/v1/embed/image", files={"image": ("x.png", png(images[2]))}),
                     client.post("/v1/embed/image", json={"image": "data:image/png;base64," + b64(png(images[2]))})):
        answer = ok(response)
        assert answer["dim"] == 32 and answer["embedding"] == pytest.approx(expected.tolist(), abs=1e-5)
    texts = ["a photo of a dress.", "a bag"]
    answer = ok(client.post("/v1/embed/text", json={"texts": texts}))
    assert np.allclose(answer["embeddings"], model.embed_texts(texts).numpy(), atol=1e-5)


def test_search_by_text_and_image_equal_python_api(client, model, index):
    expected = model.search("a photo of a dress", index, top_k=3)
    for response in (client.post("/v1/search", json={"text": "a photo of a dress", "top_k": 3}),
                     client.post("/v1/search", files={"text": (None, "a photo of a dress"), "top_k": (None, "3")})):
        hits = ok(response)["results"]
        assert [h["path"] for h in hits] == [p for p, _ in expected]
        assert [h["score"] for h in hits] == pytest.approx([s for _, s in expected], abs=1e-5)
    with open(index.paths[4], "rb") as f:
        query = f.read()
    hits = ok(client.post("/v1/search", files={"image": ("q.png", query)}, data={"top_k": "2"}))["results"]
    assert hits[0]["path"] == index.paths[4] and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_search_without_an_index_is_404(model):
    with serving(create_app(model, LIMITS)) as url:
        response = httpx.post(f"{url}/v1/search", json={"text": "a dress"})
    assert response.status_code == 404 and "--index" in response.json()["detail"]


def noise_png(width, height) -> bytes:
    return png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)))


def small_png() -> bytes:
    return png(Image.new("RGB", (8, 8)))


REFUSALS = [  # (what, request arguments for POST, status, words the detail must contain)
    ("image bytes", ("/v1/embed/image", {"files": {"image": ("x.png", noise_png(150, 150))}}), 413, "50000 bytes"),
    ("pixels", ("/v1/embed/image", {"files": {"image": ("x.png", png(Image.new("RGB", (300, 300))))}}), 413,
     "(300x300) has more than the limit of 40000 pixels"),
    ("aspect ratio", ("/v1/embed/image", {"files": {"image": ("x.png", png(Image.new("RGB", (1, 199))))}}), 413,
     "aspect ratio (1x199)"),
    ("labels", ("/v1/classify", {"json": {"image": b64(small_png()), "labels": list("abcdefghi")}}), 422,
     "9 class names; the limit is 8"),
    ("no labels", ("/v1/classify", {"json": {"image": b64(small_png()), "labels": " , "}}), 422,
     "at least one class name"),
    ("label length", ("/v1/classify", {"files": {"image": ("x.png", small_png())},
                                       "data": {"labels": "a," + "b" * 101}}), 422, "labels[1] is 101 characters"),
    ("texts", ("/v1/embed/text", {"json": {"texts": ["a"] * 9}}), 422, "9 texts; the limit is 8"),
    ("text length", ("/v1/embed/text", {"json": {"texts": ["a" * 101]}}), 422, "texts[0] is 101 characters"),
    ("query length", ("/v1/search", {"json": {"text": "a" * 101}}), 422, "text is 101 characters"),
    ("body", ("/v1/embed/text", {"json": {"texts": ["a" * 300_000]}}), 413,
     "the request body is larger than the limit"),
    ("chunked body", ("/v1/embed/text", {"content": iter([b"x" * 100_000] * 3),
                                         "headers": {"content-type": "application/json"}}), 413,
     "the request body is larger than the limit"),
    ("corrupt image", ("/v1/classify", {"files": {"image": ("x.png", noise_png(20, 20)[:300])},
                                        "data": {"labels": "a,b"}}), 400, "corrupt or truncated"),
    ("not an image", ("/v1/embed/image", {"files": {"image": ("x.png", b"hello, world")}}), 400, "not in a format"),
    ("empty image", ("/v1/embed/image", {"files": {"image": ("x.png", b"")}}), 400, "empty"),
    ("bad base64", ("/v1/embed/image", {"json": {"image": "not base64!"}}), 400, "not valid base64"),
    ("image as a text field", ("/v1/embed/image", {"files": {"image": (None, "abc")}}), 422,
     "must be a file"),
    ("no image", ("/v1/classify", {"files": {"labels": (None, "a")}}), 422, "image: required"),
    ("content type", ("/v1/embed/image", {"content": b"abc", "headers": {"content-type": "text/plain"}}), 415,
     "multipart/form-data"),
    ("bad JSON", ("/v1/classify", {"content": b"{", "headers": {"content-type": "application/json"}}), 400,
     "not valid JSON"),
    ("templates", ("/v1/classify", {"json": {"image": b64(small_png()), "labels": "a", "templates": "x"}}), 422,
     "templates: Input should be 'openai_imagenet' or 'simple'"),
    ("top_k", ("/v1/search", {"json": {"text": "a", "top_k": 0}}), 422, "top_k: Input should be greater than"),
    ("unknown field", ("/v1/classify", {"json": {"image": b64(small_png()), "labels": "a", "topk": 1}}), 422,
     "topk: Extra inputs are not permitted"),
    ("two queries", ("/v1/search", {"json": {"text": "a", "image": b64(small_png())}}), 422, "exactly one query"),
    ("missing texts", ("/v1/embed/text", {"json": {}}), 422, "texts: Field required"),
]


@pytest.mark.parametrize("what, request_args, status, words", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_limits_and_bad_requests_are_4xx_with_a_message(client, what, request_args, status, words):
    path, kwargs = request_args
    response = client.post(path, **kwargs)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_concurrent_requests_are_batched_and_correct(client, model, images):
    queries = images[:32]
    expected_embeddings = model.embed_images(queries)
    expected_top = model.classify(queries, LABELS, templates="simple", top_k=1)
    before = ok(client.get("/v1/health"))["batching"]

    def request(i):
        if i % 2:
            return client.post("/v1/embed/image", files={"image": ("x.png", png(queries[i]))})
        return client.post("/v1/classify", files={"image": ("x.png", png(queries[i]))},
                           data={"labels": ",".join(LABELS), "templates": "simple", "top_k": "1"})

    with ThreadPoolExecutor(32) as pool:
        answers = [ok(response) for response in pool.map(request, range(32))]
    for i, answer in enumerate(answers):
        if i % 2:
            assert answer["embedding"] == pytest.approx(expected_embeddings[i].tolist(), abs=1e-5)
        else:
            assert answer["predictions"][0]["label"] == expected_top[i][0][0]
            assert answer["predictions"][0]["probability"] == pytest.approx(expected_top[i][0][1], abs=1e-5)
    after = ok(client.get("/v1/health"))["batching"]
    items, forwards = after["items"] - before["items"], after["forwards"] - before["forwards"]
    assert items == 32 and forwards < items / 2, (items, forwards)
    assert after["largest_batch"] > 1


CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_openapi_schema(server, mode):
    """schemathesis generates requests from /openapi.json, valid and invalid ones, for every operation: no 5xx,
    and every response is documented, with the documented content type and schema. The schema's examples
    (real images) reach the happy paths that random bytes cannot."""
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6
    for operation in operations:
        if mode == GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # health and info take no input, so there is nothing to make invalid
        strategy = operation.as_strategy(mode)
        if mode == GenerationMode.POSITIVE:
            strategy |= operation.as_strategy(mode, phase=TestPhase.EXAMPLES)

        @given(strategy)
        @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def conforms(case):
            case.call_and_validate(checks=CONFORMANCE)

        conforms()


def test_vlp_serve_command(tiny_run, tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "vlp.cli", "serve", "--model", str(tiny_run), "--port", str(port),
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = proc.stdout.readline()
        assert f"at http://127.0.0.1:{port} " in banner, banner
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                assert ok(httpx.get(f"http://127.0.0.1:{port}/v1/health"))["status"] == "ok"
                break
            time.sleep(0.05)
        else:
            pytest.fail("vlp serve did not answer")
    finally:
        proc.terminate()
        proc.wait(10)


def test_vlp_serve_refuses_bad_flags_in_one_line(tiny_run, capsys):
    assert main(["serve", "--model", str(tiny_run), "--max-batch", "0"]) == 2
    assert main(["serve", "--model", str(tiny_run), "--max-labels", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["vlp serve: error: --max-batch must be at least 1 and --max-wait-ms at least 0, got 0 and 5.0",
                   "vlp serve: error: max_labels must be at least 1, got 0"]


def test_the_library_and_cli_import_without_fastapi():
    code = ("import sys, vlp, vlp.cli, vlp.serve, vlp.serve.command; "
            "print(sorted({'fastapi', 'uvicorn', 'starlette'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
