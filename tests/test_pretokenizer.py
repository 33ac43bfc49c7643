"""The tweet-aware pre-tokenizer: expected splits, exact offsets, nothing dropped, agreement with the real data."""

import random

import pytest

from preprocess.readers import read_umt
from pretokenizer_ita import ZERO_WIDTH_SEPARATORS, TweetPreTokenizer

SPLIT = TweetPreTokenizer().pre_tokenize_str


def words(text: str) -> list[str]:
    return [word for word, _ in SPLIT(text)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("RT @NBA_Skits: Will Chris Paul win?", ["RT", "@NBA_Skits", ":", "Will", "Chris", "Paul", "win", "?"]),
        ("Go #Raptors2019, $AAPL up!!", ["Go", "#Raptors2019", ",", "$AAPL", "up", "!!"]),
        (
            "see https://t.co/Z3neVBQ7vF. and (www.bbc.co.uk/news)",
            ["see", "https://t.co/Z3neVBQ7vF", ".", "and", "(", "www.bbc.co.uk/news", ")"],
        ),
        ("mail me@x.org now", ["mail", "me@x.org", "now"]),
        (
            "cut http://t.co/ab… and htt… w/ Beer/BBQ &amp; -- ok",
            ["cut", "http://t.co/ab…", "and", "htt…", "w/", "Beer/BBQ", "&amp", ";", "--", "ok"],
        ),
        (
            "Ted Cruz's rally, I don't care, she'll go",
            ["Ted", "Cruz", "'s", "rally", ",", "I", "do", "n't", "care", ",", "she", "'ll", "go"],
        ),
        ("O'Neill’s Spider-Man at AT&T", ["O'Neill", "’s", "Spider-Man", "at", "AT&T"]),
        ("U.S. 10,000 fans 3.5% at 5:30pm...", ["U.S.", "10,000", "fans", "3.5", "%", "at", "5:30pm", "..."]),
        (
            "Paris😍London 🏀🏀 👩‍👩‍👧 👍🏽 🇺🇸 1️⃣ ❤️",
            ["Paris", "😍", "London", "🏀", "🏀", "👩‍👩‍👧", "👍🏽", "🇺🇸", "1️⃣", "❤️"],
        ),
        ("lol :) :-( <3 ;D", ["lol", ":)", ":-(", "<3", ";D"]),
        ("नमस्ते दुनिया «quoted» — done", ["नमस्ते", "दुनिया", "«", "quoted", "»", "—", "done"]),
        ("zero\u200bwidth\u00a0nbsp co\u00adop", ["zero", "width", "nbsp", "co\u00adop"]),
    ],
)
def test_splits_tweets_into_sensible_words(text, expected):
    assert words(text) == expected


def assert_exact_cover(text: str) -> None:
    """Offsets slice the word out of the text, in order, and every non-separator character is in a word."""
    pieces = SPLIT(text)
    covered = [False] * len(text)
    previous_end = 0
    for word, (start, end) in pieces:
        assert text[start:end] == word and word
        assert start >= previous_end
        previous_end = end
        for i in range(start, end):
            covered[i] = True
    for char, is_covered in zip(text, covered):
        if not is_covered:
            assert char.isspace() or char in ZERO_WIDTH_SEPARATORS, f"dropped {char!r} of {text!r}"


def test_random_strings_lose_no_character():
    pool = list("aZé9_@#$'’-&.,:;!?()<3/") + [
        "😍",
        "👍",
        "🏽",
        "\u200d",
        "\ufe0f",
        "🇺",
        "🇸",
        "\u200b",
        "\u00a0",
        " ",
        "\u00ad",
        "\u0092",
        "ा",
        "न",
        "http://t.co/",
        "n't",
        "'s",
        "\u20e3",
        "…",
    ]
    rng = random.Random(0)
    for _ in range(2000):
        assert_exact_cover("".join(rng.choice(pool) for _ in range(rng.randint(0, 30))))


def test_agrees_with_the_gold_tokenization_of_twitter2015(shared_data):
    """Re-splitting the data's tweets (joined by spaces) gives back its words; the data splits `'s` as `'` `s`."""
    tweets = [example.tokens for example in read_umt(shared_data / "twitter2015" / "test.txt")]
    assert len(tweets) == 3257
    same = 0
    for gold in tweets:
        text = " ".join(gold)
        assert_exact_cover(text)
        same += words(text) == [word for word in gold if word.strip() and word not in ZERO_WIDTH_SEPARATORS]
    assert same / len(tweets) >= 0.94, same / len(tweets)
