"""`make demo`: ITA end to end on this machine, offline, in a few minutes. Everything goes under demo-output/.

1. find the data (DATA_DIR, ../shared/data, an earlier download, or a download when online);
2. preprocess Twitter-2017 with its BLIP-2 captions and PGIM's LLM knowledge into Arrow shards (reused when present);
3. train a small ITA model with cross-view alignment on the offline MiniLM encoder, on the context that paid most in
   the ablation (docs/benchmarks.md), naming RapidOCR as its live aligner so that it reads new images offline;
4. serve it with `pipeline("multimodal-ner", trust_remote_code=True)` on real images (their BLIP-2 caption and PGIM
   knowledge + RapidOCR), on an image the demo renders with text on it, and on a tweet without an image;
5. export it to ONNX and compare ONNX Runtime with PyTorch on the same inputs;
6. write demo-output/report.html.

Settings (environment): DATA_DIR (a data folder), DEMO_TRAIN_STEPS (default 150), DEMO_EVAL_TWEETS (default: all
dev tweets), DEMO_OUTPUT (default demo-output).
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from demo.data import KNOWLEDGE_FILES, DataNotFoundError, images_dir, knowledge_file, locate_data
from demo.report import ReportItem, write_report

REPO = Path(__file__).resolve().parents[1]
OUTPUT = Path(os.environ.get("DEMO_OUTPUT", REPO / "demo-output")).resolve()
TRAIN_STEPS = int(os.environ.get("DEMO_TRAIN_STEPS", "150"))
# Dev tweets evaluated after training (default: all 723); the tests use fewer to stay fast.
EVAL_TWEETS = os.environ.get("DEMO_EVAL_TWEETS")
ONNX_SPEED_TWEETS = 64
# The demo's context: the ablation's best Twitter-2017 cell (docs/benchmarks.md, benchmarks/results/knowledge_ablation.json),
# in its order and sub-token budget; without the knowledge file, the BLIP-2 captions alone in the budget they need.
KNOWLEDGE_CONTEXT, KNOWLEDGE_BUDGET = ["caption", "knowledge"], 192
CAPTION_CONTEXT, CAPTION_BUDGET = ["caption"], 64
# The live aligner the checkpoint names for new images: OCR works offline (its models ship in the wheel).
LIVE_ALIGNER, LIVE_SEGMENTS = {"type": "rapidocr"}, ["ocr"]
CONTEXT_TITLES = {"caption": "BLIP-2 captions", "knowledge": "PGIM knowledge", "objects": "object tags", "ocr": "OCR"}
# A tweet whose names are ambiguous from its words alone; the rendered sign says what they are.
SIGN_LINES = ("GOLDEN STATE", "WARRIORS")
SIGN_TWEET = "Watching the Warriors parade downtown with Steph and Klay today !"
TEXT_ONLY_TWEET = "RT @nytimes : Barack Obama meets Angela Merkel in Berlin ahead of the G20 summit"


def step(number: int, title: str) -> None:
    print(f"\n[{number}/6] {title}", flush=True)


def build_shards(data: Path) -> tuple[Path, list[str], int]:
    """The Twitter-2017 shards, the context segments the demo trains on and their sub-token budget."""
    from datasets import load_from_disk

    knowledge = knowledge_file(data, "17")
    if knowledge is None:
        print(f"      (no {KNOWLEDGE_FILES['17']} in {data}: training on the BLIP-2 captions alone)")
    name, context, budget = (
        ("twitter2017-blip2-pgim", KNOWLEDGE_CONTEXT, KNOWLEDGE_BUDGET)
        if knowledge is not None
        else ("twitter2017-blip2", CAPTION_CONTEXT, CAPTION_BUDGET)
    )
    shards = OUTPUT / "shards" / name
    if (shards / "dataset_dict.json").is_file():
        dataset = load_from_disk(str(shards))
        print(f"      reusing {shards}: " + ", ".join(f"{k} {len(v)}" for k, v in dataset.items()))
        return shards, context, budget
    contexts = [(data / "captions" / "blip2" / "BLIP2_17.txt", "BLIP-2 captions, PGIM release")]
    if knowledge is not None:
        contexts.append((knowledge, "PGIM knowledge (gpt-3.5-turbo on tweet + BLIP-2 caption), PGIM release"))
    command = [sys.executable, "-m", "preprocess", "--data", str(data / "twitter2017"), "--out", str(shards)]
    for path, source in contexts:
        command += ["--context", str(path), "--context-source", source]
    print("      $ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    return shards, context, budget


def train_model(shards: Path, context: list[str], budget: int) -> Path:
    model_dir = OUTPUT / "model"
    results_file = model_dir / "eval_results.json"
    if not (results_file.is_file() and (model_dir / "model.safetensors").is_file()):
        command = [
            sys.executable,
            "train.py",
            "--dataset_path",
            str(shards),
            "--output_dir",
            str(model_dir),
            "--overwrite_output_dir",
            "--context_columns",
            *context,
            # The live aligner's segment goes last in the order, so that OCR of a new image reaches the model.
            "--context_order",
            *context,
            *LIVE_SEGMENTS,
            "--live_aligner",
            json.dumps(LIVE_ALIGNER),
            "--cva",
            "True",
            "--cva_temperature",
            "2.0",
            "--max_context_tokens",
            str(budget),
            "--learning_rate",
            "1e-4",
            "--crf_learning_rate",
            "0.05",
            "--per_device_train_batch_size",
            "8",
            "--max_steps",
            str(TRAIN_STEPS),
            "--eval_strategy",
            "steps",
            "--eval_steps",
            str(TRAIN_STEPS),
            "--save_strategy",
            "steps",
            "--save_steps",
            str(TRAIN_STEPS),
            "--save_total_limit",
            "1",
            "--per_device_eval_batch_size",
            "64",
            "--test_split",
            "",
            "--logging_steps",
            "25",
            "--dataset_title",
            f"Twitter-2017 + {' + '.join(CONTEXT_TITLES[name] for name in context)}",
        ] + (["--max_eval_samples", EVAL_TWEETS] if EVAL_TWEETS else [])
        print(f"      training {TRAIN_STEPS} steps of 8 tweets (set DEMO_TRAIN_STEPS to change the budget)")
        print("      $ " + " ".join(command), flush=True)
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=REPO)
        print(f"      trained in {time.perf_counter() - started:.0f} s")
    else:
        print(f"      reusing the model in {model_dir} (delete it to train again)")
        refresh_remote_code(model_dir)
    print(f"      {dev_scores(model_dir, context)}")
    return model_dir


def dev_scores(model_dir: Path, context: list[str]) -> str:
    metrics = json.loads((model_dir / "eval_results.json").read_text())
    state = json.loads((model_dir / "trainer_state.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    context = " + ".join(CONTEXT_TITLES[name] for name in context)
    return (
        f"dev F1 with visual context {100 * metrics['eval_with_context_f1']:.2f}, text only "
        f"{100 * metrics['eval_text_only_f1']:.2f} (MiniLM trained {state['global_step']} steps with CVA on "
        f"Twitter-2017 + {context}; live aligner for new images: {[s['type'] for s in config['live_aligners']]})"
    )


def refresh_remote_code(model_dir: Path) -> None:
    """Brings a reused checkpoint's remote code to this checkout's (the weights stay).

    The modules its `config.json` names (model, config, pipeline) and, import by import, every sibling module they
    import are copied from the checkout where they differ or are missing; a `*_ita.py` file none of them imports any
    more (a module since split or renamed) is removed.
    """
    from transformers.dynamic_module_utils import get_relative_import_files

    config = json.loads((model_dir / "config.json").read_text())
    entries = [*config.get("auto_map", {}).values(), *(p["impl"] for p in config.get("custom_pipelines", {}).values())]
    modules = [REPO / f"{entry.rsplit('.', 1)[0]}.py" for entry in entries]
    needed = {Path(path).name for module in modules for path in [module, *get_relative_import_files(module)]}
    updated = [
        name
        for name in sorted(needed)
        if not (model_dir / name).is_file() or (model_dir / name).read_bytes() != (REPO / name).read_bytes()
    ]
    for name in updated:
        shutil.copyfile(REPO / name, model_dir / name)
    removed = [path.name for path in sorted(model_dir.glob("*_ita.py")) if path.name not in needed]
    for name in removed:
        (model_dir / name).unlink()
    if updated or removed:
        print(
            f"      brought its remote code to this checkout's: updated {updated or 'none'}, removed {removed or 'none'}"
        )


def render_sign(path: Path) -> Path:
    """A street-sign picture with printed text, so that OCR has something to read."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (900, 420), (24, 64, 140))
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 40, 860, 380), fill=(250, 250, 245), outline=(255, 200, 0), width=12)
    font_file = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
    font = ImageFont.truetype(str(font_file), 84) if font_file.is_file() else ImageFont.load_default(size=84)
    for line, top in zip(SIGN_LINES, (95, 215)):
        width = draw.textlength(line, font=font)
        draw.text(((900 - width) / 2, top), line, fill=(20, 20, 20), font=font)
    image.save(path)
    return path


