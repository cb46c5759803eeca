"""``vlp serve``: a trained model behind an HTTP API (FastAPI + uvicorn), with server-side micro-batching.

``vlp.serve.app.create_app(model, limits, index)`` builds the FastAPI app. This package's ``__init__`` imports
nothing, so the CLI can register ``vlp serve`` (``vlp.serve.command``) without loading FastAPI, torch or faiss.
"""
