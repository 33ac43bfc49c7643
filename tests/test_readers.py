"""Readers that never guess: columns, IMGID lines, encodings, empty inputs, JSONL fields, tweet counts in = out."""

import codecs
import json
import random

import pytest
from datasets import load_from_disk
from test_preprocess import TWEETS, write_umt

from preprocess import DataFormatError, preprocess, read_file, read_jsonl, read_umt
from preprocess.__main__ import main
from preprocess.readers import build_tag_feature, count_tweets, find_split_files

# Tokens that a decoder or a whitespace split would damage: accents, a zero-width space, a soft hyphen, U+0085.
ODD_TWEETS = [
    ("1", ["Café", "in", "Zürich"], ["B-LOC", "O", "B-LOC"]),
    ("2", ["\u200b", "Ol\u00adé", "x\u0085y"], ["O", "B-PER", "O"]),
]


def odd_text() -> str:
    return "".join(
        f"IMGID:{i}\n" + "".join(f"{t}\t{g}\n" for t, g in zip(tok, tags)) + "\n" for i, tok, tags in ODD_TWEETS
    )


def as_tuples(examples) -> list:
    return [(ex.id, ex.tokens, ex.tags, ex.image, ex.lines) for ex in examples]


# --- UMT lines ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "IMGID:1\nEvent\tNNP\tB-MISC\n",
            r"x\.txt:2: 3 tab-separated columns, expected 2 \('token<TAB>tag'\); .* --columns 0 2",
        ),
        ("IMGID:1\nHi\tO\n\t\n", r"x\.txt:3: empty token"),
        ("IMGID:1\nHi\tO \n", r"x\.txt:2: tag 'O ' is not BIO"),
        ("IMGID:\nHi\tO\n", r"x\.txt:1: expected 'IMGID:<id>' with an id and no whitespace in it"),
        ("IMGID:12 34\nHi\tO\n", r"x\.txt:1: expected 'IMGID:<id>' with an id"),
        ("IMGID:1\tO\nHi\tO\n", r"x\.txt:1: token line without an 'IMGID:<id>' line before it"),
        ("IMGID:1\nHi\tO\n\u00a0\n", r"x\.txt:3: expected 'token<TAB>tag', 'IMGID:<id>' or a blank line, got '\\xa0'"),
        ("IMGID:1\nHi there\n", r"x\.txt:2: expected 'token<TAB>tag'"),
        ("IMGID:1\nHello\tB_PER\n", r"x\.txt:2: tag 'B_PER' is not BIO"),
        ("Hello\tO\n", r"x\.txt:1: token line without an 'IMGID:<id>' line"),
        ("IMGID:1\nHi\tO\n\nthere\tO\n", r"x\.txt:4: token line without an 'IMGID:<id>' line"),
        ("IMGID:1\n\nIMGID:2\nHi\tO\n", r"x\.txt:1: tweet IMGID:1 has no tokens"),
    ],
)
def test_every_malformed_umt_line_names_its_file_and_line(tmp_path, content, message):
    (tmp_path / "x.txt").write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError, match=message):
        read_umt(tmp_path / "x.txt")


