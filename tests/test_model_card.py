"""The README model card: rendered offline from the top-level template, with metadata and numbers from the run,
and a trained output folder that names nothing of the machine it was trained on."""

import json
import os
import re
import socket
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml
from datasets import Dataset
from huggingface_hub import ModelCard

import train
from configuration_ita import DEFAULT_CONTEXT_ORDER, ITAConfig
from helpers import LABELS, REPO, tiny_train_argv
from ita_training.hub import check_hub_folder
from ita_training.model_card import (
    MINILM_HUB_ID,
    ContextSources,
    count_context_sources,
    encoder_hub_id,
    find_template,
    write_model_card,
)
from tiny_shards import CAPTIONED, TWEETS, write_caption_shards

# A precomputed spec records its files by name, checksum and what produced them.
CAPTIONS = {
    "type": "precomputed",
    "precomputed": True,
    "format": "auto",
    "files": [{"name": "BLIP2_17.txt", "sha256": "9f2c" * 16, "source": "BLIP-2 captions, PGIM release"}],
}
# Other aligner types take any settings, a local model folder among them.
OCR = {"type": "rapidocr", "precomputed": False, "min_score": 0.5, "model_dir": "/opt/models/rapidocr-v4"}
SOURCES = ContextSources(tweets=3373, with_context=3301, segments={"caption": 3301})


def metrics(prefix: str, with_context: float, text_only: float) -> dict:
    result = {}
    for mode, f1 in (("with_context", with_context), ("text_only", text_only)):
        key = f"{prefix}_{mode}_"
        result.update(
            {
                key + "precision": f1 + 0.01,
                key + "recall": f1 - 0.01,
                key + "f1": f1,
                key + "strict_f1": f1 - 0.02,
                key + "number": 1351,
            }
        )
        for i, entity in enumerate(("LOC", "MISC", "ORG", "PER")):
            result.update(
                {
                    f"{key}{entity}_precision": 0.5,
                    f"{key}{entity}_recall": 0.5,
                    f"{key}{entity}_f1": 0.6 + i / 10,
                    f"{key}{entity}_number": 100,
                }
            )
    result[f"{prefix}_mean_f1"] = (with_context + text_only) / 2
    return result


def render(
    folder: Path,
    encoder: str = "xlm-roberta-large",
    context_sources: ContextSources = SOURCES,
    aligners: tuple = (CAPTIONS, OCR),
    live_aligners: tuple = (),
) -> str:
    config = ITAConfig(
        labels=LABELS,
        cva_temperature=2.0,
        cva_weight=0.5,
        max_context_tokens=64,
        aligners=list(aligners),
        live_aligners=list(live_aligners),
    )

    def no_network(*args, **kwargs):
        raise AssertionError("rendering the model card tried to open a network connection")

    with mock.patch.object(socket.socket, "connect", no_network):
        path = write_model_card(
            folder,
            config=config,
            encoder=encoder,
            dataset_name="twitter2017-blip2",
            dataset_sizes={"train": 3373, "validation": 723, "test": 723},
            context_sources=context_sources,
            hyperparameters={
                "learning_rate": 5e-6,
                "crf_learning_rate": 0.05,
                "training_steps": 8433,
                "epochs_trained": 10.0,
                "cva": True,
                "seed": 42,
            },
            eval_metrics=metrics("eval", 0.8812, 0.8733),
            test_metrics=metrics("test", 0.8975, 0.8911),
            model_id="me/ita-t17",
        )
    return path.read_text(encoding="utf-8")


