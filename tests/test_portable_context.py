"""A portable checkpoint's visual context: precomputed files recorded by name, checksum and source and found only in
the checkpoint's folder (or `context_dir`), a live captioner for new images, and the training-time context builder
rebuilt from the config; checked on checkpoints moved to another folder and opened in a fresh process."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

import train
from aligners_ita import CaptionAligner
from configuration_ita import DEFAULT_CONTEXT_ORDER, ITAConfig
from fresh_process import run_fresh_python
from helpers import (
    CACHE_COMMIT,
    add_to_hub_cache,
    noise_image,
    save_tiny_captioner,
    save_tiny_encoder,
    tiny_ita_model,
)
from images_ita import load_image
from pipeline_ita import MultimodalNERPipeline
from precomputed_ita import PrecomputedAligner, locate_context_file
from preprocess import preprocess
from visual_context_ita import VisualContextBuilder, normalize_spec

CAPTIONS_NAME = "BLIP2_tiny.txt"
CAPTIONS = "1001.jpg :a man in a dark suit waving\n1002.jpg :two dogs on the grass\n"
SOURCE = "BLIP-2 captions, PGIM release"
LIVE_REPO = "tiny-org/tiny-captioner"
CHECKPOINT_REPO = "tiny-org/ita-tiny"
GENERATE = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False, "no_repeat_ngram_size": 1}
# The caps the training contexts were built with; the live captioner's captions are longer, so they matter.
CAPS = {"context_max_words_per_segment": 4, "context_max_words": 6}
TEXT = "Obama visits Paris with Merkel"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, minilm_dir, minilm_tokenizer) -> dict[str, Path]:
    """A checkpoint trained (here: built) on precomputed captions with a live captioner named by its Hub id.

    The captioner and a copy of the checkpoint are put into a Hub cache folder, which the fresh processes read
    offline (`HF_HUB_CACHE`), as they would read downloaded Hub repositories.
    """
    base = tmp_path_factory.mktemp("portable")
    captioner = save_tiny_captioner(base / "captioner", minilm_dir)
    data = base / "data"
    data.mkdir()
    (data / CAPTIONS_NAME).write_text(CAPTIONS, encoding="utf-8")
    model = tiny_ita_model(
        minilm_tokenizer,
        aligners=[PrecomputedAligner(data / CAPTIONS_NAME, source=SOURCE).to_dict()],
        live_aligners=[normalize_spec({"type": "image-to-text", "model": LIVE_REPO, "generate_kwargs": GENERATE})],
        **CAPS,
    )
    checkpoint = base / "trained" / "ckpt"
    model.save_pretrained(checkpoint)
    minilm_tokenizer.save_pretrained(checkpoint)
    shutil.copy(data / CAPTIONS_NAME, checkpoint)
    cache = base / "hub"
    add_to_hub_cache(cache, LIVE_REPO, captioner)
    add_to_hub_cache(cache, CHECKPOINT_REPO, checkpoint)
    return {"checkpoint": checkpoint, "captioner": captioner, "cache": cache, "captions": data / CAPTIONS_NAME}


def copy_checkpoint(workspace, destination: Path, keep_live: bool = True, captions: bool = True) -> Path:
    shutil.copytree(workspace["checkpoint"], destination)
    if not keep_live:
        config = json.loads((destination / "config.json").read_text())
        config["live_aligners"] = []
        (destination / "config.json").write_text(json.dumps(config))
    if not captions:
        (destination / CAPTIONS_NAME).unlink()
    return destination


def rename_context_file(folder: Path, name: str) -> None:
    """Edits `config.json` so that the recorded context file has another name (as a hostile checkpoint could)."""
    config = json.loads((folder / "config.json").read_text())
    config["aligners"][0]["files"][0]["name"] = name
    (folder / "config.json").write_text(json.dumps(config))


# Opens each case's checkpoint with `pipeline(model=..., trust_remote_code=True)` in a fresh process, reads its
# inputs with `return_visual_context=True` and reports results, the text-only entities and the warnings of the
# pipeline and of its aligner building (`visual_context_ita`).
# The Hub cache is set first: huggingface_hub reads it when imported.
CASES_SCRIPT = """
import json, logging
warnings = []
class Keep(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING and record.name.endswith(("pipeline_ita", "visual_context_ita")):
            warnings.append(record.getMessage())
logging.getLogger().addHandler(Keep())
from transformers import pipeline
cases = json.load(open("cases.json"))
report = {}
for name, case in cases.items():
    warnings.clear()
    try:
        ner = pipeline(model=case["model"], trust_remote_code=True, **case.get("kwargs", {}))
    except Exception as err:
        report[name] = {"error": f"{type(err).__name__}: {err}"}
        continue
    results = [ner(dict(text=case["text"], **item), return_visual_context=True) for item in case["inputs"]]
    report[name] = {
        "results": results,
        "given_context": [ner(case["text"], visual_context=r["visual_context"]) for r in results],
        "text_only": ner(case["text"], visual_context=""),
        "warnings": list(warnings),
        "files": [path for aligner in ner.aligners for path in getattr(aligner, "paths", [])],
        "live_models": [aligner.model_name for aligner in ner.live_aligners],
        "pipeline_module": type(ner).__module__,
    }
print(json.dumps(report))
"""


def run_cases(workdir: Path, cache: Path, cases: dict) -> dict:
    (workdir / "cases.json").write_text(json.dumps(cases))
    code = f"os.environ['HF_HUB_CACHE'] = {str(cache)!r}\n" + CASES_SCRIPT
    result = run_fresh_python(code, workdir, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name, case in report.items():
        assert "error" in case or case["pipeline_module"].startswith("transformers_modules."), name
    return report


def strings(value):
    """Every string in a JSON value, keys included."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


def test_config_json_records_the_context_without_any_path(workspace):
    text = (workspace["checkpoint"] / "config.json").read_text()
    config = json.loads(text)
    absolute = [value for value in strings(config) if os.path.isabs(value) or value.startswith("~")]
    assert absolute == [] and str(workspace["checkpoint"].parent.parent) not in text
    digest = hashlib.sha256(CAPTIONS.encode()).hexdigest()
    assert config["aligners"] == [
        {
            "type": "precomputed",
            "precomputed": True,
            "format": "auto",
            "files": [{"name": CAPTIONS_NAME, "sha256": digest, "source": SOURCE}],
        }
    ]
    assert config["live_aligners"] == [
        {
            "type": "image-to-text",
            "precomputed": False,
            "model": LIVE_REPO,
            "generate_kwargs": GENERATE,
            "batch_size": 8,
            "device": None,
        }
    ]
    assert {
        key: config[key]
        for key in (
            "context_order",
            "context_separator",
            "context_max_words_per_segment",
            "context_max_words",
            "context_piece_separators",
        )
    } == {
        "context_order": DEFAULT_CONTEXT_ORDER,
        "context_separator": " | ",
        **CAPS,
        "context_piece_separators": {"objects": ", "},
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "precomputed", "path": "BLIP2_15.txt"}, r"Unknown key\(s\) \['path'\]"),
        ({"type": "precomputed", "paths": ["/data/BLIP2_15.txt"]}, "paths are never recorded"),
        ({"type": "precomputed", "files": []}, "non-empty list"),
        (
            {"type": "precomputed", "files": [{"name": "../../etc/passwd", "sha256": "0" * 64, "source": "x"}]},
            "'../../etc/passwd' is not a bare file name",
        ),
        (
            {"type": "precomputed", "files": [{"name": "/etc/passwd", "sha256": "0" * 64, "source": "x"}]},
            "'/etc/passwd' is not a bare file name",
        ),
        (
            {"type": "precomputed", "files": [{"name": "C:BLIP2.txt", "sha256": "0" * 64, "source": "x"}]},
            "not a bare file name",
        ),
        ({"type": "precomputed", "files": [{"name": "..", "sha256": "0" * 64, "source": "x"}]}, "not a bare file name"),
        ({"type": "precomputed", "files": [{"name": "a.txt", "sha256": "abc", "source": "x"}]}, "64 lowercase hex"),
        ({"type": "precomputed", "files": [{"name": "a.txt", "sha256": "0" * 64, "source": ""}]}, "non-empty str"),
        (
            {"type": "precomputed", "files": [{"name": "a.txt", "sha256": "0" * 64, "source": "x", "path": "/a"}]},
            "is recorded as",
        ),
        (
            {"type": "precomputed", "files": [{"name": "a.txt", "sha256": "0" * 64, "source": "x"}], "format": "csv"},
            "format",
        ),
        ({"type": "rapidocr", "precomputed": "no"}, "'precomputed' flag"),
        ({"type": "image-to-text", "model": object()}, "not JSON-serialisable"),
        ({"model": "x"}, "must be a dict with a 'type'"),
    ],
)
def test_config_refuses_malformed_and_escaping_aligner_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        ITAConfig(aligners=[spec])


