"""A tweet-aware pre-tokenizer: splits raw tweet text into words with character offsets.

This file is remote code (the multimodal-ner pipeline imports it), so it imports only the standard library.

ITA tags words, and the benchmark data (Twitter-2015/2017, CoNLL format) is already split into words; a raw
tweet given to the pipeline must be split the same way before the model sees it. A whitespace split would
glue punctuation, emoji and possessives to names ("Obama's", "London!", "Paris😍"), and a generic word
splitter would break @mentions, #hashtags and URLs apart. The rules, tried in this order at each position:

1. URLs (`https://…`, `www.…`), without trailing punctuation but with Twitter's truncation mark `…`;
   e-mail addresses.
2. @mentions, #hashtags and $cashtags, each one word.
3. Emoji: one word per emoji, keeping skin-tone modifiers, variation selectors, keycaps, flags and
   zero-width-joiner sequences (👩‍👩‍👧) together; consecutive emoji are separate words, as in the data.
4. Emoticons such as `:)`, `;-(`, `:D`, `<3` standing on their own.
5. Numbers with inner separators (`10,000`, `3.5`, `5:30`, `1/2`); abbreviations (`U.S.`, `e.g.`).
6. Words: letters, digits, combining marks (any script) joined by inner `'`, `’`, `-`, `&` or `/` (`O'Neill`,
   `Spider-Man`, `AT&T`, `Showtime/CBS`); `w/`, `w/o`, `b/c`; HTML escapes (`&amp`). English clitics are split off Penn-Treebank style (`don't` → `do` `n't`,
   `Cruz's` → `Cruz` `'s`), so a name keeps its own word.
7. Anything else that is not a separator: one character per word, except runs of one ASCII punctuation
   character (`...`, `!!`, `--`).

Separators are whitespace (including U+00A0 and other Unicode spaces) and the invisible zero-width
characters U+200B, U+2060, U+FEFF, U+180E, U+200E and U+200F. Every other character of the text ends up in
exactly one word, so nothing is dropped, and `text[start:end] == word` for every word.
"""

import re

# Invisible characters that separate words the way a space does (they carry no text of their own).
ZERO_WIDTH_SEPARATORS = "\u200b\u2060\ufeff\u180e\u200e\u200f"
_SPACE = rf"\s{ZERO_WIDTH_SEPARATORS}"

# Pictographs and symbols that are words of their own, and the code points that modify them.
_EMOJI_BASE = (
    "\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff\u2190-\u21ff\u2100-\u214f\u25a0-\u25ff"
    "\u2900-\u297f\u3030\u303d\u3297\u3299\u00a9\u00ae\u203c\u2049"
)
_EMOJI_MODIFIER = "\U0001f3fb-\U0001f3ff\ufe0e\ufe0f\u20e3\U000e0020-\U000e007f"
_REGIONAL_INDICATOR = "\U0001f1e6-\U0001f1ff"

# Punctuation that never belongs to a word: ASCII, Latin-1 (but not the soft hyphen U+00AD, which sits inside
# words), general punctuation (quotes, dashes, ellipsis), CJK and full-width punctuation.
_PUNCTUATION = (
    "!-/:-@\\[-`{-~\u00a1-\u00ac\u00ae-\u00bf\u00d7\u00f7\u2010-\u2027\u2030-\u205e\u3001-\u303f"
    "\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
)
_WORD_CHAR = rf"[^{_SPACE}{_PUNCTUATION}{_EMOJI_BASE}{_EMOJI_MODIFIER}\u200d]"
_EMOJI = rf"[{_EMOJI_BASE}][{_EMOJI_MODIFIER}]*(?:\u200d[{_EMOJI_BASE}][{_EMOJI_MODIFIER}]*)*"

