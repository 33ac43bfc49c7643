r"""CPU-scale ITA ablations on real data: which visual context helps, with and without cross-view alignment.

Every cell is one `train.py` run (a fresh process, one torch thread) on `python -m preprocess` shards; each is
evaluated on test with visual context and text only. Results are appended to the JSON file as each run finishes, so
an interrupted ablation keeps what it finished and a rerun skips it; a run cut off mid-training goes on from its
newest checkpoint.

The caption study (1 epoch; `benchmarks/results/ablation.json`) reads shards with the BLIP-2 captions:

    python -m preprocess --data ../shared/data/twitter2017 \\
        --context ../shared/data/captions/blip2/BLIP2_17.txt --out /tmp/shards/t17
    python benchmarks/ablation.py --shards twitter2017=/tmp/shards/t17 twitter2015=/tmp/shards/t15 --workers 2
    python benchmarks/ablation.py --step-ratio --shards twitter2017=/tmp/shards/t17   # CVA / plain step time
    python benchmarks/ablation.py --table                                            # markdown table

The knowledge study (`--suite knowledge`, 3 epochs; `benchmarks/results/knowledge_ablation.json`) reads shards
with both the captions and PGIM's LLM knowledge:

    python -m preprocess --data ../shared/data/twitter2017 \\
        --context ../shared/data/captions/blip2/BLIP2_17.txt --context-source "BLIP-2 captions, PGIM release" \\
        --context ../shared/data/knowledge/pgim/PGIM_knowledge_17.jsonl \\
        --context-source "PGIM knowledge (gpt-3.5-turbo), PGIM release" --out /tmp/shards/t17k
    python benchmarks/ablation.py --suite knowledge --epochs 3 --workers 2 --seeds 42 43 44 \\
        --shards twitter2017=/tmp/shards/t17k
    python benchmarks/ablation.py --suite knowledge --budget-sweep 64 128 --shards twitter2017=/tmp/shards/t17k
    python benchmarks/ablation.py --suite knowledge --context-lengths 64 128 192 --shards twitter2017=/tmp/shards/t17k
    python benchmarks/ablation.py --suite knowledge --table
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
KNOWLEDGE_RESULTS = REPO / "benchmarks" / "results" / "knowledge_ablation.json"
STEP_RATIO_RESULTS = REPO / "benchmarks" / "results" / "ablation_step_ratio.json"
# Cell name -> its context segments (in context order; none = text only), CVA on or off, and the context's sub-token
# budget. The first three cells are the 1-epoch caption study (`ablation.json`); the others are the knowledge study
# (`knowledge_ablation.json`, `--suite knowledge`): PGIM's LLM knowledge alone and with the caption in both orders.
# The knowledge is ~90-105 words, 126 MiniLM sub-tokens at the median and 172 (Twitter-2017) / 193 (Twitter-2015) at
# the 95th percentile, so its cells get 192; what a smaller budget costs is measured on the trained models
# (`--budget-sweep`).
CELLS = {
    # The budget of a text-only model is the one it is tested with when it is given a context.
    "text_only": {"context": [], "cva": False, "budget": 192},
    "captions": {"context": ["caption"], "cva": False, "budget": 64},
    "captions_cva": {"context": ["caption"], "cva": True, "budget": 64},
    "knowledge_cva": {"context": ["knowledge"], "cva": True, "budget": 192},
    "caption_knowledge_cva": {"context": ["caption", "knowledge"], "cva": True, "budget": 192},
    "knowledge_caption_cva": {"context": ["knowledge", "caption"], "cva": True, "budget": 192},
}
# Which cells a suite runs on which data, the contexts a text-only model is also tested with, and its results file.
SUITES = {
    "caption": {
        "cells": {name: ["twitter2017", "twitter2015"] for name in ("text_only", "captions", "captions_cva")},
        "eval_contexts": ["caption"],
        "out": RESULTS,
    },
    "knowledge": {
        "cells": {
            "text_only": ["twitter2017", "twitter2015"],
            "captions_cva": ["twitter2017", "twitter2015"],
            "knowledge_cva": ["twitter2017", "twitter2015"],
            "caption_knowledge_cva": ["twitter2017", "twitter2015"],
            "knowledge_caption_cva": ["twitter2017"],
        },
        "eval_contexts": ["caption", "knowledge"],
        "out": KNOWLEDGE_RESULTS,
    },
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


def save(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def scores(scores_dir: Path) -> dict:
    """P/R/F1/strict F1 on test and dev, with context and text only, from a run's results files."""
    result = {}
    for split, prefix, name in (("test", "test", "test_results.json"), ("dev", "eval", "eval_results.json")):
        metrics = json.loads((scores_dir / name).read_text())
        result[split] = {
            mode: {
                score: round(100 * metrics[f"{prefix}_{mode}_{score}"], 2)
                for score in ("precision", "recall", "f1", "strict_f1")
            }
            for mode in MODES
        }
    return result


