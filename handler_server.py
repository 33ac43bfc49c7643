"""Serves a checkpoint's `handler.py` over HTTP as Inference Endpoints does, for trying and testing it locally.

The checkpoint's `handler.py` is imported from the checkpoint folder (which goes first on `sys.path`), built once as
`EndpointHandler(folder)`, and called with the JSON body of each `POST /` (or `POST /predict`) in a worker thread;
`GET /` and `GET /health` answer `{"status": "ok"}`. Every answer is JSON:

- 200: what the handler returned;
- 400: `{"error", "error_type"}` for a body that is not JSON (`"invalid_json"`) or that the handler refuses (its
  `PayloadError`, or any exception with `status_code = 400` and `to_dict()`);
- 413: a body over `--max-body-bytes`;
- 500: `{"error", "error_type": "internal_error"}` naming only the exception's type; the traceback goes to the
  server's log, never to the client.

    python handler_server.py demo-output/model --port 8000
    curl -s localhost:8000 -d '{"inputs": "Obama visits Paris"}'

`--port 0` picks a free port; the line `serving <folder> on http://<host>:<port>` on stdout says which, once the
model is loaded. The server binds 127.0.0.1 unless `--host` says otherwise. `--max-text-chars N` caps the characters
of a text (the handler's default otherwise, or its `ITA_MAX_TEXT_CHARS`), and `--allow-private-urls` lets image URLs
reach loopback and private addresses (as `ITA_ALLOW_PRIVATE_URLS=1` does), which only callers you trust should get. Needs the `serve` extra
(`pip install -e ".[serve]"`: uvicorn, starlette).
"""

import argparse
import importlib.util
import json
import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

logger = logging.getLogger("handler_server")

# This machine only: serving a model to the network is a choice (`--host 0.0.0.0`), never the default.
DEFAULT_HOST = "127.0.0.1"
MAX_BODY_BYTES = 32 * 1024 * 1024
# Requests tagged at once. The model's forward already uses every core through torch's threads; more workers
# overlap the waits for image URLs.
DEFAULT_CONCURRENCY = 4
CHECKOUT_HANDLER = Path(__file__).resolve().parent / "handler.py"


class RequestError(Exception):
    """A request refused before it reaches the handler."""

    def __init__(self, status_code: int, message: str, error_type: str):
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type


def load_handler(folder: Path, handler_file: Path | None = None, **options: Any) -> Callable[[Any], Any]:
    """Imports `handler.py` as Inference Endpoints does and builds its `EndpointHandler` on `folder`.

    Args:
        folder: The checkpoint folder.
        handler_file: The handler to use; defaults to the checkpoint's own `handler.py`, or this checkout's when the
            checkpoint has none (a checkpoint saved before the handler was part of it).
        **options: Arguments of `EndpointHandler` (`allow_private_urls`, `max_text_chars`).
    """
    if handler_file is None:
        handler_file = folder / "handler.py"
        if not handler_file.is_file():
            logger.warning(f"{folder} has no handler.py: serving it with {CHECKOUT_HANDLER}.")
            handler_file = CHECKOUT_HANDLER
    spec = importlib.util.spec_from_file_location("handler", handler_file)
    if spec is None or spec.loader is None:
        raise ValueError(f"{handler_file} is not a Python file.")
    # The folder goes first on sys.path, as Inference Endpoints puts it, for handlers that import their siblings.
    sys.path.insert(0, str(folder))
    module = importlib.util.module_from_spec(spec)
    sys.modules["handler"] = module
    spec.loader.exec_module(module)
    return module.EndpointHandler(str(folder), **options)


