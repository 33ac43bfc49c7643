"""The finished output folder as a Hub repository: saving it complete, checking it, uploading it."""

import json
import logging
import re
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from configuration_ita import PIPELINE_TASK

logger = logging.getLogger(__name__)
# Training leftovers that are not part of the model repository.
IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "runs/**", "*.pt", "*.pth", "training_args.bin"]
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
TRAINER_STATE = "trainer_state.json"
# Where a README can hold a path: after a space, quote, bracket or backtick, never inside a URL or a repo id.
PATH_IN_TEXT = re.compile(r"(?<![\w:/.~-])/[^\s`'\"()<>\[\]|,;]+")


class IncompleteHubFolderError(ValueError):
    """The output folder lacks something a user of the Hub repository needs."""


class HubAccessError(ValueError):
    """A Hub repository cannot be written from here; the one-line message says why and what to do."""


def check_hub_access(
    repo_id: str | None,
    token: str | None = None,
    private: bool = False,
    repo_type: str = "model",
    option: str = "--push_to_hub",
) -> str:
    """Checks, before any work, that `repo_id` can be uploaded to, so that a long run does not fail at its end.

    The Hub must be on and reachable and the token valid, and the repository must exist or be created: it is created
    (`exist_ok`) now, as `Trainer` does when it starts.

    Args:
        repo_id: The repository, `owner/name` or `name`.
        token: A Hub token; `None` uses the one `hf auth login` stored.
        private: Create the repository private.
        repo_type: `"model"` or `"dataset"`.
        option: The option that asked for the upload, for messages.

    Returns:
        The repository's URL.

    Raises:
        HubAccessError: No repository id, HF_HUB_OFFLINE set, no or an invalid token, the Hub unreachable, or no
            permission to create or write the repository.
    """
    if not repo_id:
        raise HubAccessError(f"{option} needs the repository to upload to (train.py: --hub_model_id your-name/ita-t17)")
    where = f"{option} {repo_id}"
    if hub_constants.HF_HUB_OFFLINE:
        raise HubAccessError(f"{where}: HF_HUB_OFFLINE=1 keeps the Hub off; unset it to upload, or leave out {option}")
    api = HfApi(token=token)
    try:
        user = api.whoami()["name"]
    except LocalTokenNotFoundError:
        raise HubAccessError(f"{where}: not logged in to the Hub; run `hf auth login` or give a token") from None
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status == 401:
            raise HubAccessError(
                f"{where}: the Hub refuses the token (401); log in again with `hf auth login`"
            ) from None
        raise HubAccessError(f"{where}: the Hub answered {status}: {' '.join(str(err).split())}") from None
    except Exception as err:  # noqa: BLE001 - whatever stops the request (DNS, refused, TLS, timeout; requests' or httpx's types) means the Hub cannot be reached.
        raise HubAccessError(
            f"{where}: cannot reach the Hub ({type(err).__name__}: {' '.join(str(err).split())}); check the network, "
            "or leave out the upload"
        ) from None
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        raise HubAccessError(
            f"{where}: {user} cannot create or write this {repo_type} repository ({status}: "
            f"{' '.join(str(err).split())}); choose a repository under your name or an organisation you can write to"
        ) from None
    logger.info("Uploading to %s as %s at the end", url, user)
    return str(url)