def real_image_tweets(data: Path) -> list[tuple[Path, list[str]]]:
    """The shared Twitter-2015 images with the words of the tweets they belong to."""
    from preprocess.readers import read_umt

    folder = images_dir(data)
    if folder is None or not (data / "twitter2015").is_dir():
        print("      (no real tweet images beside the data: showing the rendered image only)")
        return []
    by_image = {}
    for split in ("train", "valid", "test"):
        for example in read_umt(data / "twitter2015" / f"{split}.txt"):
            by_image.setdefault(example.image.rsplit(".", 1)[0], example.tokens)
    return [(path, by_image[path.stem]) for path in sorted(folder.glob("*.jpg")) if path.stem in by_image]


def show(title: str, text: str, result: dict, width: int = 160) -> None:
    context = result["visual_context"] or "(none: text only)"
    if len(context) > width:  # the console shows the start; the report and the model get all of it
        context = f"{context[:width]}… (+{len(context) - width} characters, in full in the report)"
    print(f"\n      {title}\n      tweet:   {text}\n      context: {context}")
    print(f"      sources: {', '.join(result['context_sources']) or 'none'}")
    entities = result["entities"]
    if not entities:
        print("      entities: none found")
    for entity in entities:
        print(
            f"        {entity['entity_group']:<6} {entity['score']:.2f}  {entity['word']!r} [{entity['start']}:{entity['end']}]"
        )


