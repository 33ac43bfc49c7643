"""Tag schemes and entity types: IOB1 and BIOES tag sequences checked and converted to BIO, and types renamed.

ITA tags BIO: `O`, `B-<TYPE>` at the first word of an entity, `I-<TYPE>` at the others. Datasets come in other
schemes too, and each is checked against its own rules before it is converted, so that a sequence that is not what
it is declared to be is an error rather than a silently different entity:

- `BIO`: every tag is `O`, `B-<TYPE>` or `I-<TYPE>`. A span that starts with `I-` is kept as it is (Twitter-2015 and
  -2017 have a few; evaluation decides how to read them), as the UMT and JSONL readers keep it.
- `IOB1` (CoNLL-2003's original files): an entity starts with `I-`; `B-<TYPE>` only starts an entity right after
  another entity of the same type. Converted: a tag that starts an entity becomes `B-`.
- `BIOES` (also called IOBES): `S-<TYPE>` is a one-word entity; a longer one is `B-`, then `I-`s, then `E-`.
  Converted: `S-` → `B-`, `E-` → `I-`.

Renaming (`--rename-types OTHER=MISC`) makes two datasets agree on a type's name: Twitter-2015 calls `OTHER` what
Twitter-2017 calls `MISC`, so a model trained on one cannot be evaluated on the other without it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

BIO, IOB1, BIOES = "BIO", "IOB1", "BIOES"
TAG_SCHEMES: tuple[str, ...] = (BIO, IOB1, BIOES)
# One tag of any scheme: `O`, or a prefix and a type without whitespace.
_TAG = re.compile(r"^(?:O|(?P<prefix>[BIES])-(?P<type>\S+))$")
_PREFIXES = {BIO: "BI", IOB1: "BI", BIOES: "BIES"}
_SCHEME_FORMS = {
    BIO: "'O', 'B-<TYPE>' or 'I-<TYPE>'",
    IOB1: "'O', 'I-<TYPE>' (an entity) or 'B-<TYPE>' (an entity right after one of the same type)",
    BIOES: "'O', 'S-<TYPE>' (a one-word entity) or 'B-<TYPE>' 'I-<TYPE>'... 'E-<TYPE>'",
}


class TagSchemeError(ValueError):
    """A tag sequence is not valid in its declared scheme; the message names the tag by position (1-based)."""


def split_tag(tag: str, scheme: str = BIOES) -> tuple[str, str | None]:
    """A tag's prefix and entity type: `("O", None)` for `O`, e.g. `("B", "PER")` for `B-PER`.

    Raises:
        TagSchemeError: The tag has no form of `scheme`.
    """
    match = _TAG.match(tag)
    if match is None or (match["prefix"] is not None and match["prefix"] not in _PREFIXES[scheme]):
        hint = "" if scheme != BIO or match is None else f" (a {BIOES} tag: declare the scheme with --tag-scheme BIOES)"
        raise TagSchemeError(f"{tag!r} is not {scheme}: expected {_SCHEME_FORMS[scheme]}{hint}")
    return (match["prefix"], match["type"]) if match["prefix"] else ("O", None)


def scheme_of_labels(names: Iterable[str]) -> str:
    """The scheme a label set shows: BIOES when it has an `E-` or `S-` label, else BIO (IOB1 cannot be told apart)."""
    return BIOES if any(name.startswith(("E-", "S-")) for name in names) else BIO


def to_bio(tags: Sequence[str], scheme: str) -> list[str]:
    """Check a tweet's tags against `scheme` and convert them to BIO.

    Args:
        tags: The tags, one per word.
        scheme: One of `TAG_SCHEMES`.

    Returns:
        The BIO tags.

    Raises:
        TagSchemeError: A tag has no form of the scheme, or the sequence breaks the scheme's rules (an IOB1 `B-`
            that follows no entity of its type; a BIOES entity not closed by `E-`, or `I-`/`E-` without a `B-`).
    """
    if scheme not in TAG_SCHEMES:
        raise ValueError(f"unknown tag scheme {scheme!r}; choose from {list(TAG_SCHEMES)}")
    bio: list[str] = []
    # The prefix and type of the tag before, and the type of the entity it leaves open (BIOES: after B- or I-).
    previous_type: str | None = None
    open_type: str | None = None
    for position, tag in enumerate(tags, start=1):
        try:
            prefix, entity = split_tag(tag, scheme)
        except TagSchemeError as err:
            raise TagSchemeError(f"tag {position} {err}") from None
        where = f"tag {position} {tag!r}"
        if scheme == IOB1:
            if prefix == "B" and previous_type != entity:
                raise TagSchemeError(
                    f"{where} is not IOB1: B- only starts an entity right after another {entity} entity "
                    "(an entity starts with I-)"
                )
            prefix = "B" if prefix == "B" or previous_type != entity else "I"
        elif scheme == BIOES:
            if open_type is not None and not (prefix in ("I", "E") and entity == open_type):
                raise TagSchemeError(
                    f"{where} is not BIOES: the {open_type} entity before it must go on with I-{open_type} or end "
                    f"with E-{open_type}"
                )
            if open_type is None and prefix in ("I", "E"):
                raise TagSchemeError(f"{where} is not BIOES: it continues no entity (no B- before it)")
            open_type = entity if prefix in ("B", "I") else None
            prefix = {"S": "B", "E": "I"}.get(prefix, prefix)
        bio.append("O" if entity is None else f"{prefix}-{entity}")
        previous_type = entity
    if open_type is not None:
        raise TagSchemeError(
            f"tag {len(tags)} {tags[-1]!r} is not BIOES: the tweet ends inside a {open_type} entity (no E- closes it)"
        )
    return bio


def parse_renames(pairs: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """Entity-type renames given as `OLD=NEW` strings (or a mapping), checked.

    Raises:
        ValueError: Not `OLD=NEW`, an empty or whitespace-holding type, or one type renamed twice.
    """
    if not pairs:
        return {}
    items = list(pairs.items()) if isinstance(pairs, Mapping) else [pair.partition("=")[::2] for pair in pairs]
    renames: dict[str, str] = {}
    for old, new in items:
        if not old or not new or re.search(r"\s", old + new) or "=" in new:
            raise ValueError(
                f"entity-type renames are OLD=NEW with two types without spaces, e.g. OTHER=MISC; got {old}={new}"
            )
        if old in renames:
            raise ValueError(f"entity type {old!r} is renamed twice ({old}={renames[old]} and {old}={new})")
        renames[old] = new
    return renames


def check_renames(renames: Mapping[str, str], types: Iterable[str]) -> None:
    """Refuse renames of types the data does not have (a misspelt type would rename nothing).

    Raises:
        ValueError: A renamed type is not among `types`.
    """
    found = set(types)
    absent = [old for old in renames if old not in found]
    if absent:
        raise ValueError(
            f"--rename-types renames {absent}, which the data does not have; its types are {sorted(found)}"
        )


def rename_tag(tag: str, renames: Mapping[str, str]) -> str:
    """A BIO tag with its type renamed (`B-OTHER` → `B-MISC` for `{"OTHER": "MISC"}`); other tags as they are."""
    if tag == "O" or not renames:
        return tag
    prefix, _, entity = tag.partition("-")
    return f"{prefix}-{renames.get(entity, entity)}"


def types_of_labels(names: Iterable[str], renames: Mapping[str, str]) -> list[str]:
    """The entity types of a label set (any scheme), renamed, in the order the labels first name them."""
    types: dict[str, None] = {}
    for name in names:
        match = _TAG.match(name)
        if match is not None and match["type"] is not None:
            types.setdefault(renames.get(match["type"], match["type"]))
    return list(types)
