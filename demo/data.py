"""Finding the demo's data: a folder the user names, ../shared/data, an earlier download, or a fresh download."""

import shutil
import urllib.error
import urllib.request
from pathlib import Path

# The public releases the shared data came from (see ../shared/README.md). Both repositories are tried on
# their usual default branches because the demo cannot know which one a repository uses.
UMT_FILES = {
    f"twitter2017/{split}.txt": "jefferyYu/UMT/{branch}/data/twitter2017/" + f"{split}.txt"
    for split in ("train", "valid", "test")
}
CAPTION_FILES = {"captions/blip2/BLIP2_17.txt": "JinYuanLi0012/PGIM/{branch}/data/ImageCaption/BLIP2_17.txt"}
RAW_BASE = "https://raw.githubusercontent.com/"
BRANCHES = ("main", "master")
REQUIRED = tuple(UMT_FILES) + tuple(CAPTION_FILES)


class DataNotFoundError(RuntimeError):
    """No usable data folder and no way to download one; the message says what to put where."""


def missing_files(folder: Path) -> list[str]:
    """The required files (relative paths) that `folder` lacks."""
    return [name for name in REQUIRED if not (folder / name).is_file()]


def _download(relative: str, template: str, destination: Path, timeout: float) -> None:
    errors = []
    for branch in BRANCHES:
        url = RAW_BASE + template.format(branch=branch)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                partial = destination.with_suffix(destination.suffix + ".part")
                partial.parent.mkdir(parents=True, exist_ok=True)
                with open(partial, "wb") as handle:
                    shutil.copyfileobj(response, handle)
                partial.replace(destination)  # never leave a half-downloaded file under the final name
                return
        except (urllib.error.URLError, OSError) as error:
            errors.append(f"{url}: {error}")
    raise DataNotFoundError(f"could not download {relative}:\n  " + "\n  ".join(errors))


def locate_data(explicit: str | None, shared: Path, download_dir: Path, timeout: float = 10.0) -> Path:
    """Returns a folder holding Twitter-2017 and its BLIP-2 captions, downloading them as a last resort.

    Args:
        explicit: a folder the user named (`DATA_DIR`); if given it must be complete.
        shared: the project's shared data folder (`../shared/data`).
        download_dir: where an earlier download lives or a new one goes.
        timeout: seconds per download attempt.

    Raises:
        DataNotFoundError: with the exact files and places to put them.
    """
    layout = "\n".join(f"    <DATA_DIR>/{name}" for name in REQUIRED)
    if explicit:
        folder = Path(explicit).expanduser()
        missing = missing_files(folder)
        if missing:
            raise DataNotFoundError(f"DATA_DIR={folder} lacks {missing}. The demo needs:\n{layout}")
        return folder
    for folder in (shared, download_dir):
        if not missing_files(folder):
            return folder
    print(f"No data in {shared} or {download_dir}: downloading Twitter-2017 and its BLIP-2 captions ...")
    try:
        for relative, template in {**UMT_FILES, **CAPTION_FILES}.items():
            if not (download_dir / relative).is_file():
                _download(relative, template, download_dir / relative, timeout)
    except DataNotFoundError as error:
        raise DataNotFoundError(
            f"{error}\n\nThe demo needs Twitter-2017 (the UMT release, github.com/jefferyYu/UMT, data/twitter2017) "
            f"and its BLIP-2 captions (github.com/JinYuanLi0012/PGIM, data/ImageCaption/BLIP2_17.txt). Put them as\n"
            f"{layout}\nand run `make demo DATA_DIR=<that folder>` (or place them under {download_dir})."
        ) from None
    return download_dir


# PGIM's LLM knowledge, re-keyed by image id as in ../shared/data (see ../shared/README.md). Optional: the PGIM
# repository ships it as CoNLL zip files, which the demo does not convert, so without it the demo trains on captions.
KNOWLEDGE_FILES = {year: f"knowledge/pgim/PGIM_knowledge_{year}.jsonl" for year in ("15", "17")}


def knowledge_file(data: Path, year: str) -> Path | None:
    """PGIM's knowledge for Twitter-20`year` in the data folder, or None when it is not there."""
    path = data / KNOWLEDGE_FILES[year]
    return path if path.is_file() else None


def images_dir(data: Path) -> Path | None:
    """The folder of real Twitter-2015 tweet images beside the data, if there is one."""
    folder = data / "images" / "twitter2015"
    return folder if folder.is_dir() and any(folder.iterdir()) else None