def test_config_refuses_precomputed_live_aligners_and_bad_context_settings():
    record = {"name": "a.txt", "sha256": "0" * 64, "source": "x"}
    with pytest.raises(ValueError, match="cannot be a live aligner"):
        ITAConfig(live_aligners=[{"type": "precomputed", "files": [record]}])
    for settings, message in [
        ({"context_max_words": -1}, "context word cap `max_words`"),
        ({"context_max_words_per_segment": 2.5}, "max_words_per_segment"),
        ({"context_order": ["ocr", "ocr"]}, "twice"),
        ({"context_order": "caption"}, "list"),
        ({"context_piece_separators": {"objects": None}}, "piece separators"),
    ]:
        with pytest.raises(ValueError, match=message):
            ITAConfig(**settings)


def test_context_files_are_found_only_in_the_given_folders_and_checksum_verified(tmp_path, monkeypatch):
    record = PrecomputedAligner(write(tmp_path / "good" / CAPTIONS_NAME, CAPTIONS), source=SOURCE).files[0]
    write(tmp_path / "bad" / CAPTIONS_NAME, CAPTIONS.replace("dark", "light"))
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "good")  # a file in the working directory is not a folder given
    with pytest.raises(
        FileNotFoundError, match=rf"'{CAPTIONS_NAME}' \({SOURCE}, sha256 {record['sha256']}\) is not in"
    ):
        locate_context_file(record, [tmp_path / "empty"])
    assert locate_context_file(record, [tmp_path / "empty", tmp_path / "good"]) == tmp_path / "good" / CAPTIONS_NAME
    assert locate_context_file(record, [tmp_path / "bad", tmp_path / "good"]) == tmp_path / "good" / CAPTIONS_NAME
    with pytest.raises(ValueError, match=rf"{tmp_path / 'bad' / CAPTIONS_NAME} has sha256 [0-9a-f]{{64}}"):
        locate_context_file(record, [tmp_path / "bad"])
    with pytest.raises(ValueError, match="not a bare file name"):
        locate_context_file({**record, "name": f"../good/{CAPTIONS_NAME}"}, [tmp_path / "bad"])


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_pipeline_rebuilds_the_training_builder_from_the_config(minilm_tokenizer):
    settings = {
        "context_order": ["ocr", "caption"],
        "context_separator": " ; ",
        "context_max_words_per_segment": 3,
        "context_max_words": 5,
        "context_piece_separators": {"ocr": " / "},
    }
    ner = MultimodalNERPipeline(model=tiny_ita_model(minilm_tokenizer, **settings), tokenizer=minilm_tokenizer)
    assert ner.context_builder.to_dict() == {
        "order": ["ocr", "caption"],
        "separator": " ; ",
        "max_words_per_segment": 3,
        "max_words": 5,
        "piece_separators": {"ocr": " / "},
    }
    assert ner.aligners == [] and ner.live_aligners == []