def card_metadata(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


@pytest.fixture
def card(tmp_path):
    return render(tmp_path)


def test_metadata_has_a_model_index_for_both_inference_modes(card):
    metadata = card_metadata(card)
    assert metadata["base_model"] == "xlm-roberta-large" and metadata["library_name"] == "transformers"
    assert "multimodal-ner" in metadata["tags"]
    (entry,) = metadata["model-index"]
    found = {(r["dataset"]["name"], m["type"]): m["value"] for r in entry["results"] for m in r["metrics"]}
    assert found[("twitter2017-blip2 (with visual context)", "f1")] == pytest.approx(0.8975)
    assert found[("twitter2017-blip2 (text only)", "f1")] == pytest.approx(0.8911)
    assert found[("twitter2017-blip2 (text only)", "precision")] == pytest.approx(0.9011)
    assert [(r["dataset"]["config"], r["dataset"]["split"]) for r in entry["results"]] == [
        ("with_context", "test"),
        ("text_only", "test"),
    ]
    # huggingface_hub reads it back as the same card data.
    assert ModelCard(card).data.eval_results[0].metric_value == pytest.approx(0.8975)


def test_metadata_has_a_widget_example(card):
    (example,) = card_metadata(card)["widget"]
    assert example["text"] == "Kawhi Leonard wins the fan vote for Block of the Year" and example["example_title"]
    assert ModelCard(card).data.widget == card_metadata(card)["widget"]


def test_body_lists_labels_context_sources_and_hyperparameters(card):
    assert "# ITA on twitter2017-blip2" in card
    assert "`B-PER`" in card and "`I-MISC`" in card and "LOC, MISC, ORG, PER" in card
    assert (
        "3301 of 3373 training tweets had one, built from caption (3301 tweets); segment order "
        f"{' → '.join(DEFAULT_CONTEXT_ORDER)}, joined with ` | `"
    ) in card
    assert "on, T = 2.0, λ = 0.5" in card
    assert "| crf_learning_rate | `0.05` |" in card and "| training_steps | `8433` |" in card
    assert "train 3373, validation 723, test 723 tweets" in card
    assert "[`xlm-roberta-large`](https://huggingface.co/xlm-roberta-large)" in card


def test_aligner_specs_are_rendered_without_absolute_paths(card, tmp_path):
    # Every key a spec has is shown; an absolute path only by its file name.
    assert (
        '`precomputed` (precomputed, looked up by image id); format: `auto`; files: `[{"name": "BLIP2_17.txt", '
        '"sha256": "' + "9f2c" * 16 + '", "source": "BLIP-2 captions, PGIM release"}]`'
    ) in card
    assert "`rapidocr`; min_score: `0.5`; model_dir: `rapidocr-v4`" in card and "/opt/models" not in card
    assert "reads no new image" not in card  # the OCR aligner reads new images
    precomputed_only = render(tmp_path, aligners=(CAPTIONS,))
    assert "reads no new image" in precomputed_only
    live = render(
        tmp_path,
        aligners=(CAPTIONS,),
        live_aligners=({"type": "image-to-text", "model": "Salesforce/blip-image-captioning-base"},),
    )
    assert "**Live aligners for new images**" in live and "reads no new image" not in live
    assert "`image-to-text`; model: `Salesforce/blip-image-captioning-base`" in live


def test_context_without_sources_recorded_or_at_all(tmp_path):
    unrecorded = render(tmp_path, context_sources=ContextSources(tweets=10, with_context=4, segments={}))
    assert "4 of 10 training tweets had one, built from segments the data does not record;" in unrecorded
    text_only = render(tmp_path, context_sources=ContextSources(tweets=10, with_context=0, segments={}), aligners=())
    assert "**Visual context:** none (text-only training)" in text_only and "Aligners that produced it" not in text_only


def test_metric_tables_show_both_modes_in_percent(card):
    assert "| with visual context | 90.75 | 88.75 | 89.75 | 87.75 | 60.00 | 70.00 | 80.00 | 90.00 |" in card
    assert "| text only | 90.11 | 88.11 | 89.11 | 87.11 | 60.00 | 70.00 | 80.00 | 90.00 |" in card
    assert "| Inference mode | Precision | Recall | F1 | Strict IOB2 F1 | LOC F1 | MISC F1 | ORG F1 | PER F1 |" in card
    assert "| with visual context | 89.12 | 87.12 | 88.12 | 86.12 |" in card  # validation


def test_usage_snippets_limitations_and_citation(card):
    assert 'pipeline(model="me/ita-t17", trust_remote_code=True)' in card
    assert "python -m ita_onnx export me/ita-t17 onnx-model/" in card
    assert "## Limitations" in card and "@inproceedings{wang-etal-2022-ita" in card
    assert "{{" not in card and "{%" not in card


def test_repository_link_comes_from_the_distribution_metadata_or_is_left_out(tmp_path):
    url = "https://example.org/ita-code"
    with mock.patch("ita_training.model_card.repository_url", return_value=url):
        linked = render(tmp_path)
    assert f"Code: [{url}]({url})" in linked and f"[the ITA repository]({url})" in linked
    with mock.patch("ita_training.model_card.repository_url", return_value=None):
        unlinked = render(tmp_path)
    assert "Code:" not in unlinked and "the `ita_onnx` package of the ITA code" in unlinked


def test_the_template_is_the_checkouts_top_level_file_or_the_installed_data_file(tmp_path, monkeypatch):
    import importlib.metadata

    from ita_training import model_card

    assert find_template() == REPO / "model_card.md"
    # Installed from a wheel: no checkout beside the package, the data file under <prefix>/share/ita-mner/.
    site = tmp_path / "lib" / "site-packages"
    monkeypatch.setattr(model_card, "__file__", str(site / "ita_training" / "model_card.py"))
    installed = tmp_path / "share" / "ita-mner" / "model_card.md"
    installed.parent.mkdir(parents=True)
    installed.write_text("{{ card_data }}")
    record = importlib.metadata.PackagePath("../../share/ita-mner/model_card.md")
    record.locate = lambda: site / record
    other = importlib.metadata.PackagePath("ita_training/model_card.py")
    distribution = mock.Mock(files=[other, record])
    with mock.patch("importlib.metadata.distribution", return_value=distribution) as found:
        assert find_template() == installed
    found.assert_called_once_with("ita-mner")
    distribution.files = [other]
    with (
        mock.patch("importlib.metadata.distribution", return_value=distribution),
        pytest.raises(FileNotFoundError, match="model_card.md is neither at .* nor installed with ita-mner"),
    ):
        find_template()


def test_encoder_hub_id_never_guesses(minilm_dir, tmp_path):
    assert encoder_hub_id(str(minilm_dir)) == MINILM_HUB_ID == "sentence-transformers/all-MiniLM-L6-v2"
    assert encoder_hub_id(os.path.relpath(minilm_dir)) == MINILM_HUB_ID
    assert encoder_hub_id("xlm-roberta-large") == "xlm-roberta-large"
    assert encoder_hub_id("FacebookAI/xlm-roberta-large") == "FacebookAI/xlm-roberta-large"
    # A copy of the MiniLM files elsewhere, or any other folder, is not known.
    local = tmp_path / "all-MiniLM-L6-v2"
    local.mkdir()
    (local / "config.json").write_text((minilm_dir / "config.json").read_text())
    assert encoder_hub_id(str(local)) is None
    assert encoder_hub_id("/no/such/encoder") is None
    assert train.default_encoder() == str(minilm_dir)


def test_a_local_encoder_is_named_by_its_folder_only(tmp_path):
    local = tmp_path / "my-encoder"
    local.mkdir()
    card = render(tmp_path, encoder=str(local))
    assert "base_model" not in card_metadata(card)
    assert "a local encoder (`my-encoder`)" in card and str(tmp_path) not in card


def test_context_sources_are_counted_on_the_data(tmp_path):
    shards = write_caption_shards(tmp_path / "shards")
    train_split = Dataset.load_from_disk(str(shards / "train"))
    counted = count_context_sources(train_split, ["caption", "objects", "ocr"])
    assert counted == ContextSources(tweets=len(TWEETS), with_context=CAPTIONED, segments={"caption": CAPTIONED})
    # Without the `context_sources` column the segment columns of tweets with a context count.
    rows = {
        "visual_context": ["a cat | SALE", "", "SALE", "a dog"],
        "caption": [["a cat"], ["a hat"], [], ["a dog"]],
        "objects": [[], [], [], []],
        "ocr": [["SALE"], [], ["SALE"], []],
    }
    assert count_context_sources(Dataset.from_dict(rows), ["caption", "objects", "ocr"]) == ContextSources(
        tweets=4, with_context=3, segments={"caption": 2, "ocr": 2}
    )
    # Several aligners of one segment count the tweet once; the order is the context order.
    rows = {
        "visual_context": ["x", "y"],
        "context_sources": [["ocr:rapidocr", "caption:blip2", "caption:precomputed"], ["caption:blip2"]],
    }
    assert count_context_sources(Dataset.from_dict(rows), ["caption", "objects", "ocr"]).segments == {
        "caption": 2,
        "ocr": 1,
    }


# --- A trained output folder ---------------------------------------------------------------------------------

TRAIN_STEPS = 3  # 8 tweets at batch 4: one and a half epochs


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_caption_shards(tmp_path_factory.mktemp("data") / "caption-shards")


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory, minilm_dir, shards) -> Path:
    output_dir = tmp_path_factory.mktemp("run") / "ita-minilm"
    options = ("--max_steps", str(TRAIN_STEPS), "--learning_rate", "1e-4", "--max_context_tokens", "32")
    train.run(*train.parse_args(tiny_train_argv(shards, minilm_dir, output_dir, *options)))
    return output_dir


