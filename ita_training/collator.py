"""Batches of ITA inputs built on the fly from dataset rows, with dynamic padding."""

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from encoding_ita import encode_example, pad_batch


@dataclass
class ITADataCollator:
    """Encodes dataset rows (`tokens`, `visual_context`, optional `ner_tags` and `id`) into a padded ITA batch.

    Encoding happens here rather than in a `Dataset.map`, so that the same rows serve every inference mode
    (with visual context, text only) and the CVA text-only view without storing three encodings.

    Args:
        tokenizer: the encoder's fast tokenizer.
        max_context_tokens: sub-token budget of the visual context (`ITAConfig.max_context_tokens`).
        use_context: read the `visual_context` column; False makes x' the tweet alone (text-only inference).
        text_view: also build the text-only view x (the `text_*` fields), which turns on cross-view alignment
            in the model's loss.
        max_length: the encoder's length limit; defaults to `tokenizer.model_max_length`.

    Calling it on a list of rows returns `(batch_size, sequence_length)` long tensors per view field, and
    `labels` `(batch_size, num_words)` (-100 at padding) when the rows have `ner_tags`.
    """

    tokenizer: PreTrainedTokenizerBase
    max_context_tokens: int = 128
    use_context: bool = True
    text_view: bool = False
    max_length: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        features = []
        for row in rows:
            context = (row.get("visual_context") or "") if self.use_context else ""
            try:
                feature = encode_example(
                    self.tokenizer,
                    row["tokens"],
                    context,
                    max_context_tokens=self.max_context_tokens,
                    max_length=self.max_length,
                    # A tweet without context has identical views; the model then adds no alignment term for it.
                    text_view=self.text_view,
                )
            except ValueError as err:
                # Same type (TweetTooLongError stays one), with the row that caused it.
                raise type(err)(f"Row {row.get('id', '?')!r}: {err}") from err
            if "ner_tags" in row:
                if len(row["ner_tags"]) != len(row["tokens"]):
                    raise ValueError(
                        f"Row {row.get('id', '?')!r} has {len(row['tokens'])} tokens but "
                        f"{len(row['ner_tags'])} ner_tags; every word needs exactly one tag."
                    )
                feature["labels"] = list(row["ner_tags"])
            features.append(feature)
        return pad_batch(features, self.tokenizer.pad_token_id)