def run_pipeline(model_dir: Path, data: Path) -> list[ReportItem]:
    from transformers import pipeline

    from aligners_ita import RapidOCRAligner
    from precomputed_ita import PrecomputedAligner

    # The Twitter-2015 images' own caption and knowledge, as the model read Twitter-2017's, then OCR.
    aligners = [RapidOCRAligner()]
    files = [data / "captions" / "blip2" / "BLIP2_15.txt", knowledge_file(data, "15")]
    files = [path for path in files if path is not None and path.is_file()]
    if files:
        aligners.insert(0, PrecomputedAligner(files))
    ner = pipeline("multimodal-ner", model=str(model_dir), trust_remote_code=True, aligners=aligners)
    print(f"      {type(ner).__module__}.{type(ner).__name__} with aligners {[a.type for a in aligners]}")
    items = []
    for path, words in real_image_tweets(data):
        text = " ".join(words)
        result = ner(words, image=str(path), is_split_into_words=True, return_visual_context=True)
        show(f"real tweet image {path.name}", text, result)
        items.append(ReportItem.of(f"Twitter-2015 image {path.name}", text, result, path))
    sign = render_sign(OUTPUT / "rendered-sign.png")
    # Served as `make serve` and `make app` serve it: with the aligners the checkpoint records (OCR for new images).
    served = pipeline("multimodal-ner", model=str(model_dir), trust_remote_code=True)
    with_image = served(SIGN_TWEET, image=str(sign), return_visual_context=True)
    without = served(SIGN_TWEET, return_visual_context=True)
    show("rendered sign, read by the checkpoint's live aligner (OCR)", SIGN_TWEET, with_image)
    show("same tweet without the image", SIGN_TWEET, without)
    items.append(ReportItem.of("rendered sign: the checkpoint's live OCR", SIGN_TWEET, with_image, sign))
    items.append(ReportItem.of("same tweet, no image", SIGN_TWEET, without))
    text_only = ner(TEXT_ONLY_TWEET, return_visual_context=True)
    show("a tweet without an image", TEXT_ONLY_TWEET, text_only)
    items.append(ReportItem.of("tweet without an image", TEXT_ONLY_TWEET, text_only))
    return items


