"""Shards that go to the Hub and come back: the repository folder (Parquet with the images in it, the dataset card, the
settings without paths) round-trips through `load_dataset`, `--push-to-hub` checks the Hub before any work and sends
that folder, and `train.py` trains on the shards and on `--dataset_name`, whose model the pipeline then runs."""

import json
from pathlib import Path
from unittest import mock

import pytest
import yaml
from datasets import Dataset, Image, Value, load_dataset, load_from_disk
from huggingface_hub import constants as hub_constants

import train
from configuration_ita import ITAConfig
from helpers import LABELS, render_text, save_tiny_encoder, tiny_train_argv
from preprocess import DataFormatError, preprocess
from preprocess.__main__ import main
from preprocess.publish import push_shards, write_hub_folder
from preprocess.shards import SETTINGS_FILE
from tiny_datasets import SIGNS, png, tiny_mner_dataset, tweet_rows

REPO_ID = "me/tiny-mner"
NOTE = "Research use only, as the source data."
HUB_FILES = [
    "README.md",
    "data/test-00000.parquet",
    "data/train-00000.parquet",
    "data/validation-00000.parquet",
    SETTINGS_FILE,
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """The tiny dataset saved to disk, then preprocessed with real RapidOCR on its rendered signs."""
    work = tmp_path_factory.mktemp("shards")
    tiny_mner_dataset().save_to_disk(str(work / "saved"))
    assert main(["--data", str(work / "saved"), "--aligner", "rapidocr:threads=1", "--out", str(work / "ocr")]) == 0
    return work / "ocr"


@pytest.fixture(scope="module")
def hub_folder(shards, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hub") / "tiny-mner"
    assert write_hub_folder(shards, folder, REPO_ID, "cc-by-4.0", NOTE) == HUB_FILES
    return folder


def test_the_hub_folder_round_trips_the_shards_and_their_images_through_parquet(shards, hub_folder, tmp_path):
    saved = load_from_disk(str(shards))
    loaded = load_dataset(str(hub_folder))
    assert list(loaded) == ["train", "validation", "test"]
    for split in saved:
        assert loaded[split].features == saved[split].features and isinstance(saved[split].features["image"], Image)
        assert loaded[split].to_list() == saved[split].to_list()
    # ... and through save_to_disk / load_from_disk again, the images' bytes intact.
    loaded.save_to_disk(str(tmp_path / "again"))
    again = load_from_disk(str(tmp_path / "again"))["train"].cast_column("image", Image(decode=False))["image"]
    assert [image and image["bytes"] for image in again] == [png(sign) if sign else None for sign in SIGNS]
    published = (hub_folder / SETTINGS_FILE).read_text()
    assert str(shards.parent) not in published and json.loads(published)["data"]["train"]["dataset"] == "saved"


def test_shards_with_image_paths_are_published_with_the_images_bytes(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, sign in enumerate(SIGNS[:3]):
        (images / f"sign{i}.png").write_bytes(png(sign))
    rows = tweet_rows(range(3))
    rows["image"] = [f"sign{i}.png" for i in range(3)]
    features = tiny_mner_dataset()["train"].features.copy()
    features["image"] = Value("string")
    preprocess(data=Dataset.from_dict(rows, features=features), out=tmp_path / "shards", images_dir=images)
    assert load_from_disk(str(tmp_path / "shards"))["train"].features["image"] == Value("string")
    write_hub_folder(tmp_path / "shards", tmp_path / "hub", REPO_ID, "other")
    published = load_dataset(str(tmp_path / "hub"))["train"]
    assert isinstance(published.features["image"], Image)
    stored = published.cast_column("image", Image(decode=False))["image"]
    assert stored == [{"bytes": png(sign), "path": f"sign{i}.png"} for i, sign in enumerate(SIGNS[:3])]


def test_the_dataset_card_names_the_source_licence_aligners_and_counts_per_split(shards, hub_folder):
    card = (hub_folder / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["license"] == "cc-by-4.0" and metadata["task_categories"] == ["token-classification"]
    assert metadata["configs"] == [
        {
            "config_name": "default",
            "data_files": [{"split": split, "path": f"data/{split}-*"} for split in ("train", "validation", "test")],
        }
    ]
    fingerprint = load_from_disk(str(shards.parent / "saved"))["train"]._fingerprint
    assert (
        f"- **train**: the `train` split of the dataset `saved` (fingerprint `{fingerprint}`); **8 tweets in, 8 out** "
        "(every tweet kept)" in card
    )
    assert "- **test**: the `test` split of the dataset `saved`" in card and "**4 tweets in, 4 out**" in card
    assert f"**Licence:** `cc-by-4.0`. {NOTE}" in card
    assert "- `rapidocr`; min_chars: `2`; min_score: `0.5`; threads: `1`" in card
    assert "| | train | validation | test |\n|---|---|---|---|\n" in card
    assert "| tweets | 8 | 4 | 4 |" in card and "| with visual context | 6 | 3 | 3 |" in card
    assert "| from `ocr:rapidocr` | 6 | 3 | 3 |" in card and "| with an alignment error | 0 | 0 | 0 |" in card
    assert f'load_dataset("{REPO_ID}")' in card and f"python train.py --dataset_name {REPO_ID}" in card
    assert "`" + "`, `".join(LABELS) + "`" in card
    assert "{{" not in card and "{%" not in card and str(shards.parent) not in card


def test_push_sends_the_hub_folder_to_a_dataset_repository(shards):
    sent = {}

    def upload_folder(folder_path, **kwargs):
        sent["files"] = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        sent["folder"] = Path(folder_path)
        return mock.Mock(commit_url="https://huggingface.co/datasets/me/tiny-mner/commit/1")

    with mock.patch("ita_training.hub.HfApi") as api_class:
        api = api_class.return_value
        api.upload_folder.side_effect = upload_folder
        url = push_shards(shards, REPO_ID, "cc-by-4.0", NOTE, token="hf_x", private=True)
    assert url.endswith("/commit/1") and sent["files"] == HUB_FILES
    api_class.assert_called_once_with(token="hf_x")
    api.create_repo.assert_called_once_with(REPO_ID, repo_type="dataset", private=True, exist_ok=True)
    assert api.upload_folder.call_args.kwargs["repo_type"] == "dataset"
    # Written next to the shards, and removed once sent.
    assert sent["folder"].parent == shards.parent and not sent["folder"].exists()


def test_cli_push_checks_the_hub_before_any_work_and_uploads_after_it(shards, tmp_path, capsys):
    saved = shards.parent / "saved"
    base = ["--data", str(saved), "--push-to-hub", REPO_ID, "--out", str(tmp_path / "out")]
    assert main(base) == 2
    assert "error: --push-to-hub needs --license" in capsys.readouterr().err
    assert main([*base, "--license", "cc-by-4.0"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        error
        == f"error: --push-to-hub {REPO_ID}: HF_HUB_OFFLINE=1 keeps the Hub off; unset it to upload, or leave out --push-to-hub"
    )
    assert not (tmp_path / "out").exists()
    with mock.patch("ita_training.hub.HfApi") as api_class, mock.patch.object(hub_constants, "HF_HUB_OFFLINE", False):
        api = api_class.return_value
        api.whoami.return_value = {"name": "me"}
        api.upload_folder.return_value = mock.Mock(commit_url="https://hf.co/c/2")
        assert main([*base, "--push_to_hub", REPO_ID, "--license", "cc-by-4.0", "--private"]) == 0
    assert "uploaded to https://hf.co/c/2" in capsys.readouterr().out
    assert [call[0] for call in api.method_calls] == ["whoami", "create_repo", "create_repo", "upload_folder"]
    assert api.create_repo.call_args_list[0] == mock.call(REPO_ID, repo_type="dataset", private=True, exist_ok=True)
    # A failed upload is one line, and the complete shards are reused by the same command.
    with mock.patch("ita_training.hub.HfApi") as api_class, mock.patch.object(hub_constants, "HF_HUB_OFFLINE", False):
        api_class.return_value.upload_folder.side_effect = ConnectionError("connection reset")
        assert main([*base, "--license", "cc-by-4.0"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f"error: uploading to the dataset repository {REPO_ID} failed (ConnectionError: connection reset); the shards "
        f"in {tmp_path / 'out'} are complete: the same command uploads them again"
    )


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory, minilm_dir) -> Path:
    return save_tiny_encoder(tmp_path_factory.mktemp("encoder"), minilm_dir)


def test_trained_from_the_shards_and_from_dataset_name_then_tagged_by_the_pipeline(
    shards, hub_folder, tiny_encoder, tmp_path
):
    from transformers import pipeline

    options = ("--max_steps", "2", "--max_context_tokens", "16")
    from_shards = train.run(*train.parse_args(tiny_train_argv(shards, tiny_encoder, tmp_path / "a", *options)))
    argv = tiny_train_argv(hub_folder, tiny_encoder, tmp_path / "b", *options, data_option="--dataset_name")
    from_hub = train.run(*train.parse_args(argv))
    assert from_hub["train"]["train_loss"] == pytest.approx(from_shards["train"]["train_loss"])
    for output_dir in (tmp_path / "a", tmp_path / "b"):
        config = ITAConfig.from_pretrained(output_dir)
        # The aligner that made the context comes from the settings beside the data, in both forms.
        assert [spec["type"] for spec in config.aligners] == ["rapidocr"] and config.labels == LABELS
    assert "ITA on tiny-mner" in (tmp_path / "b" / "README.md").read_text()
    ner = pipeline(model=str(tmp_path / "b"), trust_remote_code=True)
    tagged = ner("Obama visits Paris today", image=render_text("PARIS"), return_visual_context=True)
    assert tagged["visual_context"] == "PARIS"
    assert all(entity["entity_group"] in {"PER", "LOC", "ORG", "MISC"} for entity in tagged["entities"])
    with pytest.raises(ValueError, match="is a save_to_disk folder: give it as --dataset_path"):
        train.run(
            *train.parse_args(tiny_train_argv(shards, tiny_encoder, tmp_path / "c", data_option="--dataset_name"))
        )


def test_train_reads_the_data_once_and_a_hub_id_offline_says_how_to_pass_a_folder(tmp_path):
    with pytest.raises(ValueError, match=r"Give the data once: --dataset_path \(a shards folder\) or --dataset_name"):
        train.parse_args(["--dataset_path", "x", "--dataset_name", "y", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="Give the data: --dataset_path .* or --dataset_name"):
        train.prepare_data(train.DataArguments())
    with pytest.raises(DataFormatError) as error:
        train.prepare_data(train.DataArguments(dataset_name="nobody/no-such-mner"))
    assert str(error.value).startswith("--dataset_name nobody/no-such-mner: no local folder or file has this name")
    assert str(error.value).endswith(
        "`datasets.load_dataset('nobody/no-such-mner').save_to_disk('FOLDER')`, then pass --dataset_path FOLDER"
    )