def test_moved_checkpoint_reads_its_context_file_only_from_its_own_folder_or_context_dir(workspace, tmp_path):
    # A checkpoint with precomputed captions and no live aligner, copied where it was never trained.
    own = copy_checkpoint(workspace, tmp_path / "own", keep_live=False)
    copy_checkpoint(workspace, tmp_path / "bare", keep_live=False, captions=False)
    tampered = copy_checkpoint(workspace, tmp_path / "tampered", keep_live=False)
    (tampered / CAPTIONS_NAME).write_text(CAPTIONS.replace("dark", "light"), encoding="utf-8")
    write(tmp_path / "captions" / CAPTIONS_NAME, CAPTIONS)
    write(tmp_path / CAPTIONS_NAME, CAPTIONS)  # in the working directory: must never be read
    rename_context_file(copy_checkpoint(workspace, tmp_path / "up", keep_live=False), f"../captions/{CAPTIONS_NAME}")
    rename_context_file(
        copy_checkpoint(workspace, tmp_path / "absolute", keep_live=False), str(tmp_path / "captions" / CAPTIONS_NAME)
    )
    inputs = [{"image_id": "1001"}, {"image_id": "1002.jpg"}, {"image_id": "9999"}]
    cases = {
        name: {"model": model, "kwargs": kwargs, "text": TEXT, "inputs": inputs}
        for name, model, kwargs in [
            ("own", "own", {}),
            ("bare", "bare", {}),
            ("bare_context_dir", "bare", {"context_dir": "captions"}),
            ("tampered", "tampered", {}),
            ("tampered_context_dir", "tampered", {"context_dir": "captions"}),
            ("up", "up", {}),
            ("absolute", "absolute", {}),
        ]
    }
    report = run_cases(tmp_path, workspace["cache"], cases)

    # The training caps (4 words per segment) are applied to the precomputed captions too.
    found = ["a man in a", "two dogs on the", ""]
    for name, folder in [
        ("own", own),
        ("bare_context_dir", tmp_path / "captions"),
        ("tampered_context_dir", tmp_path / "captions"),
    ]:
        case = report[name]
        assert [r["visual_context"] for r in case["results"]] == found, name
        assert case["files"] == [str(folder / CAPTIONS_NAME)] and case["warnings"] == [], name
        assert [r["entities"] for r in case["results"]] == case["given_context"], name
    for name, problem in [
        ("bare", f"'{CAPTIONS_NAME}' ({SOURCE}, sha256 "),
        ("tampered", f"{tmp_path / 'tampered' / CAPTIONS_NAME} has sha256 "),
    ]:
        case = report[name]
        assert len(case["warnings"]) == 1 and problem in case["warnings"][0], case["warnings"]
        assert "tagged text-only" in case["warnings"][0] and "context_dir=" in case["warnings"][0]
        assert case["files"] == [] and [r["visual_context"] for r in case["results"]] == ["", "", ""]
        assert [r["entities"] for r in case["results"]] == [case["text_only"]] * 3
    assert "does not match the checksum" in report["tampered"]["warnings"][0]
    for name in ("up", "absolute"):
        assert report[name]["error"].startswith("ValueError: The precomputed-context file name"), report[name]
        assert "is not a bare file name" in report[name]["error"]