def create_app(
    handler: Callable[[Any], Any], max_body_bytes: int = MAX_BODY_BYTES, concurrency: int = DEFAULT_CONCURRENCY
) -> Starlette:
    """A Starlette app answering `POST /` and `POST /predict` with `handler(body)` (see the module docstring).

    Args:
        handler: Called with the decoded JSON body, in a worker thread.
        max_body_bytes: Larger request bodies are refused (413) before being read whole.
        concurrency: Handler calls running at once; further requests wait for a free worker.
    """
    limiter: anyio.CapacityLimiter | None = None

    async def predict(request: Request) -> Response:
        nonlocal limiter
        if limiter is None:  # created inside the event loop that uses it
            limiter = anyio.CapacityLimiter(concurrency)
        try:
            payload = _decode_json(await _read_body(request, max_body_bytes))
            result = await anyio.to_thread.run_sync(handler, payload, limiter=limiter)
            return _json(result)
        except RequestError as err:
            return _error(err.status_code, str(err), err.error_type)
        except Exception as err:
            if getattr(err, "status_code", None) == 400 and callable(getattr(err, "to_dict", None)):
                return _json(err.to_dict(), status_code=400)
            logger.exception("The handler failed on a request")
            return _error(
                500, f"The server failed on this request ({type(err).__name__}); see the server log.", "internal_error"
            )

    async def health(request: Request) -> Response:
        return _json({"status": "ok"})

    async def http_error(request: Request, err: HTTPException) -> Response:
        return _error(err.status_code, str(err.detail), "http_error")

    async def server_error(request: Request, err: Exception) -> Response:
        logger.exception("Unhandled error")
        return _error(
            500, f"The server failed on this request ({type(err).__name__}); see the server log.", "internal_error"
        )

    return Starlette(
        routes=[
            Route("/", health, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/", predict, methods=["POST"]),
            Route("/predict", predict, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(
            413, f"The request body has {declared} bytes, more than the {limit} this server reads.", "payload_too_large"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(
                413, f"The request body has more than the {limit} bytes this server reads.", "payload_too_large"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_json(body: bytes) -> Any:
    if not body.strip():
        raise RequestError(400, 'The request body is empty: send JSON such as {"inputs": "a tweet"}.', "invalid_json")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(
            400, f'The request body is not JSON ({err}): send {{"inputs": "a tweet"}}.', "invalid_json"
        ) from None


def _json(content: Any, status_code: int = 200) -> Response:
    # ASCII JSON: a word with a lone surrogate (valid in JSON, unencodable in UTF-8) is escaped, not a failure.
    return Response(json.dumps(content, allow_nan=False), status_code=status_code, media_type="application/json")


def _error(status_code: int, message: str, error_type: str) -> Response:
    return _json({"error": message, "error_type": error_type}, status_code=status_code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="the checkpoint folder (holding handler.py)")
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 serves every network interface)",
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s); 0 picks a free port")
    parser.add_argument("--handler", type=Path, help="a handler.py to use instead of the checkpoint's")
    parser.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="handler calls at once (default: %(default)s)"
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="larger requests get 413 (default: %(default)s)"
    )
    parser.add_argument(
        "--max-text-chars", type=int, help="characters a text may have (default: the handler's, or ITA_MAX_TEXT_CHARS)"
    )
    parser.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="let image URLs reach loopback and private addresses (default: ITA_ALLOW_PRIVATE_URLS, else refused)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.checkpoint.is_dir():
        parser.error(f"{args.checkpoint} is not a folder: give the checkpoint folder (e.g. demo-output/model).")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1.")
    if args.max_text_chars is not None and args.max_text_chars < 1:
        parser.error("--max-text-chars must be at least 1.")
    # Only the options given: a handler older than them (or another one, with --handler) still loads without.
    options = {"allow_private_urls": True} if args.allow_private_urls else {}
    if args.max_text_chars is not None:
        options["max_text_chars"] = args.max_text_chars
    handler = load_handler(args.checkpoint.resolve(), args.handler, **options)
    app = create_app(handler, max_body_bytes=args.max_body_bytes, concurrency=args.concurrency)
    # Listening before uvicorn starts, so that the port is known (and printed) when it was 0, and clients that
    # connect at once wait in the backlog instead of being refused.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    print(f"serving {args.checkpoint} on http://{host}:{port}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


if __name__ == "__main__":
    main()
