"""`python -m preprocess` on data that lives in `datasets`: an `Image` column read by real RapidOCR, `ClassLabel` or
string tags in BIO, IOB1 or BIOES, columns found or named, images as bytes, paths or ids, entity types renamed, and
every kind of bad input named by split and row before anything is written."""

import json
import logging
import socket
from unittest import mock

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Sequence, Value, load_from_disk
from test_preprocess import write_umt

from helpers import LABELS, T15_LABELS
from preprocess import DataFormatError, preprocess
from preprocess.__main__ import main
from preprocess.shards import SETTINGS_FILE
from preprocess.tag_schemes import TagSchemeError, to_bio
from tiny_datasets import SIGNS, png, scheme_labels, tiny_mner_dataset, tweet_rows
from tiny_shards import TWEETS

OCR = {"type": "rapidocr", "threads": 1}
TRAIN_TAGS = [[LABELS.index(tag) for tag in tags.split()] for _, tags, _ in TWEETS]


def raw_images(dataset: Dataset) -> list:
    """The `image` column as stored ({bytes, path} or None), without decoding."""
    return dataset.cast_column("image", Image(decode=False))["image"]


def nothing_written(folder) -> bool:
    return not any(p.name.startswith("out") for p in folder.iterdir())


def test_an_image_and_classlabel_dataset_from_memory_and_from_disk_gives_the_same_shards(tmp_path, capsys):
    dataset = tiny_mner_dataset()
    from_memory = preprocess(data=dataset, out=tmp_path / "memory", aligners=[OCR])
    saved = tmp_path / "saved"
    dataset.save_to_disk(str(saved))
    assert main(["--data", str(saved), "--aligner", "rapidocr:threads=1", "--out", str(tmp_path / "disk")]) == 0
    summary = capsys.readouterr().out
    assert "train: 8 tweets in (saved[train]), 8 out, 6 with visual context, 0 with alignment errors" in summary
    assert "validation: 4 tweets in (saved[validation]), 4 out, 3 with visual context" in summary
    from_disk = load_from_disk(str(tmp_path / "disk"))
    assert list(from_disk) == ["train", "validation", "test"]
    for split in from_disk:
        assert from_disk[split].features == from_memory[split].features
        assert from_disk[split].to_list() == from_memory[split].to_list()
    train = from_disk["train"]
    # The ClassLabel's order is the label order; the images, read by real OCR, are kept as the dataset's own bytes.
    assert train.features["ner_tags"].feature.names == LABELS and train["ner_tags"] == TRAIN_TAGS
    assert isinstance(train.features["image"], Image)
    assert train["ocr"] == [[sign] if sign else [] for sign in SIGNS]
    assert train["visual_context"] == [sign or "" for sign in SIGNS]
    assert train["context_sources"] == [["ocr:rapidocr"] if sign else [] for sign in SIGNS]
    assert train["id"] == [f"t{i}" for i in range(8)] and set(train["alignment_error"]) == {""}
    assert train["image_id"] == [f"sign{i}" if sign else "" for i, sign in enumerate(SIGNS)]
    assert raw_images(train) == raw_images(dataset["train"])
    assert train[0]["image"].size == (640, 160)
    settings = json.loads((tmp_path / "disk" / SETTINGS_FILE).read_text())
    fingerprint = load_from_disk(str(saved))["train"]._fingerprint
    assert settings["data"]["train"] == {
        "dataset": str(saved),
        "split": "train",
        "fingerprint": fingerprint,
        "tweets": 8,
    }
    assert settings["reader"]["tag_scheme"] == {"train": "BIO", "validation": "BIO", "test": "BIO"}
    assert settings["reader"]["columns"]["train"] == {
        "tokens": "tokens",
        "tags": "ner_tags",
        "image": "image",
        "image_id": None,
        "id": "id",
    }
    assert settings["image_storage"] == "bytes" and settings["images_dir"] is None
    # The same command again reuses the result.
    assert main(["--data", str(saved), "--aligner", "rapidocr:threads=1", "--out", str(tmp_path / "disk")]) == 0