def summarize(output_dir: Path) -> dict:
    """Timings of a finished train.py run, and its dev F1 after each epoch (both modes)."""
    state = json.loads((output_dir / "trainer_state.json").read_text())
    epochs = [e for e in state["log_history"] if "epoch_train_seconds" in e]
    evaluations = [e for e in state["log_history"] if "eval_mean_f1" in e]
    return {
        "dev_f1_by_epoch": [
            {mode: round(100 * e[f"eval_{mode}_f1"], 2) for mode in MODES} | {"epoch": round(e["epoch"], 2)}
            for e in evaluations
        ],
        "epoch_train_seconds": [round(e["epoch_train_seconds"], 1) for e in epochs],
        "seconds_per_step": round(
            sum(e["epoch_train_seconds"] for e in epochs) / sum(e["epoch_steps"] for e in epochs), 3
        ),
        "steps": sum(e["epoch_steps"] for e in epochs),
    }


def train_command(dataset: str, shards: str, cell: str, seed: int, output_dir: Path, args: argparse.Namespace) -> list:
    """The train.py command of one cell and seed."""
    spec = CELLS[cell]
    # No --overwrite_output_dir: a run that was interrupted (a restart of the machine would cost hours of knowledge
    # runs) goes on from the newest complete checkpoint in its folder, which is named for its dataset, cell and seed.
    return [
        sys.executable,
        str(REPO / "train.py"),
        "--dataset_path",
        shards,
        "--output_dir",
        str(output_dir),
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
        str(spec["budget"]),
        "--cva_temperature",
        str(TEMPERATURE[dataset]),
        "--save_total_limit",
        "1",
        "--logging_steps",
        "50",
        "--disable_tqdm",
        "True",
        "--context_columns",
        *(spec["context"] or ["none"]),
        *(["--context_order", *spec["context"]] if spec["context"] else []),
        "--cva",
        str(spec["cva"]),
    ]


def evaluate_command(shards: str, model_dir: Path, context: list[str], out_dir: Path) -> list:
    """The train.py command that tests a trained model with the `context` segments as its context, and text only."""
    return [
        sys.executable,
        str(REPO / "train.py"),
        "--model_name_or_path",
        str(model_dir),
        "--do_train",
        "False",
        "--dataset_path",
        shards,
        "--context_columns",
        *context,
        "--context_order",
        *context,
        "--output_dir",
        str(out_dir),
        "--per_device_eval_batch_size",
        "64",
        "--disable_tqdm",
        "True",
    ]


def run_cell(dataset: str, shards: str, cell: str, seed: int, args: argparse.Namespace) -> None:
    suite = SUITES[args.suite]
    key = {"dataset": dataset, "cell": cell, "seed": seed, "eval_context": suite["eval_contexts"][0]}
    with _lock:
        if any(all(run.get(k) == v for k, v in key.items()) for run in load(args.out)["runs"]):
            print(f"skip {key}: already in {args.out}", flush=True)
            return
    output_dir = Path(args.work) / f"{dataset}-{cell}-seed{seed}"
    log = Path(args.work) / f"{dataset}-{cell}-seed{seed}.log"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    command = train_command(dataset, shards, cell, seed, output_dir, args)
    start, load_at_start = time.perf_counter(), os.getloadavg()
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
    run = {**key, **scores(output_dir), **summarize(output_dir)}
    commands = [" ".join(command[1:])]
    if not CELLS[cell]["context"]:
        # A model trained without context is also tested with each context the other cells read; the first is the
        # `with_context` score of the table.
        tested = {}
        for context in suite["eval_contexts"]:
            scores_dir = output_dir / f"eval-with-{context}"
            evaluate = evaluate_command(shards, output_dir, [context], scores_dir)
            if not (scores_dir / "test_results.json").is_file():
                with open(log, "a") as handle:
                    subprocess.run(evaluate, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, check=True)
            tested[context] = scores(scores_dir)
            commands.append(" ".join(evaluate[1:]))
        run.update(tested[suite["eval_contexts"][0]])
        run["tested_with"] = tested
    run.update(wall_seconds=round(wall, 1), exit_code=code, command=" && ".join(commands), threads=args.threads)
    # The machine is shared: the load says how far this run's seconds per epoch can be compared with another's.
    run["load_average"] = {"start": [round(x, 2) for x in load_at_start], "end": [round(x, 2) for x in os.getloadavg()]}
    with _lock:
        results = load(args.out)
        same = [r for r in results["runs"] if all(r.get(k) == key[k] for k in ("dataset", "cell", "seed"))]
        if reused:
            # The wall time is that of the run that trained; this one only (re-)evaluated.
            run["wall_seconds"] = same[0]["wall_seconds"] if same else None
        # A record made before the evaluation protocol was fixed is replaced.
        results["runs"] = [r for r in results["runs"] if r not in same]
        results["settings"] = {
            k: v for k, v in vars(args).items() if k in ("epochs", "lr", "crf_lr", "batch_size", "threads", "workers")
        }
        results["settings"]["cells"] = {name: CELLS[name] for name in suite["cells"]}
        results["runs"].append(run)
        save(args.out, results)
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