def test_more_columns_only_when_chosen(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("IMGID:1\nObama\tNNP\tB-PER\nspeaks\tVBZ\tO\n\nIMGID:2\nParis\tNNP\tB-LOC\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"train\.txt:2: 3 tab-separated columns, expected 2"):
        read_umt(path)
    assert [(ex.tokens, ex.tags) for ex in read_umt(path, columns=(0, 2))] == [
        (["Obama", "speaks"], ["B-PER", "O"]),
        (["Paris"], ["B-LOC"]),
    ]
    # The column the user names as the tag must hold tags: choosing the POS column is an error, not a guess.
    with pytest.raises(DataFormatError, match=r"train\.txt:2: tag 'NNP' is not BIO"):
        read_umt(path, columns=(0, 1))
    with pytest.raises(DataFormatError, match=r"train\.txt:2: 3 columns, too few for --columns 0 3"):
        read_umt(path, columns=(0, 3))
    path.write_text("IMGID:1\nObama\tNNP\tB-PER\nspeaks\tO\n", encoding="utf-8")
    with pytest.raises(
        DataFormatError, match=r"train\.txt:3: 2 tab-separated columns, but the file's first token line has 3"
    ):
        read_umt(path, columns=(0, 2))
    for bad in ((0, 0), (1,), (-1, 2)):
        with pytest.raises(ValueError, match="columns must be two different 0-based column numbers"):
            read_umt(path, columns=bad)
    # Through the CLI, recorded in the settings.
    path.write_text("IMGID:1\nObama\tNNP\tB-PER\nspeaks\tVBZ\tO\n", encoding="utf-8")
    assert main(["--data", str(path), "--columns", "0", "2", "--out", str(tmp_path / "out")]) == 0
    shards = load_from_disk(str(tmp_path / "out"))
    assert shards["train"]["tokens"] == [["Obama", "speaks"]] and shards["train"]["ner_tags"] == [[1, 0]]
    assert json.loads((tmp_path / "out" / "preprocess_settings.json").read_text())["reader"] == {
        "encoding": None,
        "columns": [0, 2],
    }


def test_imgid_starts_a_tweet_only_as_a_whole_line(tmp_path, capsys):
    tweets = [(str(i), ["tweet", str(i)], ["O", "O"]) for i in range(20)]
    tweets[7] = ("7", ["look", "IMGID:trap", "here"], ["O", "O", "O"])
    path = write_umt(tmp_path / "train.txt", tweets)
    examples = read_umt(path)
    assert len(examples) == count_tweets(path) == 20
    assert examples[7].tokens == ["look", "IMGID:trap", "here"] and examples[7].image == "7.jpg"
    assert main(["--data", str(path), "--out", str(tmp_path / "out")]) == 0
    assert "train: 20 tweets in (train.txt), 20 out" in capsys.readouterr().out
    assert load_from_disk(str(tmp_path / "out"))["train"][7]["tokens"] == ["look", "IMGID:trap", "here"]


def test_crlf_files_read_like_lf_files(tmp_path):
    (tmp_path / "lf.txt").write_text(odd_text(), encoding="utf-8")
    (tmp_path / "crlf.txt").write_bytes(odd_text().replace("\n", "\r\n").encode("utf-8"))
    assert as_tuples(read_umt(tmp_path / "crlf.txt")) == as_tuples(read_umt(tmp_path / "lf.txt"))
    assert count_tweets(tmp_path / "crlf.txt") == 2


# --- encodings ---------------------------------------------------------------------------------------


def test_byte_order_marks_are_detected(tmp_path):
    (tmp_path / "utf8.txt").write_text(odd_text(), encoding="utf-8")
    expected = as_tuples(read_umt(tmp_path / "utf8.txt"))
    assert [ex.tokens for ex in read_umt(tmp_path / "utf8.txt")][1] == ["\u200b", "Ol\u00adé", "x\u0085y"]
    for name, data in {
        "utf-8 BOM": codecs.BOM_UTF8 + odd_text().encode("utf-8"),
        "utf-16 (LE BOM)": odd_text().encode("utf-16"),
        "utf-16 BE BOM": codecs.BOM_UTF16_BE + odd_text().encode("utf-16-be"),
        "utf-32": odd_text().encode("utf-32"),
    }.items():
        path = tmp_path / "x.txt"
        path.write_bytes(data)
        assert as_tuples(read_umt(path)) == [(i, t, g, im, ln) for i, t, g, im, ln in expected], name
        assert count_tweets(path) == 2
    rows = [{"tokens": ["Café"], "tags": ["B-LOC"], "image": "1.jpg"}]
    (tmp_path / "x.jsonl").write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-16"))
    assert read_jsonl(tmp_path / "x.jsonl")[0].tokens == ["Café"]


def test_other_encodings_are_given_and_decode_errors_name_the_file(tmp_path, capsys):
    path = tmp_path / "train.txt"
    path.write_bytes(odd_text().replace("\u200b", "zw").replace("\u00ad", "").replace("\u0085", "").encode("latin-1"))
    with pytest.raises(
        DataFormatError,
        match=rf"{path}:2: not valid utf-8 \(byte 11: invalid continuation byte\); give the "
        r"file's encoding with --encoding \(e\.g\. latin-1",
    ):
        read_umt(path)
    assert read_umt(path, encoding="latin-1")[0].tokens == ["Café", "in", "Zürich"]
    assert main(["--data", str(path), "--encoding", "latin-1", "--out", str(tmp_path / "out")]) == 0
    assert load_from_disk(str(tmp_path / "out"))["train"][0]["tokens"] == ["Café", "in", "Zürich"]
    assert json.loads((tmp_path / "out" / "preprocess_settings.json").read_text())["reader"]["encoding"] == "latin-1"
    # UTF-16 without a byte-order mark: refused, with the way out, whether it fails to decode or decodes into NULs.
    path.write_bytes(odd_text().encode("utf-16-le"))
    with pytest.raises(
        DataFormatError,
        match=rf"{path}:2: not valid utf-8 .*; the file holds NUL bytes: binary data, or "
        r"UTF-16/UTF-32 without a byte-order mark \(then give --encoding utf-16-le",
    ):
        read_umt(path)
    (tmp_path / "ascii.txt").write_bytes("IMGID:1\nHi\tO\n".encode("utf-16-le"))
    with pytest.raises(DataFormatError, match=r"ascii\.txt:1: NUL character read as utf-8; the file holds NUL bytes"):
        read_umt(tmp_path / "ascii.txt")
    (tmp_path / "utf8.txt").write_text(odd_text(), encoding="utf-8")
    assert as_tuples(read_umt(path, encoding="utf-16-le")) == as_tuples(read_umt(tmp_path / "utf8.txt"))
    # Binary data: a PNG header then random bytes.
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + random.Random(0).randbytes(2000))
    with pytest.raises(DataFormatError, match=rf"{path}:1: not valid utf-8"):
        read_umt(path)
    with pytest.raises(
        DataFormatError, match=rf"{path}:\d+: NUL character read as latin-1; the file holds NUL bytes: binary data"
    ):
        read_umt(path, encoding="latin-1")
    with pytest.raises(ValueError, match="unknown encoding 'utf-9'"):
        read_umt(path, encoding="utf-9")
    assert main(["--data", str(path), "--encoding", "utf-9", "--out", str(tmp_path / "o")]) == 2
    assert "unknown encoding 'utf-9'" in capsys.readouterr().err


# --- empty inputs ------------------------------------------------------------------------------------


def test_empty_inputs_and_splits_are_clear_errors(tmp_path, capsys):
    for name, content in (("train.txt", b""), ("valid.txt", b"\n \n\r\n"), ("test.jsonl", b"\n\n")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataFormatError, match=rf"{tmp_path / name}: no tweets \(the file is empty\)"):
            read_file(tmp_path / name)
    folder = tmp_path / "data"
    folder.mkdir()
    write_umt(folder / "train.txt", [("1", ["Hi"], ["O"])])
    (folder / "valid.txt").write_bytes(b"")
    assert main(["--data", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert f"{folder / 'valid.txt'}: no tweets (the file is empty)" in capsys.readouterr().err
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())
    (folder / "valid.txt").unlink()
    (folder / "test.tsv").write_text("IMGID:1\nHi\tO\n")
    with pytest.raises(DataFormatError, match=r"test\.tsv: named like a split but '\.tsv' is not a data suffix"):
        find_split_files([folder])
    (folder / "test.tsv").unlink()
    (folder / "Test.TXT").write_text("IMGID:1\nHi\tO\n")
    assert list(find_split_files([folder])) == ["train", "test"]
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(DataFormatError, match="no train/valid/test data files found"):
        find_split_files([empty])


# --- JSONL -------------------------------------------------------------------------------------------


GOOD = {"tokens": ["Obama", "in", "Paris"], "tags": ["B-PER", "O", "B-LOC"], "image": "9.jpg"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            json.dumps({**GOOD, "image": ["9.jpg", "10.jpg"]}),
            r"'image' must be one file name or id \(a string\), or null .* got list",
        ),
        (json.dumps({**GOOD, "image": 9}), r"'image' must be one file name or id .* got int 9"),
        (json.dumps({**GOOD, "ner_tags": [1, 0, 3]}), r"unknown keys \['ner_tags'\]"),
        (json.dumps({"tokens": GOOD["tokens"], "tags": GOOD["tags"]}), r"missing keys \['image'\]"),
        ('{"tokens": ["a"], "tags": ["O"], "tags": ["B-PER"], "image": null}', r"invalid JSON: key 'tags' given twice"),
        (json.dumps({**GOOD, "id": True}), r"'id' must be a string or an integer, got true"),
        (json.dumps({**GOOD, "id": [1]}), r"'id' must be a string or an integer"),
        (json.dumps({**GOOD, "id": "a"}), r"id 'a' already used on line 1"),
        ("\u00a0", r"invalid JSON"),
        ("[1, 2]", r"expected a JSON object .* got list"),
        (json.dumps({**GOOD, "tokens": "Obama in Paris"}), r"'tokens' and 'tags' must be lists of strings"),
        (json.dumps({**GOOD, "tags": ["B-PER", "O"]}), r"3 tokens but 2 tags"),
    ],
)
def test_every_malformed_jsonl_line_names_its_file_and_line(tmp_path, line, message):
    path = tmp_path / "dev.jsonl"
    path.write_text(json.dumps({**GOOD, "id": "a"}) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=rf"dev\.jsonl:3: {message}"):
        read_jsonl(path)