def published_files(folder: Path) -> list[Path]:
    return [
        folder / "README.md",
        folder / "config.json",
        folder / "trainer_state.json",
        *sorted(folder.glob("*_results.json")),
    ]


def json_strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from json_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from json_strings(item)
    elif isinstance(value, str):
        yield value


def test_trained_folder_holds_no_path_of_this_machine(trained_folder, tmp_path_factory):
    check_hub_folder(trained_folder)
    machine = {str(tmp_path_factory.getbasetemp()), str(REPO), sys.prefix, os.path.realpath(sys.prefix)}
    for path in published_files(trained_folder):
        text = path.read_text(encoding="utf-8")
        assert "site-packages" not in text, path.name
        for prefix in machine:
            assert prefix not in text, (path.name, prefix)
        if path.suffix == ".json":
            absolute = [s for s in json_strings(json.loads(text)) if os.path.isabs(s)]
            assert not absolute, (path.name, absolute)
        else:
            on_disk = [p for p in re.findall(r"(?<![\w:/.])/[^\s`'\"()\[\]|]+", text) if Path(p.rstrip(".")).exists()]
            assert not on_disk, on_disk


def test_only_the_published_trainer_state_is_rewritten(trained_folder):
    state = json.loads((trained_folder / "trainer_state.json").read_text())
    best = state["best_model_checkpoint"]
    assert best.startswith("checkpoint-") and (trained_folder / best).is_dir()
    # Resuming reads the checkpoints' own state: it keeps the path transformers wrote.
    inner = json.loads((trained_folder / best / "trainer_state.json").read_text())
    assert inner["best_model_checkpoint"] == str(trained_folder / best)


