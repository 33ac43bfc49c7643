"""Throughput of one multimodal-ner pipeline shared by 1, 2 and 4 threads, PyTorch and ONNX Runtime int8.

A server keeps one pipeline and calls it from its worker threads. This runs the demo's checkpoint (or `--model`)
on Twitter-2017 test tweets with their BLIP-2 captions: each thread tags its share of the tweets one call at a
time, all threads sharing one pipeline object. Reported per backend: tweets/s at each thread count and the ratio
to one thread, and whether every thread's results equal the one-thread results. The backends run interleaved
(`--repeats` rounds, best kept). Writes `benchmarks/results/threads.json` with the load average.

Usage: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_threads.py [--model demo-output/model] [--tweets 96]`
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_half_precision import read_captions
from ita_onnx import ORTModelForITA, export_ita, quantize_int8
from modeling_ita import ITAForTokenClassification
from pipeline_ita import MultimodalNERPipeline
from preprocess.readers import read_umt

DATA = REPO.parent / "shared" / "data"


def run_threads(ner, inputs: list[dict], threads: int) -> tuple[float, list]:
    """Seconds to tag `inputs` split over `threads` threads sharing `ner`, and the results in input order."""
    results: list = [None] * len(inputs)
    errors: list[str] = []

    def work(indices: range) -> None:
        try:
            for i in indices:
                results[i] = ner(inputs[i])
        except Exception as error:  # noqa: BLE001 - any failure in a thread is reported after the run
            errors.append(repr(error))

    shares = [range(t, len(inputs), threads) for t in range(threads)]
    workers = [threading.Thread(target=work, args=(share,)) for share in shares]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise RuntimeError(f"{len(errors)} thread(s) failed: {errors[:3]}")
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "demo-output" / "model"))
    parser.add_argument("--tweets", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "threads.json")
    args = parser.parse_args()
    # One intra-op thread per call: the parallelism measured is the callers' threads.
    torch.set_num_threads(1)

    examples = read_umt(DATA / "twitter2017" / "test.txt")[: args.tweets]
    captions = read_captions(DATA / "captions" / "blip2" / "BLIP2_17.txt")
    inputs = [{"text": " ".join(ex.tokens), "visual_context": captions.get(Path(ex.image).stem, "")} for ex in examples]

    with tempfile.TemporaryDirectory() as onnx_dir:
        export_ita(args.model, onnx_dir)
        quantize_int8(onnx_dir)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        backends = {
            # The checkout's pipeline for both, not the remote code a checkpoint carries (maybe of an older version).
            "pytorch": MultimodalNERPipeline(
                model=ITAForTokenClassification.from_pretrained(args.model).eval(), tokenizer=tokenizer, aligners=[]
            ),
            "onnxruntime_int8": MultimodalNERPipeline(
                model=ORTModelForITA.from_pretrained(onnx_dir, file_name="model_quantized.onnx"),
                tokenizer=tokenizer,
                aligners=[],
            ),
        }
        best = {(name, n): float("inf") for name in backends for n in args.threads}
        reference, identical = {}, {key: True for key in best}
        for _ in range(args.repeats):
            for name, ner in backends.items():
                for n in args.threads:
                    seconds, results = run_threads(ner, inputs, n)
                    reference.setdefault(name, results)
                    identical[(name, n)] &= [[(e["word"], e["entity_group"]) for e in r] for r in results] == [
                        [(e["word"], e["entity_group"]) for e in r] for r in reference[name]
                    ]
                    best[(name, n)] = min(best[(name, n)], seconds)

    results = {
        name: {
            f"{n}_threads": {
                "tweets_per_second": len(inputs) / best[(name, n)],
                "ratio_vs_1_thread": best[(name, 1)] / best[(name, n)] if 1 in args.threads else None,
                "results_equal_one_thread": identical[(name, n)],
            }
            for n in args.threads
        }
        for name in backends
    }
    report = {
        "model": os.path.relpath(args.model, REPO) if Path(args.model).is_absolute() else args.model,
        "tweets": len(inputs),
        "repeats": args.repeats,
        "torch_threads_per_call": 1,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "machine": platform.platform(),
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