def test_live_captioner_gives_new_images_their_context_through_the_training_caps(workspace, tmp_path):
    copy_checkpoint(workspace, tmp_path / "full")
    copy_checkpoint(workspace, tmp_path / "live_only", captions=False)
    noise_image(1).save(tmp_path / "new.jpg")
    noise_image(2).save(tmp_path / "1001.jpg")
    cases = {
        "full": {"model": "full", "text": TEXT, "inputs": [{"image": "new.jpg"}, {"image": "1001.jpg"}]},
        "live_only": {"model": "live_only", "text": TEXT, "inputs": [{"image": "1001.jpg"}, {"image_id": "1002"}]},
        "hub": {"model": CHECKPOINT_REPO, "text": TEXT, "inputs": [{"image": "new.jpg"}, {"image_id": "1002"}]},
    }
    report = run_cases(tmp_path, workspace["cache"], cases)

    captioner = CaptionAligner(str(workspace["captioner"]), generate_kwargs=GENERATE)
    builder = VisualContextBuilder(max_words_per_segment=4, max_words=6)
    expected, uncapped = {}, {}
    for name in ("new.jpg", "1001.jpg"):
        segments = captioner(load_image(tmp_path / name))
        expected[name], _ = builder.build(segments)
        uncapped[name], _ = VisualContextBuilder().build(segments)
        assert len(expected[name].split()) == 4 < len(uncapped[name].split()), uncapped[name]
    assert expected["new.jpg"] != expected["1001.jpg"]

    full, live_only, hub = report["full"], report["live_only"], report["hub"]
    # A new image is captioned live; a known image id keeps its precomputed (capped) caption.
    assert [r["visual_context"] for r in full["results"]] == [expected["new.jpg"], "a man in a"]
    assert full["warnings"] == [] and full["live_models"] == [LIVE_REPO]
    assert [r["entities"] for r in full["results"]] == full["given_context"]
    # Without the precomputed file, every image is captioned live (an image id alone has no pixels to caption).
    assert [r["visual_context"] for r in live_only["results"]] == [expected["1001.jpg"], ""]
    assert len(live_only["warnings"]) == 1 and f"'{CAPTIONS_NAME}'" in live_only["warnings"][0]
    assert "image-to-text (live, for images without precomputed context)" in live_only["warnings"][0]
    # Opened by Hub id, the checkpoint finds its context file in its own repository (here, the offline cache).
    assert [r["visual_context"] for r in hub["results"]] == [expected["new.jpg"], "two dogs on the"]
    assert hub["warnings"] == [] and hub["files"][0].endswith(
        f"models--tiny-org--ita-tiny/snapshots/{CACHE_COMMIT}/{CAPTIONS_NAME}"
    )


