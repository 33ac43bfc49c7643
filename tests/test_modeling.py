"""ITAForTokenClassification: word gather, CRF loss, cross-view alignment (docs/method.md §3), decoding, save/load."""

import pytest
import torch

from configuration_ita import ITAConfig
from crf_ita import PAD_TAG
from encoding_ita import encode_example, pad_batch
from helpers import TWEETS, tiny_encoder_config
from modeling_ita import ITAForTokenClassification

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG"]


def tiny_model(tokenizer, **config_kwargs) -> ITAForTokenClassification:
    torch.manual_seed(0)
    encoder = tiny_encoder_config("bert", vocab_size=len(tokenizer))
    model = ITAForTokenClassification(ITAConfig(encoder_config=encoder, labels=LABELS, **config_kwargs))
    with torch.no_grad():  # CRF scores away from zero so that marginals and KL are not trivial
        model.crf.transitions.normal_(0, 1)
        model.classifier.weight.normal_(0, 1)
    return model.eval()


def batch_of(tokenizer, contexts: list[str], with_labels: bool = True) -> dict[str, torch.Tensor]:
    features = []
    for i, (tweet, context) in enumerate(zip(TWEETS, contexts)):
        words = tweet.split()
        feature = encode_example(tokenizer, words, context)
        if with_labels:
            feature["labels"] = [(i + j) % len(LABELS) for j in range(len(words))]
        features.append(feature)
    return pad_batch(features, tokenizer.pad_token_id)


CONTEXTS = ["basketball player on court", "", "a festival stage", "white house lawn"]


def reference_kl(model, out, batch, temperature):
    """KL(q_T(x') ‖ q_T(x)) per sentence from the CRF's marginals, written out independently of the model."""
    mask = batch["word_index"] >= 0
    teacher = model.crf.marginals(out.logits, mask).clamp_min(1e-30).log()
    student = model.crf.marginals(out.text_logits, mask).clamp_min(1e-30).log()
    # log-marginals differ from α+β by a per-word constant, which softmax(·/T) removes.
    p = torch.softmax(teacher / temperature, -1)
    q = torch.log_softmax(student / temperature, -1)
    return ((p * (p.clamp_min(1e-30).log() - q)).sum(-1) * mask).sum(-1)


def test_loss_is_exactly_the_cva_formula_of_method_md(minilm_tokenizer):
    model = tiny_model(minilm_tokenizer, cva_temperature=2.0, cva_weight=0.3)
    batch = batch_of(minilm_tokenizer, CONTEXTS)
    out = model(**batch)
    mask = batch["word_index"] >= 0
    nll = model.crf.neg_log_likelihood(out.logits, batch["labels"], mask)
    text_nll = model.crf.neg_log_likelihood(out.text_logits, batch["labels"], mask)
    kl = reference_kl(model, out, batch, 2.0)
    has_context = torch.tensor([c != "" for c in CONTEXTS], dtype=kl.dtype)
    expected = (0.3 * (nll + text_nll) + 0.7 * 4.0 * kl * has_context).mean()
    torch.testing.assert_close(out.loss, expected)
    assert kl[0] > 1e-6, "the views differ, so the KL must not vanish"


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_cva_term_scales_with_t_squared(minilm_tokenizer, temperature):
    model = tiny_model(minilm_tokenizer, cva_temperature=temperature, cva_weight=0.0)
    batch = batch_of(minilm_tokenizer, CONTEXTS)
    out = model(**batch)
    kl = reference_kl(model, out, batch, temperature)
    has_context = torch.tensor([c != "" for c in CONTEXTS], dtype=kl.dtype)
    torch.testing.assert_close(out.loss, (temperature**2 * kl * has_context).mean())


def test_emission_softmax_variant(minilm_tokenizer):
    model = tiny_model(minilm_tokenizer, cva_weight=0.0, cva_kl_on="emission_softmax", cva_temperature=2.0)
    batch = batch_of(minilm_tokenizer, CONTEXTS)
    out = model(**batch)
    mask = batch["word_index"] >= 0
    p = torch.softmax(out.logits / 2.0, -1)
    kl = ((p * (p.log() - torch.log_softmax(out.text_logits / 2.0, -1))).sum(-1) * mask).sum(-1)
    has_context = torch.tensor([c != "" for c in CONTEXTS], dtype=kl.dtype)
    torch.testing.assert_close(out.loss, (4.0 * kl * has_context).mean())


def test_cva_is_zero_for_identical_views(minilm_tokenizer):
    model = tiny_model(minilm_tokenizer)
    batch = batch_of(minilm_tokenizer, CONTEXTS)
    out = model(**batch)
    mask = batch["word_index"] >= 0
    assert torch.allclose(model.cross_view_kl(out.logits, out.logits, mask), torch.zeros(4), atol=1e-6)
    # With the text view equal to the cross view, the loss is λ·2·NLL: no alignment term at all.
    same = {k: v for k, v in batch.items() if not k.startswith("text_")}
    same.update({"text_" + k: v for k, v in same.items() if k != "labels"})
    torch.testing.assert_close(
        model(**same).loss, model(**{k: v for k, v in batch.items() if not k.startswith("text_")}).loss
    )


