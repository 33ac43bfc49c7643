r"""CPU-scale ITA ablation on real data: text only vs BLIP-2 captions without / with cross-view alignment.

Every cell is one `train.py` run (a fresh process, one torch thread) on `python -m preprocess` shards built
with the BLIP-2 captions; each is evaluated on test with visual context and text only. Results are appended
to the JSON file as each run finishes, so an interrupted ablation keeps what it finished and a rerun skips it.

    python -m preprocess --data ../shared/data/twitter2017 \\
        --context ../shared/data/captions/blip2/BLIP2_17.txt --out /tmp/shards/t17
    python benchmarks/ablation.py --shards twitter2017=/tmp/shards/t17 twitter2015=/tmp/shards/t15 --workers 2
    python benchmarks/ablation.py --step-ratio --shards twitter2017=/tmp/shards/t17   # CVA / plain step time
    python benchmarks/ablation.py --table                                            # markdown table
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "ablation.json"
STEP_RATIO_RESULTS = REPO / "benchmarks" / "results" / "ablation_step_ratio.json"
# Cell name -> train.py options. (a) text only, (b) ITA captions without CVA, (c) ITA captions with CVA.
# Every model is then evaluated with the captions as visual context and with the tweet alone; the text-only
# model, trained without any context, gets that evaluation from a separate `--do_train False` run.
EVAL_CONTEXT = "caption"
CELLS = {
    "text_only": ["--context_columns", "none", "--cva", "False"],
    "captions": ["--context_columns", "caption", "--cva", "False"],
    "captions_cva": ["--context_columns", "caption", "--cva", "True"],
}
# docs/method.md §3: T = 2 for Twitter-2017, 4 for Twitter-2015.
TEMPERATURE = {"twitter2017": 2.0, "twitter2015": 4.0}
# docs/method.md §5, test micro F1 of XLM-R-large systems (from the papers, not measured here).
REFERENCE = {
    "encoder": "xlm-roberta-large (papers)",
    "twitter2015": {"text_only": 77.04, "captions_cva": 78.03},
    "twitter2017": {"text_only": 89.11, "captions_cva": 89.75},
    "note": "XLM-R-large + CRF text only, and ITA (All + CVA), as reported by Wang et al. 2022 (docs/method.md §5).",
}
MODES = ("with_context", "text_only")
_lock = threading.Lock()


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"reference": REFERENCE, "runs": []}


def summarize(output_dir: Path, scores_dir: Path) -> dict:
    """Timings of a finished train.py run, and scores from the results files in `scores_dir`."""
    test = json.loads((scores_dir / "test_results.json").read_text())
    dev = json.loads((scores_dir / "eval_results.json").read_text())
    state = json.loads((output_dir / "trainer_state.json").read_text())
    epochs = [e for e in state["log_history"] if "epoch_train_seconds" in e]
    scores = {}
    for split, metrics in (("test", test), ("dev", dev)):
        prefix = "test" if split == "test" else "eval"
        scores[split] = {
            mode: {
                name: round(100 * metrics[f"{prefix}_{mode}_{name}"], 2)
                for name in ("precision", "recall", "f1", "strict_f1")
            }
            for mode in MODES
        }
    return {
        **scores,
        "epoch_train_seconds": [round(e["epoch_train_seconds"], 1) for e in epochs],
        "seconds_per_step": round(
            sum(e["epoch_train_seconds"] for e in epochs) / sum(e["epoch_steps"] for e in epochs), 3
        ),
        "steps": sum(e["epoch_steps"] for e in epochs),
    }


def run_cell(dataset: str, shards: str, cell: str, seed: int, args: argparse.Namespace) -> None:
    key = {"dataset": dataset, "cell": cell, "seed": seed, "eval_context": EVAL_CONTEXT}
    with _lock:
        if any(all(run.get(k) == v for k, v in key.items()) for run in load(args.out)["runs"]):
            print(f"skip {key}: already in {args.out}", flush=True)
            return
    output_dir = Path(args.work) / f"{dataset}-{cell}-seed{seed}"
    log = Path(args.work) / f"{dataset}-{cell}-seed{seed}.log"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "--dataset_path",
        shards,
        "--output_dir",
        str(output_dir),
        "--overwrite_output_dir",
        "--seed",
        str(seed),
        "--num_train_epochs",
        str(args.epochs),
        "--learning_rate",
        str(args.lr),
        "--crf_learning_rate",
        str(args.crf_lr),
        "--per_device_train_batch_size",
        str(args.batch_size),
        "--per_device_eval_batch_size",
        "64",
        "--max_context_tokens",
        str(args.max_context_tokens),
        "--cva_temperature",
        str(TEMPERATURE[dataset]),
        "--save_total_limit",
        "1",
        "--logging_steps",
        "50",
        "--disable_tqdm",
        "True",
        *CELLS[cell],
    ]
    start = time.perf_counter()
    reused = (output_dir / "train_results.json").is_file() and (output_dir / "test_results.json").is_file()
    if reused:
        print(f"reuse the finished training of {key} in {output_dir}", flush=True)
        code = 0
    else:
        print(f"start {key} -> {log}", flush=True)
        with open(log, "w") as handle:
            code = subprocess.run(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if not (output_dir / "test_results.json").is_file():
        print(f"FAILED {key} (exit {code}), see {log}", flush=True)
        return
    scores_dir = output_dir
    if CELLS[cell][1] != EVAL_CONTEXT:
        scores_dir = output_dir / f"eval-with-{EVAL_CONTEXT}"
        evaluate = [
            sys.executable,
            str(REPO / "train.py"),
            "--model_name_or_path",
            str(output_dir),
            "--do_train",
            "False",
            "--dataset_path",
            shards,
            "--context_columns",
            EVAL_CONTEXT,
            "--output_dir",
            str(scores_dir),
            "--per_device_eval_batch_size",
            "64",
            "--disable_tqdm",
            "True",
        ]
        with open(log, "a") as handle:
            subprocess.run(evaluate, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, check=True)
        command += ["&&", *evaluate[1:]]
    run = {
        **key,
        **summarize(output_dir, scores_dir),
        "wall_seconds": round(wall, 1),
        "exit_code": code,
        "command": " ".join(command[1:]),
        "threads": args.threads,
    }
    with _lock:
        results = load(args.out)
        same = [r for r in results["runs"] if all(r.get(k) == key[k] for k in ("dataset", "cell", "seed"))]
        if reused:
            # The wall time is that of the run that trained; this one only (re-)evaluated.
            run["wall_seconds"] = same[0]["wall_seconds"] if same else None
        # A record made before the evaluation protocol was fixed is replaced.
        results["runs"] = [r for r in results["runs"] if r not in same]
        results["settings"] = {
            k: v
            for k, v in vars(args).items()
            if k in ("epochs", "lr", "crf_lr", "batch_size", "max_context_tokens", "threads", "workers")
        }
        results["runs"].append(run)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"done {key}: test F1 with context {run['test']['with_context']['f1']}, text only "
        f"{run['test']['text_only']['f1']}, {wall / 60:.1f} min",
        flush=True,
    )


def step_ratio(shards: str, batches: int, batch_size: int, max_context_tokens: int) -> dict:
    """Time of a CVA training step over a plain (cross-modal view only) step, same batches, one process."""
    sys.path.insert(0, str(REPO))
    import torch
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from ita_training.collator import ITADataCollator
    from modeling_ita import ITAForTokenClassification
    from train import default_encoder

    torch.manual_seed(0)
    train = load_from_disk(shards)["train"].select(range(batches * batch_size))
    tokenizer = AutoTokenizer.from_pretrained(default_encoder())
    model = ITAForTokenClassification.from_encoder(default_encoder(), labels=train.features["ner_tags"].feature.names)
    model.train()
    rows = [train[i * batch_size : (i + 1) * batch_size] for i in range(batches)]
    rows = [[dict(zip(chunk, values)) for values in zip(*chunk.values())] for chunk in rows]
    views = {"plain": False, "cva": True}
    encoded = {
        name: [ITADataCollator(tokenizer, max_context_tokens, text_view=text_view)(chunk) for chunk in rows]
        for name, text_view in views.items()
    }
    timings = {name: 0.0 for name in views}
    for index in range(-1, batches):  # -1: warm-up, not timed
        # Interleaved, so that both kinds of step see the same load on a shared machine.
        for name in views:
            start = time.perf_counter()
            model(**encoded[name][max(index, 0)]).loss.backward()
            model.zero_grad()
            if index >= 0:
                timings[name] += (time.perf_counter() - start) / batches
    return {
        "seconds_per_step": timings,
        "cva_over_plain": timings["cva"] / timings["plain"],
        "batches": batches,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "shards": shards,
    }


def table(results: dict) -> str:
    """The results as a markdown table: test F1 mean ± standard deviation over seeds, reference numbers beside them."""
    import statistics

    def spread(values: list[float]) -> str:
        return f"{statistics.mean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")

    lines = [
        "| data | cell | seeds | test F1 with caption | test F1 text only | strict IOB2 F1 (caption / text) | "
        "s per epoch (min–max) | XLM-R-large F1 from the papers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset in ("twitter2017", "twitter2015"):
        for cell in CELLS:
            runs = [r for r in results["runs"] if r["dataset"] == dataset and r["cell"] == cell]
            if not runs:
                continue
            scores = {
                (mode, name): [r["test"][mode][name] for r in runs] for mode in MODES for name in ("f1", "strict_f1")
            }
            epochs = [seconds for r in runs for seconds in r["epoch_train_seconds"]]
            lines.append(
                f"| {dataset} | {cell} | {len(runs)} | {spread(scores['with_context', 'f1'])} | "
                f"{spread(scores['text_only', 'f1'])} | {spread(scores['with_context', 'strict_f1'])} / "
                f"{spread(scores['text_only', 'strict_f1'])} | {min(epochs):.0f}–{max(epochs):.0f} | "
                f"{results['reference'].get(dataset, {}).get(cell, '–')} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shards",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help=f"datasets in run order; NAME one of {sorted(TEMPERATURE)}",
    )
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--crf_lr", type=float, default=5e-2)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_context_tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--workers", type=int, default=1, help="runs at the same time")
    parser.add_argument("--work", default="/tmp/ita_ablation", help="run folders and logs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--step-ratio", action="store_true", help="measure the CVA / plain step time ratio instead")
    parser.add_argument("--table", action="store_true", help="print the markdown table of --out")
    args = parser.parse_args()
    if args.table:
        print(table(load(args.out)))
        return
    shards = dict(item.split("=", 1) for item in args.shards)
    if args.step_ratio:
        result = step_ratio(next(iter(shards.values())), 10, args.batch_size, args.max_context_tokens)
        STEP_RATIO_RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    Path(args.work).mkdir(parents=True, exist_ok=True)
    jobs = [
        (dataset, path, cell, seed) for seed in args.seeds for dataset, path in shards.items() for cell in args.cells
    ]
    with ThreadPoolExecutor(args.workers) as pool:
        for future in [pool.submit(run_cell, *job, args) for job in jobs]:
            future.result()


if __name__ == "__main__":
    main()
