"""train.py end to end on a tiny random encoder: training, the Hub folder, resume, push, the optimiser schedule."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from unittest import mock

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Sequence
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError
from safetensors.torch import load_file
from seqeval.metrics import f1_score
from transformers import AutoTokenizer

import train
from fresh_process import run_fresh_python
from helpers import LABELS, REPO, run_python, save_tiny_encoder, tiny_train_argv
from ita_training.hub import (
    IGNORE_PATTERNS,
    HubAccessError,
    IncompleteHubFolderError,
    check_hub_access,
    check_hub_folder,
    push_folder,
)
from ita_training.trainer import ITATrainer
from modeling_ita import ITAForTokenClassification
from pipeline_ita import MultimodalNERPipeline
from preprocess.shards import SETTINGS_FILE
from tiny_shards import FEATURES, TWEETS, dev_and_test, save_splits, tiny_rows


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """The tiny shards with every segment filled, and settings that name an OCR aligner besides the captions."""
    rows = tiny_rows(all_segments=True)
    folder = save_splits(tmp_path_factory.mktemp("data") / "tiny-shards", train=rows, **dev_and_test(rows))
    settings = {
        "aligners": [
            {
                "type": "precomputed",
                "precomputed": True,
                "format": "auto",
                "files": [{"name": "BLIP2_17.txt", "sha256": "0" * 64, "source": "BLIP-2 captions, PGIM release"}],
            },
            {"type": "rapidocr", "precomputed": False, "min_score": 0.5, "min_chars": 2, "threads": None},
        ],
        "builder": {
            "order": ["caption", "objects", "ocr"],
            "separator": " | ",
            "max_words_per_segment": None,
            "max_words": None,
        },
    }
    (folder / SETTINGS_FILE).write_text(json.dumps(settings))
    return folder


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory, minilm_dir) -> Path:
    """A one-layer random BERT with the MiniLM tokenizer, saved like a Hub encoder."""
    return save_tiny_encoder(tmp_path_factory.mktemp("encoder"), minilm_dir)


def train_args(shards: Path, encoder: Path, output_dir: Path, *extra: str) -> list[str]:
    """This file's runs: 6 epochs, the context rebuilt from the captions alone, no word dropout."""
    options = ("--num_train_epochs", "6", "--context_columns", "caption", "--word_dropout", "0.0")
    return tiny_train_argv(shards, encoder, output_dir, *options, *extra)