def compare_onnx(model_dir: Path, items: list[ReportItem], shards: Path) -> str:
    from datasets import load_from_disk
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from ita_onnx import ORTModelForITA, export_ita
    from pipeline_ita import MultimodalNERPipeline

    onnx_dir = OUTPUT / "onnx"
    if not (onnx_dir / "model.onnx").is_file():
        export_ita(str(model_dir), str(onnx_dir))
        print(f"      exported to {onnx_dir}")
    else:
        print(f"      reusing {onnx_dir}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch_model = AutoModelForTokenClassification.from_pretrained(model_dir, trust_remote_code=True)
    pipes = {
        "PyTorch": MultimodalNERPipeline(model=torch_model, tokenizer=tokenizer, aligners=[]),
        "ONNX Runtime": MultimodalNERPipeline(
            model=ORTModelForITA.from_pretrained(onnx_dir), tokenizer=tokenizer, aligners=[]
        ),
    }
    test = load_from_disk(str(shards))["test"].select(range(ONNX_SPEED_TWEETS))
    inputs = [{"text": item.text, "visual_context": item.visual_context} for item in items]
    inputs += [{"text": " ".join(row["tokens"]), "visual_context": row["visual_context"]} for row in test]
    outputs, seconds = {}, {}
    for name, pipe in pipes.items():
        pipe(inputs[:2])  # warm-up
        started = time.perf_counter()
        outputs[name] = [pipe(i["text"], visual_context=i["visual_context"]) for i in inputs]
        seconds[name] = time.perf_counter() - started
    same = sum(
        [(e["entity_group"], e["start"], e["end"]) for e in a] == [(e["entity_group"], e["start"], e["end"]) for e in b]
        for a, b in zip(outputs["PyTorch"], outputs["ONNX Runtime"])
    )
    score_gap = max(
        (
            abs(x["score"] - y["score"])
            for a, b in zip(outputs["PyTorch"], outputs["ONNX Runtime"])
            for x, y in zip(a, b)
        ),
        default=0.0,
    )
    ratio = seconds["PyTorch"] / seconds["ONNX Runtime"]
    summary = (
        f"ONNX Runtime vs PyTorch on {len(inputs)} tweets at batch 1: identical entities for {same}/{len(inputs)}, "
        f"max |Δ score| {score_gap:.1e}, {ratio:.2f}× the speed "
        f"({len(inputs) / seconds['ONNX Runtime']:.1f} vs {len(inputs) / seconds['PyTorch']:.1f} tweets/s)"
    )
    print("      " + summary)
    (OUTPUT / "onnx-comparison.json").write_text(
        json.dumps(
            {
                "tweets": len(inputs),
                "identical_entities": same,
                "max_score_gap": score_gap,
                "speed_ratio": ratio,
                "seconds": seconds,
            },
            indent=2,
        )
    )
    return summary


def main() -> int:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    step(1, "Finding the data")
    try:
        data = locate_data(os.environ.get("DATA_DIR"), REPO.parent / "shared" / "data", OUTPUT / "data")
    except DataNotFoundError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 2
    print(f"      using {data}")
    step(2, "Preprocessing Twitter-2017 with its BLIP-2 captions and PGIM knowledge into Arrow shards")
    shards, context, budget = build_shards(data)
    step(3, "Training a small ITA model with cross-view alignment on the offline MiniLM encoder")
    model_dir = train_model(shards, context, budget)
    step(4, 'Serving it: pipeline("multimodal-ner", model=..., trust_remote_code=True)')
    items = run_pipeline(model_dir, data)
    step(5, "Exporting to ONNX and running the same inputs through ONNX Runtime")
    onnx_summary = compare_onnx(model_dir, items, shards)
    step(6, "Writing the report")
    summary = f"{dev_scores(model_dir, context)}. {onnx_summary}."
    report = write_report(items, OUTPUT / "report.html", summary)
    print(f"      {report}  (open it in a browser)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