_TOKEN_PATTERNS = [
    # A URL ends on a character that cannot be trailing sentence punctuation, or on the `…` of a URL that
    # Twitter truncated (`http://t.co/ab…`, even `htt…`).
    (
        "url",
        r"(?:https?://|www\.)[!-~]*(?:[A-Za-z0-9/#=_\-~+&%$*@]…?|…)|(?<![A-Za-z0-9])h(?:t(?:t(?:ps?)?)?)?(?::/{0,2})?…",
    ),
    # Tweets from the API carry HTML-escaped `&`, `<`, `>`; the data keeps `&amp` as a word and `;` apart.
    ("html_entity", r"&(?:amp|lt|gt|quot|apos|#\d+)(?![A-Za-z0-9])"),
    # Tried only where a run of local-part characters starts, and bounded as RFC 5321 bounds them (64-character
    # local part, 63-character labels): otherwise a long run without an `@` ("a%a%a%...") is rescanned from every
    # position, which is quadratic.
    (
        "email",
        r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63}){0,8}\.[A-Za-z]{2,63}",
    ),
    ("mention", r"(?<![A-Za-z0-9_])@[A-Za-z0-9_]+"),
    ("hashtag", rf"#{_WORD_CHAR}+"),
    ("cashtag", r"\$[A-Za-z][A-Za-z._]*(?![A-Za-z0-9])"),
    ("flag", rf"[{_REGIONAL_INDICATOR}]{{2}}"),
    ("keycap", "[0-9#*]\ufe0f?\u20e3"),
    ("emoji", _EMOJI),
    ("emoticon", rf"(?<![^{_SPACE}])(?:[:;=][\-o']?[)(\]\[dDpP/\\|3*]+|<3+)(?![A-Za-z0-9])"),
    ("number", rf"\d+(?:[.,:/]\d+)+{_WORD_CHAR}*"),
    ("abbreviation", r"(?:[A-Za-z]\.){2,}|(?<![A-Za-z0-9])(?:(?:[wW]/[oO]|[bB]/[cCwW])(?![A-Za-z0-9])|[wW]/)"),
    ("word", rf"{_WORD_CHAR}+(?:['’\-&/]{_WORD_CHAR}+)*"),
    ("punctuation_run", r"(?P<repeated>[!-/:-@\[-`{-~])(?P=repeated)+"),
    ("other", rf"[^{_SPACE}]"),
]
_TOKEN = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in _TOKEN_PATTERNS))
# Clitics split off a word's end: `n't` first (it would otherwise leave `don` + `'t`), then `'s`, `'re`, ...
_NEGATION = re.compile(r"(?i)^(.+)(n['’]t)$")
_CLITIC = re.compile(r"(?i)^(.+?)(['’](?:s|m|d|ll|re|ve))$")


class TweetPreTokenizer:
    """Splits tweet text into words with character offsets (see the module docstring for the rules).

    The interface mirrors `tokenizers`' `PreTokenizer.pre_tokenize_str`, so it can stand wherever a list of
    `(word, (start, end))` pairs is expected.

    Args:
        split_clitics (`bool`, *optional*, defaults to `True`):
            Split English clitics off words (`don't` → `do` `n't`, `Cruz's` → `Cruz` `'s`).

    Example:
    ```python
    >>> TweetPreTokenizer().pre_tokenize_str("RT @NBA: Curry's 3 🏀🔥 https://t.co/x")
    [('RT', (0, 2)), ('@NBA', (3, 7)), (':', (7, 8)), ('Curry', (9, 14)), ("'s", (14, 16)), ('3', (17, 18)),
     ('🏀', (19, 20)), ('🔥', (20, 21)), ('https://t.co/x', (22, 36))]
    ```
    """

    def __init__(self, split_clitics: bool = True):
        self.split_clitics = split_clitics

    def _split_clitic(self, word: str) -> int | None:
        """Length of the stem when `word` ends with an English clitic, else None."""
        for pattern in (_NEGATION, _CLITIC):
            match = pattern.match(word)
            if match:
                return len(match.group(1))
        return None

    def pre_tokenize_str(self, text: str) -> list[tuple[str, tuple[int, int]]]:
        """Splits `text` into words.

        Args:
            text: the raw tweet.

        Returns:
            `(word, (start, end))` pairs in text order, with `text[start:end] == word`; empty for a text made
            only of separators.
        """
        if not isinstance(text, str):
            raise TypeError(f"TweetPreTokenizer splits a str, got {type(text).__name__}.")
        words = []
        for match in _TOKEN.finditer(text):
            start, end = match.span()
            stem = self._split_clitic(match.group()) if self.split_clitics and match.lastgroup == "word" else None
            if stem is None:
                words.append((match.group(), (start, end)))
            else:
                words.append((text[start : start + stem], (start, start + stem)))
                words.append((text[start + stem : end], (start + stem, end)))
        return words