def test_jsonl_ids_and_images_as_given(tmp_path):
    rows = [{**GOOD, "id": 7}, {**GOOD, "image": None, "id": "b"}, {**GOOD, "image": ""}]
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert [(ex.id, ex.image) for ex in read_jsonl(path)] == [("7", "9.jpg"), ("b", ""), ("2", "")]
    assert count_tweets(path) == 3
    shards = preprocess(data=[path], out=tmp_path / "out")
    assert shards["validation"]["image_id"] == ["9", "", ""] and shards["validation"]["id"] == ["7", "b", "2"]


def test_jsonl_reader_and_label_set_errors(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD) + "\n", encoding="utf-8")
    assert read_jsonl(path)[0].tokens == ["Obama", "in", "Paris"]
    tweets = [("1", ["Hi", "Bob"], ["O", "B-PER"]), ("2", ["at", "NASA"], ["O", "B-ORG"])]
    umt = write_umt(tmp_path / "test.txt", tweets)
    files = find_split_files([tmp_path])
    assert list(files) == ["train", "test"]
    splits = {split: read_file(path) for split, path in files.items()}
    assert build_tag_feature(splits, files).names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    with pytest.raises(DataFormatError, match=rf"{umt}:7: tag 'B-ORG' has a type outside the label set"):
        build_tag_feature(splits, files, entity_types=["PER", "LOC"])