def context_lengths(shards: dict[str, str], budgets: list[int], args: argparse.Namespace) -> None:
    """Sub-tokens of each cell's context as the encoder reads it, and the share of tweets whose context fits each budget.

    The context is built from the shards' columns exactly as `train.py` builds it for the cell, and counted with the
    tokenisation the model encodes (`encoding_ita._tokenised`). Results go into the results file's `context_tokens`.
    """
    sys.path.insert(0, str(REPO))
    import statistics

    from transformers import AutoTokenizer

    from encoding_ita import _tokenised
    from train import DataArguments, default_encoder, prepare_data

    tokenizer = AutoTokenizer.from_pretrained(default_encoder())
    measured = {}
    for dataset, path in shards.items():
        for cell, spec in CELLS.items():
            if not spec["context"] or dataset not in SUITES[args.suite]["cells"].get(cell, []):
                continue
            data, _ = prepare_data(
                DataArguments(dataset_path=path, context_columns=spec["context"], context_order=spec["context"])
            )
            lengths = sorted(
                _tokenised(tokenizer, row["tokens"], row["visual_context"]).context_length
                for split in data.values()
                for row in split.select_columns(["tokens", "visual_context"])
            )
            measured.setdefault(dataset, {})[cell] = {
                "tweets": len(lengths),
                "median": statistics.median(lengths),
                "p95": lengths[int(0.95 * (len(lengths) - 1))],
                "max": lengths[-1],
                "share_within": {str(b): round(sum(n <= b for n in lengths) / len(lengths), 4) for b in budgets},
            }
            print(dataset, cell, measured[dataset][cell], flush=True)
    with _lock:
        results = load(args.out)
        results["context_tokens"] = {"encoder": default_encoder(), "splits": "train + validation + test", **measured}
        save(args.out, results)


