"""Half precision against float32: entity agreement, test F1 and speed of a trained checkpoint, in one process.

A trained ITA checkpoint (default: the one `make demo` writes) tags the Twitter-2017 test tweets (words as in the
data, the BLIP-2 caption as visual context) through `pipeline(..., dtype=...)` in float32, bfloat16 and float16.
Reported per dtype: agreement with float32 (the share of words with the same tag, and the F1 of its entities
taking float32's as the reference), entity-level F1 against the gold tags, and tweets/s relative to float32.
Writes `benchmarks/results/half_precision.json` with the load average.

Usage: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_half_precision.py [--model demo-output/model] [--tweets 723]`
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from seqeval.metrics import f1_score
from transformers import pipeline

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from preprocess.readers import read_umt

DATA = REPO.parent / "shared" / "data"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_captions(path: Path) -> dict[str, str]:
    """`<IMGID>.jpg :<caption>` lines (the released BLIP-2 captions) by image id."""
    captions = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, _, caption = line.partition(" :")
        captions[name.strip().rsplit(".", 1)[0]] = caption.strip()
    return captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "demo-output" / "model"))
    parser.add_argument("--tweets", type=int, default=723)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "half_precision.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    examples = read_umt(DATA / "twitter2017" / "test.txt")[: args.tweets]
    captions = read_captions(DATA / "captions" / "blip2" / "BLIP2_17.txt")
    inputs = [{"text": ex.tokens, "visual_context": captions.get(Path(ex.image).stem, "")} for ex in examples]
    gold = [list(ex.tags) for ex in examples]

    results, predicted = {}, {}
    for name, dtype in DTYPES.items():
        ner = pipeline(model=args.model, trust_remote_code=True, dtype=dtype, batch_size=args.batch_size)
        ner(inputs[:4], aggregation_strategy="none", ignore_labels=[])  # warm-up
        start = time.perf_counter()
        outputs = ner(inputs, aggregation_strategy="none", ignore_labels=[])
        seconds = time.perf_counter() - start
        predicted[name] = [[word["entity"] for word in tagged] for tagged in outputs]
        results[name] = {
            "parameter_dtypes": sorted({str(p.dtype) for p in ner.model.parameters()}),
            "seconds": seconds,
            "tweets_per_second": len(inputs) / seconds,
            "test_f1": f1_score(gold, predicted[name]),
        }
    reference = predicted["float32"]
    words = sum(len(tags) for tags in reference)
    for name, result in results.items():
        same = sum(a == b for ours, ref in zip(predicted[name], reference) for a, b in zip(ours, ref))
        result["word_tag_agreement_with_float32"] = same / words
        result["entity_f1_against_float32"] = f1_score(reference, predicted[name])
        result["speed_vs_float32"] = results["float32"]["seconds"] / result["seconds"]
    report = {
        "model": os.path.relpath(args.model, REPO) if Path(args.model).is_absolute() else args.model,
        "tweets": len(inputs),
        "words": words,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
