"""The built wheel, installed non-editable in a fresh venv that cannot see the checkout, trains and writes a
complete Hub folder; the wheel carries the top-level model-card template (as a data file) and the LICENSE."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import yaml

from helpers import REPO, tiny_train_argv
from ita_training.hub import check_hub_folder
from ita_training.model_card import MINILM_HUB_ID
from tiny_shards import write_caption_shards

# What a build must not copy from the checkout: environments, VCS data and build leftovers.
NOT_SOURCE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "demo-output"
)
TRAIN_STEPS = 2

pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (a build writes `build/` and egg-info next to its sources)."""
    work = tmp_path_factory.mktemp("build")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            str(source),
            "-w",
            str(work / "dist"),
        ],
        cwd=work,
        env=env,
    )
    (built,) = (work / "dist").glob("ita_mner-*.whl")
    return built


def test_the_wheel_carries_the_card_template_the_license_and_train(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
        (template_name,) = [name for name in names if name.endswith(".data/data/share/ita-mner/model_card.md")]
        template = archive.read(template_name).decode()
        licenses = [name for name in names if ".dist-info/" in name and name.rsplit("/", 1)[-1] == "LICENSE"]
        assert len(licenses) == 1, names
        license_text = archive.read(licenses[0]).decode()
    assert template == (REPO / "model_card.md").read_text(encoding="utf-8")
    # One copy: the template is not also package data.
    assert not any(name.endswith("model_card_template.md") for name in names)
    assert license_text == (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert metadata["License"] == "Apache-2.0" or metadata["License-Expression"] == "Apache-2.0"
    assert {"train.py", "modeling_ita.py", "pipeline_ita.py", "ita_training/hub.py"} <= set(names)
    assert not any(name.startswith("tests/") for name in names)


def fresh_venv(root: Path, wheel: Path) -> Path:
    """A venv with only the wheel installed, reusing this environment's packages (minus the checkout's) by links.

    The packages are linked into a folder of their own, without the editable install of the checkout (its
    `__editable__` finder and `.pth`) or any other copy of this distribution, and that folder is added as a
    site directory, so their own `.pth` files still run.
    """
    run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], cwd=root, env=dict(os.environ))
    python = root / "venv" / "bin" / "python"
    with zipfile.ZipFile(wheel) as archive:
        ours = {name.split("/", 1)[0] for name in archive.namelist()}
    ours = {name.removesuffix(".py") for name in ours} | {
        name.split("-", 1)[0] for name in ours if name.endswith(".dist-info")
    }
    # Named site-packages: dill (under datasets' and evaluate's fingerprints) pickles modules found elsewhere by
    # value, which fails for pyarrow's types, as it never does in a real installation.
    packages = root / "reused" / "site-packages"
    packages.mkdir(parents=True)
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        stem = entry.name.removesuffix(".py")
        if entry.name.startswith("__editable__") or stem in ours or entry.name.split("-", 1)[0] in ours:
            continue
        if entry.suffix == ".pth" and str(REPO) in entry.read_text(encoding="utf-8", errors="replace"):
            continue
        (packages / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    site_packages = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=root,
            env=dict(os.environ),
        ).stdout.strip()
    )
    (site_packages / "reused-packages.pth").write_text(f"import site; site.addsitedir({str(packages)!r})\n")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "--no-compile",
            str(wheel),
        ],
        cwd=root,
        env=dict(os.environ),
    )
    return python


def test_the_installed_wheel_trains_and_writes_a_complete_folder(wheel, tmp_path, minilm_dir):
    python = fresh_venv(tmp_path, wheel)
    outside = tmp_path / "work"
    outside.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    probe = run(
        [
            str(python),
            "-c",
            (
                "import importlib.util, json, sys, train, ita_training.model_card as card\n"
                "editable = [f for f in sys.meta_path if 'editable' in type(f).__name__.lower()]\n"
                "print(json.dumps({'train': train.__file__, 'template': str(card.find_template()), 'editable': repr(editable),\n"
                "                  'finder': importlib.util.find_spec('__editable___ita_mner_0_1_0_finder') is not None,\n"
                "                  'path': sys.path}))\n"
            ),
        ],
        cwd=outside,
        env=env,
    )
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    venv = (tmp_path / "venv").resolve()
    assert Path(found["train"]).resolve().is_relative_to(venv), found
    assert Path(found["template"]).resolve().is_relative_to(venv) and Path(found["template"]).is_file()
    assert found["editable"] == "[]" and not found["finder"], found
    assert not any(entry.startswith(str(REPO)) for entry in found["path"]), found["path"]

    shards = write_caption_shards(tmp_path / "caption-shards")
    output_dir = tmp_path / "ita-installed"
    started = time.perf_counter()
    # The default encoder: the offline MiniLM, found by the installed train.py.
    options = ("--max_steps", str(TRAIN_STEPS), "--learning_rate", "1e-4", "--max_context_tokens", "32")
    result = run(
        [str(python), "-m", "train", *tiny_train_argv(shards, None, output_dir, *options)], cwd=outside, env=env
    )
    print(f"python -m train: {time.perf_counter() - started:.1f} s")
    assert "Traceback" not in result.stderr

    files = check_hub_folder(output_dir)
    assert {
        "README.md",
        "config.json",
        "model.safetensors",
        "modeling_ita.py",
        "pipeline_ita.py",
        "tokenizer.json",
        "trainer_state.json",
        "test_results.json",
    } <= set(files)
    card = (output_dir / "README.md").read_text(encoding="utf-8")
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["base_model"] == MINILM_HUB_ID and metadata["model-index"]
    assert "## Training hyper-parameters" in card and f"| training_steps | `{TRAIN_STEPS}` |" in card
    assert "{{" not in card and "{%" not in card
    # The remote code published is the installed copy, which is the checkout's.
    assert (output_dir / "modeling_ita.py").read_text() == (REPO / "modeling_ita.py").read_text()
