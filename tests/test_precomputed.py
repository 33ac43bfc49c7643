"""Precomputed contexts (precomputed_ita): the BLIP-2 caption and JSONL formats, file records by name, checksum and
source, their round trip through a spec, and files that are malformed or not UTF-8."""

import hashlib
import json

import pytest

from aligners_ita import SEGMENTS
from precomputed_ita import PrecomputedAligner
from visual_context_ita import aligner_from_dict, normalize_spec, spec_is_precomputed


def test_blip2_captions_are_looked_up_by_image_id(shared_data):
    aligner = PrecomputedAligner(shared_data / "captions" / "blip2" / "BLIP2_15.txt")
    found = aligner.align([None, None, None], ["108911", "71406", "no-such-image"])
    assert found[0]["caption"] == ["the chicago bears and green bay packers are playing in the nfl"]
    assert found[1]["caption"] == []  # one of the two known empty captions
    assert found[2] == {name: [] for name in SEGMENTS}
    assert aligner("713.jpg", image_id="713.jpg")["caption"] == ["chicago white sox quotes"]


def test_jsonl_contexts_and_format_errors(tmp_path):
    path = tmp_path / "contexts.jsonl"
    rows = [
        {"image_id": "7.jpg", "caption": "a dog", "objects": ["dog", "ball"]},
        {"image_id": "7", "caption": ["on grass"], "ocr": "GOAL"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    aligner = PrecomputedAligner(path)
    assert aligner.align([None], ["7"]) == [
        {"caption": ["a dog", "on grass"], "objects": ["dog", "ball"], "ocr": ["GOAL"], "knowledge": []}
    ]
    path.write_text('{"image_id": "1", "caption": "ok"}\n{"caption": "no id"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}:2: .*image_id"):
        PrecomputedAligner(path)
    captions = tmp_path / "captions.txt"
    captions.write_text("1.jpg :fine\nbroken line\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{captions}:2: expected"):
        PrecomputedAligner(captions)


def test_precomputed_spec_records_name_checksum_and_source_and_round_trips(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("5.jpg :a cat\n", encoding="utf-8")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = PrecomputedAligner(path).to_dict()
    assert spec == {
        "type": "precomputed",
        "precomputed": True,
        "format": "auto",
        "files": [{"name": "c.txt", "sha256": digest, "source": "precomputed file c.txt"}],
    }
    stated = PrecomputedAligner(str(path), source="BLIP-2 captions, PGIM release").to_dict()
    assert stated["files"][0]["source"] == "BLIP-2 captions, PGIM release"
    assert spec_is_precomputed(spec) and not spec_is_precomputed({"type": "rapidocr"})
    # A spec names no path: it is rebuilt only from a folder that holds a file of that name and checksum.
    rebuilt = aligner_from_dict(json.loads(json.dumps(spec)), context_dirs=[tmp_path])
    assert rebuilt.to_dict() == spec and rebuilt("5.jpg", image_id="5") == {
        **{name: [] for name in SEGMENTS},
        "caption": ["a cat"],
    }
    assert rebuilt.knows("5.jpg") and not rebuilt.knows("6")
    with pytest.raises(FileNotFoundError, match="'c.txt'.* is not in any folder"):
        aligner_from_dict(spec)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="looked up by image id"):
        PrecomputedAligner(path)
    with pytest.raises(ValueError, match="unknown aligner type 'nope'"):
        aligner_from_dict({"type": "nope"})
    with pytest.raises(ValueError, match="invalid settings for aligner 'rapidocr'"):
        aligner_from_dict({"type": "rapidocr", "colour": "red"})


def test_precomputed_paths_compare_equal_however_they_are_spelled(tmp_path, monkeypatch):
    # A rerun of `python -m preprocess` compares settings; a symlinked or relative spelling of the same file
    # must not count as different settings.
    captions = tmp_path / "real" / "captions.txt"
    captions.parent.mkdir()
    captions.write_text("1.jpg :a dog\n")
    (tmp_path / "link").symlink_to(captions.parent)
    monkeypatch.chdir(tmp_path)
    spellings = [str(captions), str(tmp_path / "link" / "captions.txt"), "real/captions.txt", captions]
    specs = [normalize_spec({"type": "precomputed", "paths": [p]}) for p in spellings]
    assert all(spec == specs[0] for spec in specs)
    assert specs[0]["files"] == [
        {
            "name": "captions.txt",
            "sha256": hashlib.sha256(b"1.jpg :a dog\n").hexdigest(),
            "source": "precomputed file captions.txt",
        }
    ]
    assert PrecomputedAligner("link/captions.txt").to_dict() == specs[0]
    # The same bytes changed are another setting.
    captions.write_text("1.jpg :a cat\n")
    assert normalize_spec({"type": "precomputed", "paths": [captions]}) != specs[0]


@pytest.mark.parametrize("name", ["captions.txt", "contexts.jsonl"])
def test_a_context_file_that_is_not_utf8_is_named(tmp_path, name):
    path = tmp_path / name
    line = '{"image_id": "1", "caption": "café"}\n' if name.endswith(".jsonl") else "1.jpg :café\n"
    path.write_bytes(line.encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{name}: not UTF-8 text after line 0 .*convert the file to UTF-8"):
        PrecomputedAligner(path)