# --- the real files ----------------------------------------------------------------------------------


def test_umt_reader_keeps_last_tweet_invisible_tokens_and_i_starts(shared_data):
    starts_with_i = 0
    for split in ("train", "valid", "test"):
        path = shared_data / "twitter2015" / f"{split}.txt"
        examples = read_umt(path)
        source = path.read_text(encoding="utf-8")
        assert not source.endswith("\n\n")
        last_lines = source.rstrip("\n").split("\n\n")[-1].split("\n")
        assert examples[-1].tokens == [line.split("\t")[0] for line in last_lines[1:]]
        for ex in examples:
            # A span starts with I- when the previous tag is not of the same type (O, or another type).
            starts_with_i += sum(
                tag.startswith("I-") and (i == 0 or ex.tags[i - 1][2:] != tag[2:]) for i, tag in enumerate(ex.tags)
            )
    assert starts_with_i == 374
    tokens = {t for ex in read_umt(shared_data / "twitter2017" / "train.txt") for t in ex.tokens}
    assert {"\u200b", "\u200d", "\x92"} <= {ch for t in tokens for ch in t}


def test_real_files_counts_and_every_inserted_bad_line_named(shared_data, tmp_path):
    for name, counts in TWEETS.items():
        for split, expected in zip(("train", "valid", "test"), counts):
            path = shared_data / name / f"{split}.txt"
            assert len(read_umt(path)) == count_tweets(path) == expected, (name, split)
    source = (shared_data / "twitter2017" / "train.txt").read_text(encoding="utf-8")
    lines = source.split("\n")
    # The real file re-encoded as UTF-16 (with its invisible tokens) reads the same.
    (tmp_path / "utf16.txt").write_bytes(source.encode("utf-16"))
    assert as_tuples(read_umt(tmp_path / "utf16.txt")) == as_tuples(read_umt(shared_data / "twitter2017" / "train.txt"))
    token_lines = [i for i, line in enumerate(lines) if "\t" in line]
    bad = tmp_path / "train.txt"
    for index in random.Random(0).sample(token_lines, 5):
        for broken, message in (
            (lines[index] + "\tNNP", "3 tab-separated columns"),
            (lines[index].replace("\t", " "), "expected 'token<TAB>tag'"),
        ):
            bad.write_text("\n".join([*lines[:index], broken, *lines[index + 1 :]]), encoding="utf-8")
            with pytest.raises(DataFormatError, match=rf"{bad}:{index + 1}: {message}"):
                read_umt(bad)