@pytest.mark.parametrize(
    ("scheme", "class_label", "declared"),
    [("BIOES", True, None), ("BIOES", False, "BIOES"), ("IOB1", True, "IOB1"), ("IOB1", False, "IOB1")],
)
def test_iob1_and_bioes_give_the_same_bio_shards_as_bio(tmp_path, caplog, scheme, class_label, declared):
    bio = preprocess(data=tiny_mner_dataset("BIO", class_label), out=tmp_path / "bio")
    with caplog.at_level(logging.INFO):
        other = preprocess(data=tiny_mner_dataset(scheme, class_label), out=tmp_path / "other", tag_scheme=declared)
    assert f"tags read as {scheme} and converted to BIO" in caplog.text
    for split in bio:
        assert other[split].features == bio[split].features
        assert other[split].to_list() == bio[split].to_list()
    names = other["train"].features["ner_tags"].feature.names
    # A ClassLabel gives its order; string tags give the types sorted, as files do.
    assert names == (
        LABELS if class_label else ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    )
    assert [[names[t] for t in tags] for tags in other["train"]["ner_tags"]] == [tags.split() for _, tags, _ in TWEETS]


def test_scheme_rules_and_conversions():
    assert to_bio(["I-ORG", "B-ORG", "I-ORG", "O", "I-PER"], "IOB1") == ["B-ORG", "B-ORG", "I-ORG", "O", "B-PER"]
    assert to_bio(["S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"], "BIOES") == [
        "B-PER",
        "B-LOC",
        "I-LOC",
        "I-LOC",
        "B-LOC",
    ]
    # A BIO span may start with I- (the benchmark files have a few): kept, as the file readers keep it.
    assert to_bio(["O", "I-PER", "I-PER"], "BIO") == ["O", "I-PER", "I-PER"]
    for tags, scheme, message in (
        (["O", "B-PER"], "IOB1", r"tag 2 'B-PER' is not IOB1: B- only starts an entity right after another PER"),
        (["B-PER", "O"], "BIOES", r"tag 2 'O' is not BIOES: the PER entity before it must go on with I-PER"),
        (["B-PER", "E-LOC"], "BIOES", r"tag 2 'E-LOC' is not BIOES"),
        (["E-PER"], "BIOES", r"tag 1 'E-PER' is not BIOES: it continues no entity"),
        (["O", "B-PER", "I-PER"], "BIOES", r"tag 3 'I-PER' is not BIOES: the tweet ends inside a PER entity"),
        (["S-PER"], "BIO", r"tag 1 'S-PER' is not BIO: .* declare the scheme with --tag-scheme BIOES"),
        (["PER"], "IOB1", r"tag 1 'PER' is not IOB1"),
    ):
        with pytest.raises(TagSchemeError, match=message):
            to_bio(tags, scheme)