def test_trained_card_names_minilm_by_its_hub_id_and_reports_what_ran(trained_folder):
    card = (trained_folder / "README.md").read_text(encoding="utf-8")
    assert card_metadata(card)["base_model"] == MINILM_HUB_ID
    assert card.count(f"[`{MINILM_HUB_ID}`](https://huggingface.co/{MINILM_HUB_ID})") == 2
    state = json.loads((trained_folder / "trainer_state.json").read_text())
    table = dict(re.findall(r"^\| (\w+) \| `([^`]*)` \|$", card, flags=re.MULTILINE))
    assert int(table["training_steps"]) == state["global_step"] == TRAIN_STEPS
    assert float(table["epochs_trained"]) == pytest.approx(state["epoch"], abs=0.005) and state["epoch"] == 1.5
    assert int(table["max_steps"]) == TRAIN_STEPS and "num_train_epochs" not in table


def test_trained_card_lists_the_context_sources_of_the_data(trained_folder, shards):
    card = (trained_folder / "README.md").read_text(encoding="utf-8")
    (listed,) = re.findall(r"training tweets had one, built from (.*?);", card)
    data = Dataset.load_from_disk(str(shards / "train"))
    present = {name: sum(1 for pieces in data[name] if pieces) for name in ("caption", "objects", "ocr")}
    assert present == {"caption": CAPTIONED, "objects": 0, "ocr": 0}
    assert listed == ", ".join(f"{name} ({count} tweets)" for name, count in present.items() if count)
    assert f"{CAPTIONED} of {len(data)} training tweets had one" in card