def budget_sweep(shards: dict[str, str], budgets: list[int], args: argparse.Namespace) -> None:
    """Tests every finished run whose context holds knowledge again with smaller sub-token budgets.

    The model is the same; only `max_context_tokens` of a copy of its config changes (weights linked, not copied), so
    the difference is what cutting the context to that budget costs at test time. Results go into each run's
    `test_with_budget`.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    for run in load(args.out)["runs"]:
        context = CELLS[run["cell"]]["context"]
        if "knowledge" not in context or run["dataset"] not in shards:
            continue
        model = Path(args.work) / f"{run['dataset']}-{run['cell']}-seed{run['seed']}"
        for budget in budgets:
            if str(budget) in run.get("test_with_budget", {}):
                continue
            copy = Path(args.work) / "budgets" / f"{model.name}-budget{budget}"
            copy.mkdir(parents=True, exist_ok=True)
            for path in model.iterdir():
                if path.is_file() and not (copy / path.name).exists():
                    (copy / path.name).symlink_to(path)
            config = json.loads((model / "config.json").read_text())
            (copy / "config.json").unlink()
            (copy / "config.json").write_text(json.dumps({**config, "max_context_tokens": budget}))
            evaluate = evaluate_command(shards[run["dataset"]], copy, context, copy / "eval")
            subprocess.run(evaluate, cwd=REPO, env=env, check=True, capture_output=True)
            with _lock:
                results = load(args.out)
                [stored] = [r for r in results["runs"] if all(r[k] == run[k] for k in ("dataset", "cell", "seed"))]
                stored.setdefault("test_with_budget", {})[str(budget)] = scores(copy / "eval")["test"]
                save(args.out, results)
            print(f"{model.name} at {budget} sub-tokens: {scores(copy / 'eval')['test']}", flush=True)


def table(results: dict) -> str:
    """The results as a markdown table: test F1 mean ± standard deviation over seeds, reference numbers beside them.

    A model trained without context is shown with each context it was also tested with; the other models with the
    context they were trained on.
    """
    import statistics

    def spread(values: list[float]) -> str:
        return f"{statistics.mean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")

    lines = [
        "| data | cell | seeds | test F1 with its context | test F1 text only | dev F1 with context / text only | "
        "strict IOB2 F1 (context / text) | s per epoch (min–max) | XLM-R-large F1 from the papers |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in ("twitter2017", "twitter2015"):
        for cell in CELLS:
            runs = [r for r in results["runs"] if r["dataset"] == dataset and r["cell"] == cell]
            if not runs:
                continue

            def score(split: str, mode: str, name: str = "f1", runs: list = runs) -> str:
                return spread([r[split][mode][name] for r in runs])

            if CELLS[cell]["context"]:
                with_context = score("test", "with_context")
            elif "tested_with" in runs[0]:
                with_context = " / ".join(
                    f"{spread([r['tested_with'][c]['test']['with_context']['f1'] for r in runs])} ({c})"
                    for c in runs[0]["tested_with"]
                )
            else:  # the caption study, which tested a text-only model with the caption only
                with_context = f"{score('test', 'with_context')} ({runs[0]['eval_context']})"
            epochs = [seconds for r in runs for seconds in r["epoch_train_seconds"]]
            lines.append(
                f"| {dataset} | {cell} | {len(runs)} | {with_context} | {score('test', 'text_only')} | "
                f"{score('dev', 'with_context')} / {score('dev', 'text_only')} | "
                f"{score('test', 'with_context', 'strict_f1')} / {score('test', 'text_only', 'strict_f1')} | "
                f"{min(epochs):.0f}–{max(epochs):.0f} | {results['reference'].get(dataset, {}).get(cell, '–')} |"
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
    parser.add_argument(
        "--suite", default="caption", choices=list(SUITES), help="which study: cells, tests, results file"
    )
    parser.add_argument("--cells", nargs="+", choices=list(CELLS), help="default: the suite's cells, in its order")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--crf_lr", type=float, default=5e-2)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_context_tokens", type=int, default=64, help="context budget of --step-ratio")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--workers", type=int, default=1, help="runs at the same time")
    parser.add_argument("--work", default="/tmp/ita_ablation", help="run folders and logs")
    parser.add_argument("--out", type=Path, help="results file (default: the suite's)")
    parser.add_argument("--step-ratio", action="store_true", help="measure the CVA / plain step time ratio instead")
    parser.add_argument("--table", action="store_true", help="print the markdown table of --out")
    parser.add_argument(
        "--budget-sweep", nargs="+", type=int, metavar="TOKENS", help="test the knowledge runs again at these budgets"
    )
    parser.add_argument(
        "--context-lengths",
        nargs="+",
        type=int,
        metavar="TOKENS",
        help="count each cell's context sub-tokens, and the share of tweets within these budgets",
    )
    args = parser.parse_args()
    suite = SUITES[args.suite]
    args.out = args.out or suite["out"]
    if args.table:
        print(table(load(args.out)))
        return
    shards = dict(item.split("=", 1) for item in args.shards)
    if args.budget_sweep:
        budget_sweep(shards, args.budget_sweep, args)
        return
    if args.context_lengths:
        context_lengths(shards, args.context_lengths, args)
        return
    if args.step_ratio:
        result = step_ratio(next(iter(shards.values())), 10, args.batch_size, args.max_context_tokens)
        STEP_RATIO_RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return
    Path(args.work).mkdir(parents=True, exist_ok=True)
    cells = args.cells or list(suite["cells"])
    jobs = [
        (dataset, path, cell, seed)
        for seed in args.seeds
        for dataset, path in shards.items()
        for cell in cells
        if dataset in suite["cells"].get(cell, [])
    ]
    with ThreadPoolExecutor(args.workers) as pool:
        for future in [pool.submit(run_cell, *job, args) for job in jobs]:
            future.result()


if __name__ == "__main__":
    main()