@pytest.fixture(scope="module")
def trained(shards, tiny_encoder, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run") / "ita-tiny"
    results = train.run(
        *train.parse_args(train_args(shards, tiny_encoder, output_dir, "--hub_model_id", "me/ita-tiny"))
    )
    return output_dir, results


def test_help_lists_the_ita_options():
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    for option in (
        "--encoder_name_or_path",
        "--dataset_path",
        "--dataset_name",
        "--dataset_config_name",
        "--dataset_title",
        "--context_columns",
        "--cva",
        "--cva_temperature",
        "--cva_weight",
        "--crf_learning_rate",
        "--gradient_accumulation_steps",
        "--max_grad_norm",
        "--push_to_hub",
        "--hub_model_id",
        "--bf16",
    ):
        assert option in result.stdout, option


def test_training_lowers_the_loss_and_writes_both_modes(trained):
    output_dir, results = trained
    losses = [
        entry["loss"]
        for entry in json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
        if "loss" in entry
    ]
    assert len(losses) == 12  # 8 tweets, batch 4, 6 epochs
    assert sum(losses[-2:]) < 0.75 * sum(losses[:2]), losses
    test = json.loads((output_dir / "test_results.json").read_text())
    # Each mode's F1 is seqeval's on the tags the saved model gives the 4 test tweets through the pipeline.
    ner = MultimodalNERPipeline(
        model=ITAForTokenClassification.from_pretrained(output_dir),
        tokenizer=AutoTokenizer.from_pretrained(output_dir),
        aligners=[],
    )
    gold = [tags.split() for _, tags, _ in TWEETS[4:]]
    for mode, with_context in (("with_context", True), ("text_only", False)):
        rows = [
            {"tokens": text.split(), "visual_context": caption if with_context else ""}
            for text, _, caption in TWEETS[4:]
        ]
        predicted = [
            [word["entity"] for word in words] for words in ner(rows, aggregation_strategy="none", ignore_labels=[])
        ]
        assert test[f"test_{mode}_f1"] == pytest.approx(f1_score(gold, predicted)), (mode, predicted)
        assert test[f"test_{mode}_number"] == 8  # entities in the 4 test tweets
    assert test["test_mean_f1"] == pytest.approx((test["test_with_context_f1"] + test["test_text_only_f1"]) / 2)
    # The dev metrics reported are those of the epoch whose weights were kept.
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert results["eval"]["eval_mean_f1"] == pytest.approx(state["best_metric"])
    assert len(results["epoch_train_seconds"]) == 6 and results["epoch_steps"] == [2] * 6


def test_context_columns_rebuild_the_context_and_record_its_aligner(trained, shards):
    output_dir, _ = trained
    config = json.loads((output_dir / "config.json").read_text())
    # Only the precomputed captions fed the context; the OCR aligner's segment was not used.
    assert [spec["type"] for spec in config["aligners"]] == ["precomputed"]
    assert config["context_order"] == ["caption", "objects", "ocr"] and config["context_separator"] == " | "
    datasets, context = train.prepare_data(train.DataArguments(dataset_path=str(shards), context_columns=["caption"]))
    assert datasets["train"][0]["visual_context"] == "a basketball player on a court"
    assert datasets["train"][3]["visual_context"] == ""
    assert context["context_columns"] == ["caption"]
    text_only, context = train.prepare_data(train.DataArguments(dataset_path=str(shards), context_columns=["none"]))
    assert set(text_only["train"]["visual_context"]) == {""} and context["aligners"] == []
    with pytest.raises(ValueError, match="Unknown context columns"):
        train.prepare_data(train.DataArguments(dataset_path=str(shards), context_columns=["pixels"]))


def test_output_folder_is_a_complete_hub_repo_that_loads_as_a_pipeline_in_a_fresh_process(trained, tmp_path):
    output_dir, _ = trained
    files = check_hub_folder(output_dir)
    for name in (
        "config.json",
        "model.safetensors",
        "configuration_ita.py",
        "modeling_ita.py",
        "crf_ita.py",
        "pipeline_ita.py",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "test_results.json",
    ):
        assert name in files, name
    assert not any(name.startswith("checkpoint-") for name in files)
    config = json.loads((output_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForTokenClassification"] == "modeling_ita.ITAForTokenClassification"
    assert config["custom_pipelines"]["multimodal-ner"]["impl"] == "pipeline_ita.MultimodalNERPipeline"
    code = (
        "from transformers import pipeline\n"
        f"ner = pipeline(model={str(output_dir)!r}, trust_remote_code=True)\n"
        "assert type(ner).__name__ == 'MultimodalNERPipeline', type(ner)\n"
        "out = ner('Obama visits Paris today', visual_context='a man in a suit', aggregation_strategy='none')\n"
        "assert all(e['entity'] in ner.model.config.label2id and 0 <= e['score'] <= 1 for e in out), out\n"
        "print('TAGGED', len(out))\n"
    )
    result = run_fresh_python(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TAGGED" in result.stdout


def test_push_uploads_the_checked_folder_without_checkpoints(trained):
    output_dir, _ = trained
    assert any(output_dir.glob("checkpoint-*"))
    with mock.patch("ita_training.hub.HfApi") as api_class:
        api = api_class.return_value
        api.upload_folder.return_value = mock.Mock(commit_url="https://huggingface.co/me/ita-tiny/commit/abc")
        url = push_folder(output_dir, "me/ita-tiny", token="hf_test", private=True)
    assert url.endswith("/commit/abc")
    api_class.assert_called_once_with(token="hf_test")
    api.create_repo.assert_called_once_with("me/ita-tiny", repo_type="model", private=True, exist_ok=True)
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "me/ita-tiny" and Path(kwargs["folder_path"]) == output_dir
    # What huggingface_hub would send: the folder filtered by the ignore patterns.
    from huggingface_hub.utils import filter_repo_objects

    all_files = [str(p.relative_to(output_dir)) for p in output_dir.rglob("*") if p.is_file()]
    sent = set(filter_repo_objects(all_files, ignore_patterns=kwargs["ignore_patterns"]))
    assert kwargs["ignore_patterns"] == IGNORE_PATTERNS
    assert sent == set(check_hub_folder(output_dir))
    assert {"model.safetensors", "config.json", "README.md", "modeling_ita.py", "pipeline_ita.py"} <= sent


def test_push_refuses_an_incomplete_folder(trained, tmp_path):
    output_dir, _ = trained
    for name in ("config.json", "model.safetensors", "modeling_ita.py", "crf_ita.py"):
        (tmp_path / name).write_bytes((output_dir / name).read_bytes())
    with mock.patch("ita_training.hub.HfApi") as api_class, pytest.raises(IncompleteHubFolderError) as error:
        push_folder(tmp_path, "me/ita-tiny")
    api_class.return_value.upload_folder.assert_not_called()
    message = str(error.value)
    for missing in ("configuration_ita.py", "pipeline_ita.py", "tokenizer files", "README.md"):
        assert missing in message, message


def test_push_to_hub_flag_pushes_the_finished_folder(shards, tiny_encoder, tmp_path):
    output_dir = tmp_path / "pushed"
    argv = train_args(
        shards,
        tiny_encoder,
        output_dir,
        "--num_train_epochs",
        "1",
        "--push_to_hub",
        "True",
        "--hub_model_id",
        "me/ita-push",
        "--hub_token",
        "hf_x",
    )
    with (
        mock.patch("ita_training.hub.HfApi") as api_class,
        mock.patch.object(hub_constants, "HF_HUB_OFFLINE", False),
        mock.patch.object(ITATrainer, "training_step", autospec=True, side_effect=ITATrainer.training_step) as step,
    ):
        api = api_class.return_value
        api.whoami.side_effect = lambda: {"name": "me"} if not step.called else pytest.fail("checked after training")
        api.upload_folder.return_value = mock.Mock(commit_url="https://hf.co/c/1")
        results = train.run(*train.parse_args(argv))
    assert results["hub_commit"] == "https://hf.co/c/1"
    # The repository is checked and created before the first step (as Trainer does), the folder uploaded at the end.
    assert [call[0] for call in api.method_calls] == ["whoami", "create_repo", "create_repo", "upload_folder"]
    assert api.create_repo.call_args_list[0] == mock.call(
        "me/ita-push", repo_type="model", private=False, exist_ok=True
    )
    assert Path(api.upload_folder.call_args.kwargs["folder_path"]) == output_dir
    assert "me/ita-push" in (output_dir / "README.md").read_text()


def test_push_to_hub_fails_in_one_line_before_the_first_step_when_the_hub_is_off(shards, tiny_encoder, tmp_path):
    output_dir = tmp_path / "never"
    argv = train_args(shards, tiny_encoder, output_dir, "--push_to_hub", "True", "--hub_model_id", "me/ita-push")
    result = run_python(["train.py", *argv], timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --push_to_hub me/ita-push: HF_HUB_OFFLINE=1 keeps the Hub off; unset it to upload, or leave out "
        "--push_to_hub"
    )
    assert not any(output_dir.glob("checkpoint-*")) and not (output_dir / "model.safetensors").exists()


def hub_error(status: int) -> HfHubHTTPError:
    """The error huggingface_hub raises for an HTTP answer with `status`."""
    response = mock.Mock(status_code=status, headers={}, url="https://huggingface.co/api/whoami-v2")
    return HfHubHTTPError(f"{status} Client Error", response=response)


@pytest.mark.parametrize(
    ("whoami", "create_repo", "message"),
    [
        (LocalTokenNotFoundError("no token"), None, "not logged in to the Hub; run `hf auth login` or give a token"),
        (hub_error(401), None, "the Hub refuses the token (401); log in again with `hf auth login`"),
        (ConnectionError("[Errno -2] Name or service not known"), None, "cannot reach the Hub (ConnectionError: "),
        ({"name": "me"}, hub_error(403), "me cannot create or write this model repository (403: 403 Client Error)"),
    ],
)
def test_hub_access_is_checked_with_one_line_errors(whoami, create_repo, message):
    with mock.patch("ita_training.hub.HfApi") as api_class, mock.patch.object(hub_constants, "HF_HUB_OFFLINE", False):
        api = api_class.return_value
        api.whoami.side_effect = whoami if isinstance(whoami, Exception) else lambda: whoami
        api.create_repo.side_effect = create_repo
        with pytest.raises(HubAccessError) as error:
            check_hub_access("org/repo", token="hf_x")
    assert str(error.value).startswith("--push_to_hub org/repo: ") and message in str(error.value)
    assert "\n" not in str(error.value)
    with pytest.raises(
        HubAccessError, match=r"--push_to_hub needs the repository to upload to \(train.py: --hub_model_id"
    ):
        check_hub_access(None)


def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run(shards, tiny_encoder, tmp_path):
    full = tmp_path / "full"
    train.run(
        *train.parse_args(
            train_args(
                shards,
                tiny_encoder,
                full,
                "--num_train_epochs",
                "2",
                "--save_total_limit",
                "3",
                "--load_best_model_at_end",
                "False",
            )
        )
    )
    # The same 2-epoch run, stopped after epoch 1 (its checkpoint copied), then resumed.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "checkpoint-2").symlink_to(full / "checkpoint-2", target_is_directory=True)

    with mock.patch.object(ITATrainer, "training_step", autospec=True, side_effect=ITATrainer.training_step) as step:
        results = train.run(
            *train.parse_args(
                train_args(
                    shards, tiny_encoder, resumed, "--num_train_epochs", "2", "--load_best_model_at_end", "False"
                )
            )
        )
    # Only epoch 2 ran in the resumed process; the history of epoch 1 came with the checkpoint.
    assert step.call_count == 2
    state = json.loads((resumed / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and results["epoch_steps"] == [2, 2]
    assert len([e for e in state["log_history"] if "loss" in e]) == 4
    expected, got = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_crf_group_has_its_own_rate_and_both_decay_linearly_to_zero(tiny_encoder, tmp_path):
    from ita_training.trainer import ITATrainer, ITATrainingArguments

    model = ITAForTokenClassification.from_encoder(str(tiny_encoder), labels=LABELS)
    args = ITATrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=1e-4,
        crf_learning_rate=5e-2,
        max_steps=4,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
    )
    trainer = ITATrainer(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(tiny_encoder))
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    groups = trainer.optimizer.param_groups
    crf_ids = {id(p) for p in model.crf.parameters()}
    assert [{id(p) for p in g["params"]} == crf_ids for g in groups] == [False, False, True]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    rates = []
    for _ in range(4):
        rates.append([g["lr"] for g in groups])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    # No warm-up, linear decay to 0 (docs/method.md §4), the same factor for every group.
    for step, (decay, no_decay, crf) in enumerate(rates):
        assert decay == pytest.approx(1e-4 * (1 - step / 4)) and no_decay == decay
        assert crf == pytest.approx(5e-2 * (1 - step / 4))
    assert [g["weight_decay"] for g in groups][2] == 0.0


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_options_can_come_from_a_config_file(tmp_path, suffix):
    import yaml

    options = {
        "dataset_path": "shards/t15",
        "output_dir": str(tmp_path / "out"),
        "encoder_name_or_path": "xlm-roberta-large",
        "context_columns": ["caption", "ocr"],
        "cva_temperature": 4.0,
        "crf_learning_rate": 0.01,
        "gradient_accumulation_steps": 2,
        "cva": False,
    }
    path = tmp_path / f"config{suffix}"
    path.write_text(yaml.safe_dump(options) if suffix == ".yaml" else json.dumps(options))
    model_args, data_args, training_args = train.parse_args([str(path)])
    assert (model_args.encoder_name_or_path, model_args.cva_temperature) == ("xlm-roberta-large", 4.0)
    assert data_args.context_columns == ["caption", "ocr"] and data_args.dataset_path == "shards/t15"
    assert (training_args.crf_learning_rate, training_args.gradient_accumulation_steps, training_args.cva) == (
        0.01,
        2,
        False,
    )
    # docs/method.md §4 defaults for what the file leaves out.
    # No warm-up: transformers 5 has only `warmup_steps` (a float below 1 is a ratio), 4.x also `warmup_ratio`.
    assert (
        training_args.learning_rate,
        training_args.per_device_train_batch_size,
        training_args.max_grad_norm,
        training_args.num_train_epochs,
        training_args.warmup_steps,
    ) == (5e-6, 4, 5.0, 10.0, 0)
    assert getattr(training_args, "warmup_ratio", 0.0) == 0.0
    assert training_args.metric_for_best_model == "mean_f1" and training_args.lr_scheduler_type.value == "linear"


def evaluate_args(checkpoint: Path, shards: Path, output_dir: Path) -> list[str]:
    """`train.py` options that only evaluate `checkpoint` on the dev and test splits of `shards`."""
    return [
        "--model_name_or_path",
        str(checkpoint),
        "--do_train",
        "False",
        "--dataset_path",
        str(shards),
        "--context_columns",
        "caption",
        "--output_dir",
        str(output_dir),
        "--disable_tqdm",
        "True",
    ]


def test_evaluating_a_saved_checkpoint_reproduces_its_test_results(trained, shards, tmp_path):
    output_dir, results = trained
    evaluated = train.run(*train.parse_args(evaluate_args(output_dir, shards, tmp_path / "eval-only")))
    for name, value in results["test"].items():
        if not name.endswith("runtime") and name != "epoch":
            assert evaluated["test"][name] == pytest.approx(value), name
    saved = json.loads((tmp_path / "eval-only" / "test_results.json").read_text())
    assert saved["test_text_only_f1"] == pytest.approx(results["test"]["test_text_only_f1"])
    assert not (tmp_path / "eval-only" / "model.safetensors").exists()


def test_model_settings_default_to_itaconfigs_defaults():
    from configuration_ita import ITAConfig

    model_args, _, _ = train.parse_args(["--dataset_path", "x", "--output_dir", "y"])
    settings = {k: v for k, v in asdict(model_args).items() if k not in train.MODEL_SOURCES}
    assert {"word_dropout", "cva_temperature", "max_context_tokens", "crf_bio_constraints"} <= set(settings)
    config = ITAConfig()
    assert settings == {name: getattr(config, name) for name in settings}


def test_sample_counts_below_one_are_refused():
    for option, value in (("--max_train_samples", "0"), ("--max_eval_samples", "-1")):
        with pytest.raises(ValueError, match=f"{option} {value}: give a positive number"):
            train.parse_args(["--dataset_path", "x", "--output_dir", "y", option, value])


def test_empty_and_missing_splits_are_clear_errors(tiny_encoder, tmp_path):
    rows = tiny_rows()
    empty = {name: [] for name in rows}
    shards = save_splits(tmp_path / "shards", train=empty, validation=rows, test=rows)
    argv = train_args(shards, tiny_encoder, tmp_path / "out")
    with pytest.raises(ValueError, match="Split 'train' has no tweets"):
        train.run(*train.parse_args(argv))
    with pytest.raises(
        ValueError,
        match=r"--validation_split 'dev': .* has no such split \(it has \['test', 'train', "
        r"'validation'\]\)",
    ):
        train.run(*train.parse_args([*argv, "--validation_split", "dev"]))


def test_unusable_tweets_are_all_named_by_split_row_and_id_before_any_training(tiny_encoder, tmp_path):
    rows = tiny_rows()
    bad = tiny_rows()
    bad["tokens"][2], bad["ner_tags"][2] = [], []  # a 0-token tweet
    bad["tokens"][5] = ["Google", "", "Microsoft", "shares", "fall"]
    bad["ner_tags"][7] = bad["ner_tags"][7][:-1]
    bad["id"] = [f"v{i}" for i in range(len(bad["id"]))]
    shards = save_splits(tmp_path / "shards", train=rows, validation=bad, test=rows)
    with mock.patch("train.ITAForTokenClassification.from_encoder") as build, pytest.raises(ValueError) as error:
        train.run(*train.parse_args(train_args(shards, tiny_encoder, tmp_path / "out")))
    build.assert_not_called()
    assert not (tmp_path / "out").exists()
    message = str(error.value)
    assert message.startswith("Split 'validation' has 3 tweet(s) that cannot be used")
    assert "row 2 (id 'v2'): no tokens" in message
    assert "row 5 (id 'v5'): an empty or non-string word" in message
    assert "row 7 (id 'v7'): 5 tokens but 4 ner_tags" in message


def test_a_split_with_another_tag_set_is_refused(tiny_encoder, tmp_path):
    rows = tiny_rows()
    other = Dataset.from_dict(rows, features=FEATURES).cast_column(
        "ner_tags", Sequence(ClassLabel(names=LABELS[:-2] + ["B-EVENT", "I-EVENT"]))
    )
    folder = tmp_path / "shards"
    DatasetDict(
        {
            "train": Dataset.from_dict(rows, features=FEATURES),
            "validation": Dataset.from_dict(rows, features=FEATURES),
            "test": other,
        }
    ).save_to_disk(str(folder))
    with pytest.raises(ValueError, match="Split 'test' tags .*B-EVENT.*every split needs the same tag set"):
        train.run(*train.parse_args(train_args(folder, tiny_encoder, tmp_path / "out")))


def test_evaluating_a_checkpoint_needs_no_train_split_but_checks_dev_and_test(trained, tmp_path):
    output_dir, results = trained
    rows = tiny_rows()
    shards = save_splits(tmp_path / "dev-test", **dev_and_test(rows))
    evaluated = train.run(*train.parse_args(evaluate_args(output_dir, shards, tmp_path / "eval-only")))
    assert evaluated["test"]["test_mean_f1"] == pytest.approx(results["test"]["test_mean_f1"])
    rows["tokens"][6], rows["ner_tags"][6] = [], []
    bad = save_splits(tmp_path / "bad", **dev_and_test(rows))
    with pytest.raises(ValueError, match=r"(?s)Split 'test' has 1 tweet\(s\).*row 2 \(id '6'\): no tokens"):
        train.run(*train.parse_args(evaluate_args(output_dir, bad, tmp_path / "eval-only")))


def test_the_collator_names_the_row_it_cannot_encode(minilm_tokenizer):
    from ita_training.collator import ITADataCollator

    collator = ITADataCollator(minilm_tokenizer)
    with pytest.raises(ValueError, match=r"Row 't9': Cannot encode an empty tweet"):
        collator([{"id": "t9", "tokens": [], "ner_tags": [], "visual_context": ""}])


def test_a_given_data_collator_is_kept_and_a_missing_one_is_itas(tiny_encoder, tmp_path):
    from ita_training.collator import ITADataCollator
    from ita_training.trainer import ITATrainer, ITATrainingArguments

    model = ITAForTokenClassification.from_encoder(str(tiny_encoder), labels=LABELS)
    args = ITATrainingArguments(
        output_dir=str(tmp_path), eval_strategy="no", save_strategy="no", load_best_model_at_end=False
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)

    def own_collator(rows):
        return rows

    for given in ({"data_collator": own_collator}, {}):
        trainer = ITATrainer(model=model, args=args, processing_class=tokenizer, **given)
        if given:
            assert trainer.data_collator is own_collator
        else:
            assert isinstance(trainer.data_collator, ITADataCollator) and trainer.data_collator.text_view == args.cva
    positional = ITATrainer(model, args, own_collator, processing_class=tokenizer)
    assert positional.data_collator is own_collator