def save_hub_folder(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> None:
    """Saves weights (safetensors), config with `auto_map`, the remote-code files and the tokenizer to `folder`.

    A `trainer_state.json` already in `folder` (from `Trainer.save_state`) gets its paths made relative to
    `folder` (see `make_trainer_state_portable`).

    Every `ITAConfig` records the multimodal-ner pipeline (`custom_pipelines`), and the model's `save_pretrained`
    writes the pipeline's remote code beside its own; `check_hub_folder` verifies the result.
    """
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    make_trainer_state_portable(folder)


def make_trainer_state_portable(folder: str | Path) -> None:
    """Rewrites the paths inside `folder` that `<folder>/trainer_state.json` holds relative to `folder`.

    `Trainer` records `best_model_checkpoint` as `<output_dir>/checkpoint-N`, i.e. a path of the machine
    that trained. Only the copy at the top of the folder (the one that is published) is rewritten: resuming
    reads the `trainer_state.json` inside `checkpoint-*/`, which keeps its paths. No-op without the file.
    """
    folder = Path(folder)
    path = folder / TRAINER_STATE
    if not path.is_file():
        return
    root = folder.resolve()

    def relative(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: relative(item) for key, item in value.items()}
        if isinstance(value, list):
            return [relative(item) for item in value]
        if isinstance(value, str) and "/" in value:
            # A relative `output_dir` gives paths relative to the working directory, not to the folder.
            resolved = Path(value).resolve()
            if resolved == root or root in resolved.parents:
                return resolved.relative_to(root).as_posix()
        return value

    state = json.loads(path.read_text(encoding="utf-8"))
    # The layout of `TrainerState.save_to_json`.
    path.write_text(json.dumps(relative(state), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def machine_paths(folder: str | Path, files: list[str]) -> list[str]:
    """The paths of this machine that the JSON and Markdown `files` of `folder` hold, as `file: path`.

    A path of this machine is an absolute path that exists here or lies in an installed-packages folder:
    published, it leaks the trainer's file system and points nowhere for anyone else.
    """

    def strings(value: Any):
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    def is_machine_path(value: str) -> bool:
        # A sentence may end right after a path.
        value = value.rstrip(".:")
        return "site-packages" in value or "dist-packages" in value or Path(value).exists()

    found = []
    for name in files:
        # The vocabulary of tokenizer.json is text pieces, not paths (and can be tens of MB).
        if name == "tokenizer.json" or not name.endswith((".json", ".md")):
            continue
        text = (Path(folder) / name).read_text(encoding="utf-8")
        texts = strings(json.loads(text)) if name.endswith(".json") else [text]
        candidates = [path for value in texts for path in PATH_IN_TEXT.findall(value)]
        found += [f"{name}: {path}" for path in dict.fromkeys(candidates) if is_machine_path(path)]
    return found


def check_hub_folder(folder: str | Path) -> list[str]:
    """Checks that `folder` is a complete ITA model repository and lists the files to upload.

    Complete means: `config.json` with `auto_map` (and every remote-code file it names, with their sibling
    imports), `custom_pipelines` for the multimodal-ner task and its file, safetensors weights, a fast
    tokenizer and a `README.md` model card; and no file to upload holds a path of this machine (see
    `machine_paths`).

    Returns:
        The relative paths that an upload of the folder sends, sorted.

    Raises:
        IncompleteHubFolderError: naming every missing piece.
    """
    folder = Path(folder)
    problems: list[str] = []
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else None
    if config is None:
        problems.append("config.json is missing (save the model with save_pretrained)")
    else:
        auto_map = config.get("auto_map") or {}
        if "AutoModelForTokenClassification" not in auto_map or "AutoConfig" not in auto_map:
            problems.append("config.json has no auto_map for AutoConfig and AutoModelForTokenClassification")
        pipelines = config.get("custom_pipelines") or {}
        if PIPELINE_TASK not in pipelines:
            problems.append(f"config.json has no custom_pipelines entry for {PIPELINE_TASK!r}")
        references = list(auto_map.values()) + [pipelines.get(PIPELINE_TASK, {}).get("impl", "")]
        modules = {reference.split("--")[-1].rsplit(".", 1)[0] for reference in references if reference}
        for module in sorted(modules):
            code = folder / f"{module}.py"
            if not code.is_file():
                problems.append(f"remote-code file {code.name} is missing")
                continue
            for line in code.read_text(encoding="utf-8").splitlines():
                # Flat relative sibling imports (`from .crf_ita import ...`) must travel with the file.
                stripped = line.strip()
                if stripped.startswith("from .") and not (folder / f"{stripped.split()[1][1:]}.py").is_file():
                    problems.append(f"{code.name} imports {stripped.split()[1]} but its file is missing")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        problems.append("no safetensors weights (model.safetensors)")
    missing_tokenizer = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing_tokenizer:
        problems.append(f"tokenizer files {missing_tokenizer} are missing (save the tokenizer beside the model)")
    if not (folder / "README.md").is_file():
        problems.append("README.md (the model card) is missing")
    ignored = [path for pattern in IGNORE_PATTERNS for path in folder.glob(pattern)]
    files = sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and not any(path == i or i in path.parents for i in ignored)
    )
    leaked = machine_paths(folder, files)
    if leaked:
        problems.append(
            "files hold paths of this machine, which point nowhere on the Hub (record file names "
            "relative to the folder instead): " + ", ".join(leaked)
        )
    if problems:
        raise IncompleteHubFolderError(f"{folder} is not a complete Hub repository: " + "; ".join(problems))
    return files


def upload_folder(
    folder: str | Path,
    repo_id: str,
    repo_type: str,
    commit_message: str,
    token: str | None = None,
    private: bool = False,
    ignore_patterns: list[str] | None = None,
    retry: str = "upload the folder again",
) -> str:
    """Creates `repo_id` if needed and uploads `folder` to it in one commit.

    Args:
        retry: What to do after a failed upload, for the message.

    Returns:
        The URL of the Hub commit.

    Raises:
        HubAccessError: The upload failed (one line, with `retry`).
    """
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type=repo_type,
            commit_message=commit_message,
            ignore_patterns=ignore_patterns,
        )
    except Exception as err:  # whatever stops the upload (an HTTP status, the network: requests' or httpx's types): re-raised as one line
        raise HubAccessError(
            f"uploading to the {repo_type} repository {repo_id} failed ({type(err).__name__}: "
            f"{' '.join(str(err).split())}); {retry}"
        ) from err
    return str(getattr(commit, "commit_url", commit))


def push_folder(
    folder: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload ITA model",
) -> str:
    """Checks `folder` with `check_hub_folder`, creates `repo_id` if needed and uploads the folder in one commit.

    Checkpoints and other training leftovers are not uploaded (see `IGNORE_PATTERNS`).

    Returns:
        The URL of the Hub commit.

    Raises:
        IncompleteHubFolderError: The folder lacks something (see `check_hub_folder`).
        HubAccessError: The upload failed.
    """
    files = check_hub_folder(folder)
    logger.info("Uploading %d files from %s to %s", len(files), folder, repo_id)
    retry = f"{folder} is complete: upload it with `hf upload {repo_id} {folder} --exclude 'checkpoint-*/*'`"
    return upload_folder(folder, repo_id, "model", commit_message, token, private, IGNORE_PATTERNS, retry)