def test_columns_by_other_names_image_paths_ids_into_images_and_embedded_bytes(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, sign in enumerate(SIGNS):
        if sign:
            (images / f"{i}.png").write_bytes(png(sign))
    rows = tweet_rows(range(4), class_label=False)
    # Other usual names, string tags and absolute image paths.
    paths = Dataset.from_dict(
        {
            "words": rows["tokens"],
            "labels": rows["ner_tags"],
            "img_path": [str(images / f"{i}.png") if SIGNS[i] else None for i in range(4)],
        }
    )
    shards = preprocess(data=DatasetDict(train=paths), out=tmp_path / "paths", aligners=[OCR])
    train = shards["train"]
    assert train["ocr"] == [[sign] if sign else [] for sign in SIGNS[:4]]
    assert train["id"] == ["0", "1", "2", "3"] and train["image_id"] == ["0", "1", "2", ""]
    # Image files are stored by their paths (as strings: save_to_disk would copy the files an Image() column names).
    assert train.features["image"] == Value("string")
    assert train["image"] == [str(images / f"{i}.png") if SIGNS[i] else None for i in range(4)]
    # Image ids looked up in --images, columns named by option, bytes stored.
    ids = Dataset.from_dict({"text": rows["tokens"], "bio": rows["ner_tags"], "photo": ["0", "1", "2", "3"]})
    embedded = preprocess(
        data=DatasetDict(train=ids),
        out=tmp_path / "ids",
        aligners=[OCR],
        images_dir=images,
        dataset_columns={"tokens": "text", "tags": "bio", "image_id": "photo"},
        embed_images=True,
    )["train"]
    assert embedded["ocr"] == train["ocr"] and embedded["image_id"] == ["0", "1", "2", "3"]
    assert isinstance(embedded.features["image"], Image)
    stored = raw_images(embedded)
    assert [image and image["bytes"] for image in stored] == [png(s) if s else None for s in SIGNS[:4]]
    assert [image and image["path"] for image in stored] == ["0.png", "1.png", "2.png", None]
    assert embedded["alignment_error"][3] == f"image not found: {images / '3'}"


def test_a_saved_dataset_folder_names_its_split(tmp_path):
    validation = tiny_mner_dataset()["validation"]
    validation.save_to_disk(str(tmp_path / "dev"))
    shards = preprocess(data=[f"dev={tmp_path / 'dev'}"], out=tmp_path / "out")
    assert list(shards) == ["validation"] and shards["validation"]["id"] == ["t0", "t1", "t2", "t3"]
    # Without split=, a Dataset folder is the split it records, else train.
    shards = preprocess(data=[tmp_path / "dev"], out=tmp_path / "again")
    assert list(shards) == ["train"]


def test_entity_types_are_renamed_in_files_and_datasets_and_recorded(tmp_path):
    data = write_umt(tmp_path / "train.txt", [("1", ["Oscars", "in", "LA"], ["B-OTHER", "O", "B-LOC"])])
    shards = preprocess(data=[data], out=tmp_path / "files", rename_types=["OTHER=MISC"])
    assert shards["train"].features["ner_tags"].feature.names == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    settings = json.loads((tmp_path / "files" / SETTINGS_FILE).read_text())
    assert settings["rename_types"] == {"OTHER": "MISC"}
    # A Twitter-2015-style ClassLabel renamed takes Twitter-2017's label set, in its order.
    rows = tweet_rows(range(8))
    rows["ner_tags"] = [[T15_LABELS.index(T15_LABELS[t]) for t in tags] for tags in rows["ner_tags"]]
    features = Features(
        {
            "id": Value("string"),
            "tokens": Sequence(Value("string")),
            "ner_tags": Sequence(ClassLabel(names=T15_LABELS)),
            "image": Image(),
        }
    )
    twitter2015 = DatasetDict(train=Dataset.from_dict(rows, features=features))
    renamed = preprocess(data=twitter2015, out=tmp_path / "dataset", rename_types={"OTHER": "MISC"})
    assert renamed["train"].features["ner_tags"].feature.names == LABELS
    assert renamed["train"]["ner_tags"] == TRAIN_TAGS
    with pytest.raises(ValueError, match=r"renames \['OTHR'\], which the data does not have; its types are"):
        preprocess(data=twitter2015, out=tmp_path / "typo", rename_types=["OTHR=MISC"])
    for bad in (["OTHER"], ["OTHER=MISC", "OTHER=X"], ["=MISC"]):
        with pytest.raises(ValueError, match="OLD=NEW|renamed twice"):
            preprocess(data=twitter2015, out=tmp_path / "bad", rename_types=bad)
    assert not (tmp_path / "typo").exists() and not (tmp_path / "bad").exists()


# --- bad input ---------------------------------------------------------------------------------------


def test_a_dataset_without_its_token_or_tag_column_lists_its_columns_and_the_option(tmp_path, capsys):
    saved = tmp_path / "saved"
    tiny_mner_dataset().rename_column("tokens", "text").save_to_disk(str(saved))
    assert main(["--data", str(saved), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert (
        f"error: {saved} split 'train': no tokens column (looked for ['tokens', 'words']); its columns are "
        "['id', 'text', 'ner_tags', 'image']: name it with --token-column" in error
    )
    assert nothing_written(tmp_path)
    assert main(["--data", str(saved), "--token-column", "text", "--out", str(tmp_path / "out")]) == 0
    untagged = tmp_path / "untagged"
    tiny_mner_dataset().remove_columns("ner_tags").save_to_disk(str(untagged))
    assert main(["--data", str(untagged), "--out", str(tmp_path / "out2")]) == 2
    error = capsys.readouterr().err
    assert (
        "no tags column (looked for ['ner_tags', 'tags', 'labels']); its columns are ['id', 'tokens', 'image']" in error
    )
    assert "name it with --tag-column" in error
    assert main(["--data", str(untagged), "--tag-column", "pos", "--out", str(tmp_path / "out2")]) == 2
    assert "no column 'pos' (--tag-column); its columns are ['id', 'tokens', 'image']" in capsys.readouterr().err
    both = tiny_mner_dataset()["train"].add_column("tags", [["O"]] * 8)
    with pytest.raises(
        DataFormatError,
        match=r"the columns \['ner_tags', 'tags'\] could each be the tags column; choose one with --tag-column",
    ):
        preprocess(data=both, out=tmp_path / "out3")


def test_an_invalid_tag_sequence_names_the_split_row_and_tag(tmp_path):
    rows = tweet_rows(range(3), "BIOES")
    names = scheme_labels("BIOES")
    rows["ner_tags"][1][0] = names.index("B-PER")  # "Obama visits Paris today": B-PER then O, never closed
    features = tiny_mner_dataset("BIOES")["train"].features
    dataset = DatasetDict(train=Dataset.from_dict(rows, features=features))
    with pytest.raises(
        DataFormatError,
        match=r"<in memory> split 'train' row 1 \(id 't1'\): tag 2 'O' is not BIOES: the PER entity before it",
    ):
        preprocess(data=dataset, out=tmp_path / "out")
    assert nothing_written(tmp_path)


def test_tokens_and_tags_of_different_lengths_are_refused(tmp_path):
    rows = tweet_rows(range(3))
    rows["ner_tags"][2] = rows["ner_tags"][2][:-1]
    dataset = DatasetDict(validation=Dataset.from_dict(rows, features=tiny_mner_dataset()["train"].features))
    with pytest.raises(DataFormatError, match=r"split 'validation' row 2 \(id 't2'\): 6 tokens but 5 tags"):
        preprocess(data=dataset, out=tmp_path / "out")
    rows = tweet_rows(range(3))
    rows["tokens"][0] = []
    rows["ner_tags"][0] = []
    dataset = DatasetDict(validation=Dataset.from_dict(rows, features=tiny_mner_dataset()["train"].features))
    with pytest.raises(DataFormatError, match=r"row 0 \(id 't0'\): tokens must be a non-empty list"):
        preprocess(data=dataset, out=tmp_path / "out")
    assert nothing_written(tmp_path)


def test_image_bytes_that_are_not_an_image_keep_the_tweet_and_say_why(tmp_path):
    rows = tweet_rows(range(3))
    rows["image"][1] = {"bytes": b"not an image at all", "path": "broken.jpg"}
    dataset = DatasetDict(train=Dataset.from_dict(rows, features=tiny_mner_dataset()["train"].features))
    train = preprocess(data=dataset, out=tmp_path / "out", aligners=[OCR])["train"]
    assert train["id"] == ["t0", "t1", "t2"] and train["tokens"][1] == ["Obama", "visits", "Paris", "today"]
    assert train["alignment_error"][1].startswith("cannot read image <19 bytes>: its 19 bytes")
    assert train["alignment_error"][1].endswith("are not an image PIL can identify")
    assert train["ocr"] == [["TORONTO"], [], ["LONDON"]] and train["image_id"][1] == "broken"
    # The image column holds only images that decode: the broken one is left empty.
    assert [image is None for image in raw_images(train)] == [False, True, False]


def test_a_hub_id_offline_says_so_and_how_to_pass_a_local_folder(tmp_path, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError("a Hub id offline must not open a network connection")

    with mock.patch.object(socket.socket, "connect", no_network):
        assert main(["--data", "nobody/no-such-mner", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: --data nobody/no-such-mner: no local folder or file has this name, so it is read")
    assert "HF_HUB_OFFLINE=1 keeps the Hub off and the dataset is not in the local cache" in error
    assert "datasets.load_dataset('nobody/no-such-mner').save_to_disk('FOLDER')`, then pass --data FOLDER" in error
    assert nothing_written(tmp_path)


def test_options_of_the_other_kind_of_data_are_refused(tmp_path, capsys):
    data = write_umt(tmp_path / "train.txt", [("1", ["Hi"], ["O"])])
    assert main(["--data", str(data), "--tag-scheme", "BIOES", "--out", str(tmp_path / "out")]) == 2
    assert "['--tag-scheme'] read a datasets dataset" in capsys.readouterr().err
    saved = tmp_path / "saved"
    tiny_mner_dataset().save_to_disk(str(saved))
    assert main(["--data", str(saved), "--encoding", "latin-1", "--out", str(tmp_path / "out")]) == 2
    assert "--encoding and --columns read data files" in capsys.readouterr().err
    assert main(["--data", str(saved), "--revision", "main", "--out", str(tmp_path / "out")]) == 2
    assert "--dataset-config and --revision choose what to read from a Hub dataset id" in capsys.readouterr().err
    assert main(["--data", str(data), "--embed-images", "--out", str(tmp_path / "out")]) == 2
    assert "--embed-images stores the images, but the data has none" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