def test_no_gradient_reaches_the_teacher(minilm_tokenizer):
    model = tiny_model(minilm_tokenizer, cva_weight=0.0)
    batch = batch_of(minilm_tokenizer, CONTEXTS)
    captured = []
    original = model.word_emissions

    def capture(*args, **kwargs):
        emissions, mask = original(*args, **kwargs)
        emissions.retain_grad()
        captured.append(emissions)
        return emissions, mask

    model.word_emissions = capture
    model(**batch).loss.backward()
    teacher, student = captured
    assert teacher.grad is None or torch.all(teacher.grad == 0)
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_tweets_without_context_get_no_cva_term(minilm_tokenizer):
    model = tiny_model(minilm_tokenizer, cva_weight=0.0)
    batch = batch_of(minilm_tokenizer, CONTEXTS)
    # Make the second tweet's views differ in content but not in length: it has no context, so its term
    # must be 0 even though a KL would not be.
    batch["input_ids"][1, 1] = batch["input_ids"][0, 1]
    out = model(**batch)
    kl = reference_kl(model, out, batch, model.config.cva_temperature)
    assert kl[1] > 1e-6
    has_context = torch.tensor([1.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(out.loss, (model.config.cva_temperature**2 * kl * has_context).mean())


def test_padding_does_not_change_any_sentence(minilm_tokenizer):
    model = tiny_model(minilm_tokenizer)
    batch = batch_of(minilm_tokenizer, CONTEXTS)
    out = model(**batch, return_tags=True)
    for i in range(len(CONTEXTS)):
        single = batch_of(minilm_tokenizer, CONTEXTS)
        single = {k: v[i : i + 1] for k, v in single.items()}
        n_words = int((single["word_index"] >= 0).sum())
        width = int(single["attention_mask"].sum()), int(single["text_attention_mask"].sum())
        single = {
            k: (
                v[:, :n_words]
                if k in ("word_index", "text_word_index", "labels")
                else v[:, : width[1]]
                if k.startswith("text_")
                else v[:, : width[0]]
            )
            for k, v in single.items()
        }
        alone = model(**single, return_tags=True)
        torch.testing.assert_close(alone.logits[0], out.logits[i, :n_words], atol=1e-5, rtol=1e-5)
        assert alone.tags[0].tolist() == out.tags[i, :n_words].tolist()
        assert torch.all(out.tags[i, n_words:] == PAD_TAG)
    losses = []
    for i in range(len(CONTEXTS)):
        losses.append(model(**{k: v[i : i + 1] for k, v in batch.items()}).loss)
    # The batch loss is the mean of the tweets' losses, each computed alone.
    torch.testing.assert_close(out.loss, torch.stack(losses).mean())


def test_labels_must_be_minus_100_exactly_at_padding(minilm_tokenizer):
    model = tiny_model(minilm_tokenizer)
    batch = batch_of(minilm_tokenizer, CONTEXTS)
    batch["labels"][0, 1] = -100
    with pytest.raises(ValueError, match="-100 exactly at word padding"):
        model(**batch)


def test_decoded_tags_are_valid_bio_with_marginal_scores(minilm_tokenizer):
    model = tiny_model(minilm_tokenizer)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0, 5.0]))  # push towards I- tags
    batch = batch_of(minilm_tokenizer, CONTEXTS, with_labels=False)
    out = model(**batch, return_tags=True)
    mask = batch["word_index"] >= 0
    marginals = model.crf.marginals(out.logits, mask)
    for row, row_mask, scores, probs in zip(out.tags, mask, out.tag_scores, marginals):
        tags = [LABELS[t] for t in row[row_mask].tolist()]
        previous = "O"
        for tag in tags:
            assert not (tag.startswith("I-") and previous[2:] != tag[2:]), tags
            previous = tag
        expected = probs[row_mask].gather(1, row[row_mask].unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(scores[row_mask], expected)
        assert torch.all((scores[row_mask] > 0) & (scores[row_mask] <= 1))


def test_plain_nll_without_text_view(minilm_tokenizer):
    model = tiny_model(minilm_tokenizer)
    batch = {k: v for k, v in batch_of(minilm_tokenizer, CONTEXTS).items() if not k.startswith("text_")}
    out = model(**batch)
    mask = batch["word_index"] >= 0
    torch.testing.assert_close(out.loss, model.crf.neg_log_likelihood(out.logits, batch["labels"], mask).mean())


def test_word_dropout_zeroes_whole_words_only_in_training(minilm_tokenizer):
    model = tiny_model(minilm_tokenizer, word_dropout=0.5)
    words = torch.ones(8, 50, 4)
    model.train()
    dropped = model.word_dropout(words)
    per_word = dropped.sum(-1)
    assert set(per_word.unique().tolist()) == {0.0, 4.0}
    assert 0.3 < (per_word == 0).float().mean() < 0.7
    model.eval()
    assert torch.equal(model.word_dropout(words), words)


def test_save_and_reload_gives_identical_logits(minilm_tokenizer, tmp_path):
    model = tiny_model(minilm_tokenizer)
    batch = batch_of(minilm_tokenizer, CONTEXTS, with_labels=False)
    model.save_pretrained(tmp_path)
    reloaded = ITAForTokenClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(model(**batch).logits, reloaded(**batch).logits)
    assert torch.equal(reloaded.crf.allowed, model.crf.allowed)


def test_from_encoder_keeps_the_pretrained_weights(minilm_dir):
    from transformers import AutoModel

    model = ITAForTokenClassification.from_encoder(str(minilm_dir), labels=LABELS, cva_temperature=4.0)
    reference = AutoModel.from_pretrained(minilm_dir)
    own = model.encoder.state_dict()
    for name, tensor in reference.state_dict().items():
        if name.startswith("pooler."):
            assert name not in own  # ITA reads token states; the pooler would be dead weight
        else:
            assert torch.equal(own[name], tensor), name
    assert model.config.cva_temperature == 4.0 and model.config.hidden_size == 384