def test_train_records_the_shards_context_the_builder_caps_and_the_live_aligner(workspace, tmp_path, minilm_dir):

    tweets = [
        ("1001", "Obama visits Paris", "B-PER O B-LOC"),
        ("1002", "Merkel in Berlin today", "B-PER O B-LOC O"),
    ] * 4
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text(
        "\n".join(
            f"IMGID:{image}\n" + "".join(f"{t}\t{g}\n" for t, g in zip(text.split(), tags.split()))
            for image, text, tags in tweets
        ),
        encoding="utf-8",
    )
    shutil.copy(data / "train.txt", data / "valid.txt")
    shards = tmp_path / "shards"
    preprocess(
        data=[data],
        out=shards,
        builder_settings={"max_words_per_segment": 4, "max_words": 6},
        aligners=[{"type": "precomputed", "paths": [str(workspace["captions"])], "source": SOURCE}],
    )
    encoder = save_tiny_encoder(tmp_path / "encoder", minilm_dir)
    live = json.dumps({"type": "image-to-text", "model": LIVE_REPO, "generate_kwargs": GENERATE})
    output_dir = tmp_path / "run"
    train.run(
        *train.parse_args(
            [
                "--dataset_path",
                str(shards),
                "--encoder_name_or_path",
                str(encoder),
                "--output_dir",
                str(output_dir),
                "--test_split",
                "",
                "--max_steps",
                "1",
                "--per_device_train_batch_size",
                "4",
                "--eval_strategy",
                "no",
                "--save_strategy",
                "no",
                "--load_best_model_at_end",
                "False",
                "--disable_tqdm",
                "True",
                "--live_aligner",
                live,
            ]
        )
    )
    config = json.loads((output_dir / "config.json").read_text())
    assert config["aligners"] == [PrecomputedAligner(workspace["captions"], source=SOURCE).to_dict()]
    assert config["live_aligners"] == [normalize_spec(json.loads(live))]
    assert (config["context_max_words_per_segment"], config["context_max_words"]) == (4, 6)
    assert config["context_piece_separators"] == {"objects": ", "}
    assert [value for value in strings(config) if os.path.isabs(value)] == []
    with pytest.raises(ValueError, match="--live_aligners .*cannot be a live aligner"):
        train.parse_args(["--live_aligner", json.dumps({"type": "precomputed", "paths": [str(workspace["captions"])]})])
    with pytest.raises(ValueError, match="invalid settings for aligner 'image-to-text'"):
        train.parse_args(["--live_aligner", json.dumps({"type": "image-to-text", "modell": LIVE_REPO})])
