"""The preprocess CLI and the Arrow shards it writes: full Twitter-2015/2017, odd images, kill and resume.

The readers are tested in test_readers.py, kills at every phase and races in test_shards.py."""

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_from_disk

from preprocess import preprocess
from preprocess.__main__ import build_parser, main
from tiny_datasets import tiny_mner_dataset

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"train": "train", "validation": "valid", "test": "test"}
TWEETS = {"twitter2015": (4000, 1000, 3257), "twitter2017": (3373, 723, 723)}
ENTITIES = {"twitter2015": (6166, 1541, 5072), "twitter2017": (6049, 1324, 1351)}
CAPTIONS = {"twitter2015": "BLIP2_15.txt", "twitter2017": "BLIP2_17.txt"}
EMPTY_CAPTIONS = {"71406", "770560"}


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m preprocess` from the checkout, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "preprocess", *args], cwd=REPO, env=env, capture_output=True, text=True, **kwargs
    )


def write_umt(path: Path, tweets: list[tuple[str, list[str], list[str]]]) -> Path:
    """Write tweets as a UMT file (image id, tokens, tags), without the final blank line like Twitter-2015."""
    blocks = [
        "IMGID:" + image + "\n" + "".join(f"{t}\t{g}\n" for t, g in zip(tokens, tags)) for image, tokens, tags in tweets
    ]
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


# --- full benchmarks with the released BLIP-2 captions ----------------------------------------------


@pytest.fixture(scope="module", params=["twitter2015", "twitter2017"])
def blip2_shards(request, shared_data, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(name) / "shards"
    preprocess(
        data=[shared_data / name],
        out=out,
        aligners=[{"type": "precomputed", "paths": [str(shared_data / "captions" / "blip2" / CAPTIONS[name])]}],
    )
    return name, out


def test_blip2_shards_counts_labels_and_captions(blip2_shards, shared_data):
    name, out = blip2_shards
    assert not out.with_name(out.name + ".partial").exists()
    shards = load_from_disk(str(out))
    assert list(shards) == ["train", "validation", "test"]
    assert tuple(len(shards[s]) for s in shards) == TWEETS[name]
    tags = shards["train"].features["ner_tags"].feature
    types = sorted(["LOC", "MISC" if name == "twitter2017" else "OTHER", "ORG", "PER"])
    assert tags.names == ["O"] + [f"{p}-{t}" for t in types for p in "BI"]
    begins = [tags.names.index(f"B-{t}") for t in types]
    assert tuple(sum(tag in begins for row in shards[s]["ner_tags"] for tag in row) for s in shards) == ENTITIES[name]
    captions = {}
    for line in (shared_data / "captions" / "blip2" / CAPTIONS[name]).read_text(encoding="utf-8").splitlines():
        image, _, caption = line.partition(" :")
        captions[image.removesuffix(".jpg")] = caption.strip()
    for split in shards:
        for row in shards[split].select_columns(["image_id", "caption", "visual_context", "context_sources"]):
            caption = captions[row["image_id"]]
            if row["image_id"] in EMPTY_CAPTIONS:
                assert row == {**row, "caption": [], "visual_context": "", "context_sources": []}
            else:
                assert row == {
                    **row,
                    "caption": [caption],
                    "visual_context": caption,
                    "context_sources": ["caption:precomputed"],
                }
    assert not any(e for s in shards for e in shards[s]["alignment_error"])


def test_blip2_shards_tokens_are_byte_identical_to_the_source(blip2_shards, shared_data):
    name, out = blip2_shards
    shards = load_from_disk(str(out))
    for split, stem in SPLITS.items():
        names = shards[split].features["ner_tags"].feature.names
        rebuilt = "".join(
            f"IMGID:{row['image_id']}\n"
            + "".join(f"{t}\t{names[g]}\n" for t, g in zip(row["tokens"], row["ner_tags"]))
            + "\n"
            for row in shards[split]
        ).encode("utf-8")
        source = (shared_data / name / f"{stem}.txt").read_bytes()
        assert rebuilt.rstrip(b"\n") == source.rstrip(b"\n")


def test_finished_run_is_reused_and_other_settings_are_refused(blip2_shards, shared_data):
    name, out = blip2_shards
    before = (out / "train" / "data-00000-of-00001.arrow").stat().st_mtime_ns
    context = str(shared_data / "captions" / "blip2" / CAPTIONS[name])
    result = run_cli("--data", str(shared_data / name), "--context", context, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "already complete" in result.stderr
    for split, stem, count in zip(SPLITS, SPLITS.values(), TWEETS[name]):
        assert f"{split}: {count} tweets in ({stem}.txt), {count} out, " in result.stdout
    assert (out / "train" / "data-00000-of-00001.arrow").stat().st_mtime_ns == before
    result = run_cli("--data", str(shared_data / name), "--context", context, "--separator", " ; ", "--out", str(out))
    assert result.returncode == 2 and "different settings (changed: builder)" in result.stderr


# --- precomputed context files: recorded by name, checksum and source ------------------------------


def test_context_files_are_recorded_without_paths_and_reruns_match_any_spelling(tmp_path, monkeypatch, caplog, capsys):
    data = write_umt(tmp_path / "train.txt", [("1", ["Obama", "speaks"], ["B-PER", "O"]), ("2", ["Paris"], ["B-LOC"])])
    captions = tmp_path / "real" / "BLIP2_tiny.txt"
    captions.parent.mkdir()
    captions.write_text("1.jpg :a man in a dark suit\n2.jpg :the eiffel tower at night\n", encoding="utf-8")
    (tmp_path / "link").symlink_to(captions.parent)
    out = tmp_path / "shards"
    source = "BLIP-2 captions, PGIM release"
    first = ["--data", str(data), "--context", str(captions), "--context-source", source, "--max-words", "3"]
    assert main([*first, "--out", str(out)]) == 0
    settings = json.loads((out / "preprocess_settings.json").read_text())
    record = {"name": "BLIP2_tiny.txt", "sha256": hashlib.sha256(captions.read_bytes()).hexdigest(), "source": source}
    assert settings["aligners"] == [{"type": "precomputed", "precomputed": True, "files": [record], "format": "auto"}]
    assert settings["builder"]["max_words"] == 3
    assert load_from_disk(str(out))["train"]["visual_context"] == ["a man in", "the eiffel tower"]

    # The same file through a symlinked folder and a relative path is the same setting: the finished work is reused.
    monkeypatch.chdir(tmp_path)
    rerun = ["--data", "train.txt", "--context", "link/BLIP2_tiny.txt", "--context-source", source, "--max-words", "3"]
    with caplog.at_level(logging.INFO):
        assert main([*rerun, "--out", "shards"]) == 0
    assert "already complete" in caplog.text
    # Another source, or other bytes under the same name, are other settings.
    capsys.readouterr()
    assert main(["--data", "train.txt", "--context", "link/BLIP2_tiny.txt", "--max-words", "3", "--out", "shards"]) == 2
    assert "different settings (changed: aligners)" in capsys.readouterr().err
    captions.write_text("1.jpg :a woman\n2.jpg :the eiffel tower at night\n", encoding="utf-8")
    assert main([*rerun, "--out", "shards"]) == 2
    assert "different settings (changed: aligners)" in capsys.readouterr().err
    # The file rewritten in place is read again, not taken from this process's aligner cache.
    assert main([*rerun, "--out", "shards", "--overwrite"]) == 0
    assert load_from_disk("shards")["train"]["visual_context"] == ["a woman", "the eiffel tower"]


def test_context_source_option_and_its_honest_default(tmp_path):
    captions = tmp_path / "caps.txt"
    captions.write_text("1.jpg :a dog\n", encoding="utf-8")
    common = ["--data", "d", "--out", "o"]
    args = build_parser().parse_args(
        [*common, "--context", str(captions), "--context", str(captions), "--context-source", "GIT captions"]
    )
    assert [spec.get("source") for spec in args.aligners] == [None, "GIT captions"]
    for bad in (
        ["--context-source", "x"],
        ["--aligner", "rapidocr", "--context-source", "x"],
        ["--context", str(captions), "--context-source", "x", "--context-source", "y"],
        ["--context", str(captions), "--context-source", " "],
    ):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*common, *bad])
    data = write_umt(tmp_path / "train.txt", [("1", ["Rex"], ["B-PER"])])
    preprocess(data=[data], out=tmp_path / "out", aligners=[{"type": "precomputed", "paths": [str(captions)]}])
    settings = json.loads((tmp_path / "out" / "preprocess_settings.json").read_text())
    assert settings["aligners"][0]["files"][0]["source"] == "precomputed file caps.txt"
    with pytest.raises(ValueError, match="name no files here: give their paths"):
        preprocess(data=[data], out=tmp_path / "again", aligners=[settings["aligners"][0]])


# --- real aligners on odd images --------------------------------------------------------------------


@pytest.fixture()
def odd_images(tmp_path, shared_data) -> tuple[Path, Path]:
    """A tiny dataset whose images are real text images, a PNG behind a .jpg name, missing and corrupt files."""
    images = tmp_path / "images"
    images.mkdir()
    for image in ("27", "33", "102"):
        shutil.copy(shared_data / "images" / "twitter2015" / f"{image}.jpg", images)
    (images / "666.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    data = tmp_path / "data"
    data.mkdir()
    write_umt(
        data / "train.txt",
        [
            ("27", ["Love", "hurts"], ["O", "O"]),
            ("404", ["Where", "is", "Paris"], ["O", "O", "B-LOC"]),
            ("33", ["LinkedIn", "skills"], ["B-ORG", "O"]),
            ("666", ["Broken", "image"], ["O", "O"]),
            ("102", ["Athletico", "Madrid"], ["B-ORG", "I-ORG"]),
        ],
    )
    (data / "contexts.jsonl").write_text(json.dumps({"image_id": "404", "caption": "a map of france"}) + "\n")
    return data, images


def test_cli_with_rapidocr_records_errors_keeps_every_tweet_and_is_deterministic(odd_images, tmp_path):
    data, images = odd_images
    common = [
        "--data",
        str(data / "train.txt"),
        "--images",
        str(images),
        "--context",
        str(data / "contexts.jsonl"),
        "--aligner",
        "rapidocr:threads=1",
        "--batch-size",
        "2",
    ]
    one = run_cli(*common, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    assert "train: 5 tweets in (train.txt), 5 out, 4 with visual context, 2 with alignment errors" in one.stdout
    two = run_cli(*common, "--num-proc", "2", "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr
    rows = load_from_disk(str(tmp_path / "one"))["train"].to_list()
    assert load_from_disk(str(tmp_path / "two"))["train"].to_list() == rows
    by_image = {row["image_id"]: row for row in rows}
    assert [row["image_id"] for row in rows] == ["27", "404", "33", "666", "102"]
    assert by_image["27"]["visual_context"] == "The more people you love, the weaker you are."
    assert by_image["27"]["context_sources"] == ["ocr:rapidocr"]
    assert by_image["102"]["ocr"] == ["ATHLETICO"]
    assert by_image["33"]["ocr"][0] == "Most endorsed for..." and by_image["33"]["alignment_error"] == ""
    assert by_image["404"]["alignment_error"] == f"image not found: {images / '404.jpg'}"
    assert by_image["404"]["visual_context"] == "a map of france"
    assert by_image["404"]["context_sources"] == ["caption:precomputed"]
    assert by_image["666"]["alignment_error"].startswith(f"cannot read image {images / '666.jpg'}")
    assert by_image["666"]["visual_context"] == "" and by_image["666"]["tokens"] == ["Broken", "image"]
    settings = json.loads((tmp_path / "one" / "preprocess_settings.json").read_text())
    assert [a["type"] for a in settings["aligners"]] == ["precomputed", "rapidocr"]


def test_jsonl_dataset_with_a_tweet_without_image(odd_images, tmp_path):
    _, images = odd_images
    rows = [
        {"tokens": ["Love"], "tags": ["O"], "image": "27.jpg", "id": "a"},
        {"tokens": ["No", "image", "Obama"], "tags": ["O", "O", "B-PER"], "image": "", "id": "b"},
    ]
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    shards = preprocess(data=[data], out=tmp_path / "out", aligners=[{"type": "rapidocr"}], images_dir=images)
    assert list(shards) == ["validation"]
    first, second = shards["validation"].to_list()
    assert (first["id"], first["image_id"], first["ocr"]) == (
        "a",
        "27",
        ["The more people you love,", "the weaker you are."],
    )
    assert (second["id"], second["image_id"], second["visual_context"], second["alignment_error"]) == ("b", "", "", "")
    assert shards["validation"].features["ner_tags"].feature.names == ["O", "B-PER", "I-PER"]


def test_cli_refuses_image_aligners_without_images(odd_images, tmp_path):
    data, _ = odd_images
    result = run_cli("--data", str(data / "train.txt"), "--aligner", "rapidocr", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "read images: pass the images folder (--images)" in result.stderr


def test_killed_run_resumes_without_redoing_finished_chunks(tmp_path, shared_data):
    images = shared_data / "images" / "twitter2015"
    ids = sorted(p.stem for p in images.glob("*.jpg"))[:12]
    data = write_umt(tmp_path / "train.txt", [(i, ["tweet", i], ["O", "O"]) for i in ids])
    out = tmp_path / "shards"
    args = [
        "-m",
        "preprocess",
        "--data",
        str(data),
        "--images",
        str(images),
        "--aligner",
        "rapidocr:threads=1",
        "--chunk-size",
        "2",
        "--batch-size",
        "1",
        "--out",
        str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    chunks = out.with_name("shards.partial") / "train"
    deadline = time.time() + 240
    while not (chunks / "chunk-00000002-00000004").is_dir():
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()
    finished = sorted(p for p in chunks.iterdir() if not p.name.endswith(".tmp"))
    assert 2 <= len(finished) < 6
    assert all(len(load_from_disk(str(p))) == 2 for p in finished)
    resumed = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    skipped = [line for line in resumed.stderr.splitlines() if "already done" in line]
    assert len(skipped) == len(finished)
    rows = load_from_disk(str(out))["train"].to_list()
    assert [row["image_id"] for row in rows] == ids
    assert not any(row["alignment_error"] for row in rows)
    fresh = run_cli(*args[2:-1], str(tmp_path / "fresh"), timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    assert load_from_disk(str(tmp_path / "fresh"))["train"].to_list() == rows


def one_error_line(stderr: str) -> str:
    """The run's error: exactly one `error:` line, and no traceback of any process."""
    assert "Traceback" not in stderr, stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    return line


def test_an_aligner_model_that_cannot_load_is_one_line_naming_it_before_anything_is_written(tmp_path):
    saved = tmp_path / "saved"
    tiny_mner_dataset().save_to_disk(str(saved))
    aligner = "object-detection:model=nobody/no-such-detector"
    result = run_cli("--data", str(saved), "--aligner", aligner, "--num-proc", "2", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert line.startswith("error: aligner object-detection cannot load the model 'nobody/no-such-detector' (OSError:")
    assert line.endswith(
        "HF_HUB_OFFLINE=1 is set: download the model where the Hub is reachable (hf download nobody/no-such-detector) "
        "so that it is in the cache, or give model= a local folder"
    )
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())


def test_a_model_that_fails_only_in_the_map_workers_is_one_line_too(tmp_path):
    from transformers import YolosConfig

    # Its config is found before the run starts; the weights are missing, which only building the model shows.
    detector = tmp_path / "detector-without-weights"
    YolosConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37).save_pretrained(
        detector
    )
    saved = tmp_path / "saved"
    tiny_mner_dataset().save_to_disk(str(saved))
    aligner = f"object-detection:model={detector}"
    result = run_cli("--data", str(saved), "--aligner", aligner, "--num-proc", "2", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: aligner object-detection cannot load the model '{detector}' (OSError: ")
    assert "found in directory" in line  # the message of the error the pipeline quotes, not its traceback
    assert line.endswith(
        f"the folder {detector} holds no complete model: save one there (save_pretrained) or give model= a Hub id"
    )


def test_a_missing_package_says_to_install_it():
    from preprocess.aligner_loading import load_failure

    error = load_failure(
        {"type": "object-detection", "model": "facebook/detr-resnet-50"},
        ImportError("DetrConvEncoder requires the timm library but it was not found in your environment.\nYou can..."),
    )
    assert str(error) == (
        "aligner object-detection cannot load the model 'facebook/detr-resnet-50' (ImportError: DetrConvEncoder "
        "requires the timm library but it was not found in your environment. You can...); install the package the "
        "error names, or choose a model that does not need it"
    )


def test_a_failing_aligner_costs_only_the_failing_tweets():
    from aligners_ita import Aligner
    from preprocess.align import BatchAligner

    class PickyAligner(Aligner):
        """Fails on any batch that holds the id 'bad', like a model that chokes on one odd image."""

        type = "test-picky"
        segments = ("caption",)
        precomputed = True

        def __init__(self):  # aligners take their settings as keyword arguments; this one has none
            super().__init__()

        def settings(self):
            return {}

        def align(self, images, image_ids=None):
            if "bad" in image_ids:
                raise RuntimeError("cannot handle this one")
            return [{"caption": [f"caption of {i}"]} for i in image_ids]

    batch = {
        "id": ["0", "1", "2"],
        "tokens": [["x"], ["y"], ["z"]],
        "image_id": ["a", "bad", "c"],
        "image": ["a.jpg", "bad.jpg", "c.jpg"],
    }
    out = BatchAligner([{"type": "test-picky"}], {}, images_dir=None)(batch)
    assert out["visual_context"] == ["caption of a", "", "caption of c"]
    assert out["alignment_error"] == ["", "test-picky: RuntimeError: cannot handle this one", ""]
    assert out["context_sources"] == [["caption:test-picky"], [], ["caption:test-picky"]]


def test_aligners_that_read_the_tweet_get_its_words_joined_and_the_segments_before_them():
    from aligners_ita import Aligner
    from preprocess.align import BatchAligner

    class EchoKnowledge(Aligner):
        """Writes what it was given: the tweet and the caption an earlier aligner made, for every image of a batch."""

        type = "test-echo-knowledge"
        segments = ("knowledge",)
        precomputed = True  # reads ids only, so no image files are needed here
        needs_text = True
        batches = []

        def __init__(self):
            super().__init__()

        def settings(self):
            return {}

        def align(self, images, image_ids=None, texts=None, segments=None):
            EchoKnowledge.batches.append(list(image_ids))
            return [{"knowledge": [f"{t} / {s['caption']}"]} for t, s in zip(texts, segments)]

    class Captions(Aligner):
        type = "test-id-captions"
        segments = ("caption",)
        precomputed = True

        def __init__(self):
            super().__init__()

        def settings(self):
            return {}

        def align(self, images, image_ids=None):
            return [{"caption": [f"picture {i}"]} for i in image_ids]

    batch = {
        "id": ["0", "1"],
        "tokens": [["Kawhi", "Leonard", "wins"], ["RT", "@NBA", ":", "Warriors"]],
        "image_id": ["a", "b"],
        "image": ["a.jpg", "b.jpg"],
    }
    specs = [{"type": "test-id-captions"}, {"type": "test-echo-knowledge"}]
    out = BatchAligner(specs, {"order": ["caption", "knowledge"]}, images_dir=None)(batch)
    assert out["knowledge"] == [["Kawhi Leonard wins / ['picture a']"], ["RT @NBA : Warriors / ['picture b']"]]
    assert EchoKnowledge.batches == [["a", "b"]]  # one call for the batch
    assert out["context_sources"][0] == ["caption:test-id-captions", "knowledge:test-echo-knowledge"]
