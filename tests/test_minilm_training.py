"""With the real MiniLM encoder, a few optimizer steps on 20 real Twitter-2017 tweets lower the loss."""

import pytest
import torch

from encoding_ita import encode_example, pad_batch
from helpers import LABELS
from modeling_ita import ITAForTokenClassification
from preprocess.readers import read_umt


@pytest.mark.slow
def test_a_few_steps_on_real_tweets_lower_the_loss(minilm_dir, minilm_tokenizer, shared_data):
    tweets = read_umt(shared_data / "twitter2017" / "train.txt")[:20]
    assert len(tweets) == 20 and sum(tag.startswith("B-") for t in tweets for tag in t.tags) > 10
    torch.manual_seed(0)
    model = ITAForTokenClassification.from_encoder(str(minilm_dir), labels=LABELS)
    features = []
    for tweet in tweets:
        # A stand-in context of real text so that both views and the CVA term are exercised.
        feature = encode_example(minilm_tokenizer, tweet.tokens, "a photo of " + " ".join(tweet.tokens[:3]))
        feature["labels"] = [LABELS.index(tag) for tag in tweet.tags]
        features.append(feature)
    batches = [pad_batch(features[i : i + 10], minilm_tokenizer.pad_token_id) for i in (0, 10)]

    def total_loss() -> float:
        model.eval()
        with torch.no_grad():
            return sum(model(**batch).loss.item() for batch in batches)

    before = total_loss()
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in model.named_parameters() if not n.startswith("crf.")], "lr": 1e-4},
            {"params": model.crf.parameters(), "lr": 5e-2},
        ]
    )
    model.train()
    for _ in range(4):
        for batch in batches:
            loss = model(**batch).loss
            assert torch.isfinite(loss)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            optimizer.zero_grad()
    after = total_loss()
    assert after < 0.7 * before, (before, after)
