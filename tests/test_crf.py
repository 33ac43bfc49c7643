"""The CRF against brute-force enumeration of every tag sequence."""

import itertools

import numpy as np
import pytest
import torch

from crf_ita import (
    PAD_TAG,
    ConditionalRandomField,
    CRFDecoder,
    bio_transition_constraints,
    marginals_numpy,
    viterbi_decode_numpy,
)

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def random_crf(num_tags: int, seed: int, constrained: bool = False) -> ConditionalRandomField:
    torch.manual_seed(seed)
    allowed = bio_transition_constraints(LABELS[:num_tags]) if constrained else (None, None)
    crf = ConditionalRandomField(num_tags, *allowed).double()
    with torch.no_grad():
        for parameter in crf.parameters():
            parameter.normal_(0.0, 1.5)
    return crf


def random_batch(lengths: list[int], num_tags: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    emissions = torch.randn(len(lengths), max(lengths), num_tags, generator=generator, dtype=torch.double) * 2
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    return emissions, mask


def enumerate_paths(crf, emissions, length, transitions=None, start=None, end=None):
    """Every tag sequence of `length` with its score, scored term by term."""
    transitions = crf.transitions if transitions is None else transitions
    start = crf.start_transitions if start is None else start
    end = crf.end_transitions if end is None else end
    paths = list(itertools.product(range(crf.num_tags), repeat=length))
    scores = []
    for path in paths:
        score = start[path[0]] + end[path[-1]]
        score = score + sum(emissions[i, tag] for i, tag in enumerate(path))
        score = score + sum(transitions[a, b] for a, b in zip(path, path[1:]))
        scores.append(score)
    return paths, torch.stack(scores)


CASES = [([1], 3), ([4], 3), ([3, 1, 2], 4), ([5, 5], 3), ([2, 4, 3, 1], 5)]


@pytest.mark.parametrize("lengths,num_tags", CASES)
def test_log_partition_and_path_scores_match_enumeration(lengths, num_tags):
    crf = random_crf(num_tags, seed=len(lengths))
    emissions, mask = random_batch(lengths, num_tags, seed=num_tags)
    log_z = crf.log_partition(emissions, mask)
    for b, length in enumerate(lengths):
        paths, scores = enumerate_paths(crf, emissions[b], length)
        torch.testing.assert_close(log_z[b], torch.logsumexp(scores, dim=0))
        # The path score of a random path, padded with garbage tags, equals its enumerated score.
        pick = (b * 7) % len(paths)
        tags = torch.randint(0, num_tags, (1, mask.size(1)))
        tags[0, :length] = torch.tensor(paths[pick])
        own = crf.path_score(emissions[b : b + 1], tags, mask[b : b + 1])
        torch.testing.assert_close(own[0], scores[pick])
        nll = crf.neg_log_likelihood(emissions[b : b + 1], tags, mask[b : b + 1])
        torch.testing.assert_close(nll[0], torch.logsumexp(scores, 0) - scores[pick])


@pytest.mark.parametrize("lengths,num_tags", CASES)
def test_marginals_match_enumeration(lengths, num_tags):
    crf = random_crf(num_tags, seed=3)
    emissions, mask = random_batch(lengths, num_tags, seed=5)
    marginals = crf.marginals(emissions, mask)
    for b, length in enumerate(lengths):
        paths, scores = enumerate_paths(crf, emissions[b], length)
        probabilities = torch.softmax(scores, dim=0)
        expected = torch.zeros(length, num_tags, dtype=torch.double)
        for path, probability in zip(paths, probabilities):
            for i, tag in enumerate(path):
                expected[i, tag] += probability
        torch.testing.assert_close(marginals[b, :length], expected)
        torch.testing.assert_close(marginals[b, :length].sum(-1), torch.ones(length, dtype=torch.double))
        assert torch.all(marginals[b, length:] == 0)
    scores = [p.detach().numpy() for p in (crf.transitions, crf.start_transitions, crf.end_transitions)]
    np.testing.assert_allclose(
        marginals_numpy(emissions.numpy(), mask.numpy(), *scores), marginals.detach().numpy(), atol=1e-10
    )
    # A padding column past the longest sentence, and an empty sentence, stay at exactly 0.
    wider = torch.cat([emissions, emissions[:, :1]], dim=1)
    wider_mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], dim=1)
    wider_mask[0] = False
    wide = marginals_numpy(wider.numpy(), wider_mask.numpy(), *scores)
    assert np.isfinite(wide).all() and np.all(wide[:, -1] == 0) and np.all(wide[0] == 0)
    np.testing.assert_allclose(wide[1:, :-1], marginals.detach().numpy()[1:], atol=1e-10)


@pytest.mark.parametrize("lengths,num_tags", CASES)
@pytest.mark.parametrize("constrained", [False, True])
def test_viterbi_is_the_best_enumerated_path_in_torch_and_numpy(lengths, num_tags, constrained):
    crf = random_crf(num_tags, seed=11, constrained=constrained)
    emissions, mask = random_batch(lengths, num_tags, seed=13)
    tags, best = crf.viterbi_decode(emissions, mask, constrained=constrained)
    transitions, start, end = crf.decoding_parameters() if constrained else (None, None, None)
    for b, length in enumerate(lengths):
        paths, scores = enumerate_paths(crf, emissions[b], length, transitions, start, end)
        assert tuple(tags[b, :length].tolist()) == paths[int(scores.argmax())]
        torch.testing.assert_close(best[b], scores.max())
        assert torch.all(tags[b, length:] == PAD_TAG)
    parameters = (
        crf.decoding_parameters() if constrained else (crf.transitions, crf.start_transitions, crf.end_transitions)
    )
    numpy_tags = viterbi_decode_numpy(emissions.numpy(), mask.numpy(), *(p.detach().numpy() for p in parameters))
    np.testing.assert_array_equal(numpy_tags, tags.numpy())
    wider = torch.cat([emissions, emissions[:, :1]], dim=1).numpy()
    wider_mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], dim=1).numpy()
    wide = viterbi_decode_numpy(wider, wider_mask, *(p.detach().numpy() for p in parameters))
    np.testing.assert_array_equal(wide[:, :-1], tags.numpy())
    assert np.all(wide[:, -1] == PAD_TAG)


def is_valid_bio(tags: list[str]) -> bool:
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


def test_constrained_viterbi_never_emits_invalid_bio():
    crf = random_crf(len(LABELS), seed=0, constrained=True)
    # Emissions that strongly prefer I- tags everywhere, the case an unconstrained decoder gets wrong.
    generator = torch.Generator().manual_seed(1)
    emissions = torch.randn(64, 9, len(LABELS), generator=generator, dtype=torch.double) * 3
    emissions[:, :, [2, 4]] += 4.0
    lengths = torch.randint(1, 10, (64,), generator=generator)
    mask = torch.arange(9)[None, :] < lengths[:, None]
    unconstrained, _ = crf.viterbi_decode(emissions, mask, constrained=False)
    constrained, _ = crf.viterbi_decode(emissions, mask, constrained=True)
    decode = lambda row, n: [LABELS[t] for t in row[:n].tolist()]  # noqa: E731
    assert not all(is_valid_bio(decode(u, int(n))) for u, n in zip(unconstrained, lengths)), "test is too easy"
    assert all(is_valid_bio(decode(c, int(n))) for c, n in zip(constrained, lengths))
    numpy_tags = viterbi_decode_numpy(
        emissions.numpy(), mask.numpy(), *(p.detach().numpy() for p in crf.decoding_parameters())
    )
    np.testing.assert_array_equal(numpy_tags, constrained.numpy())


def test_bio_constraints_table():
    allowed, allowed_start = bio_transition_constraints(LABELS)
    index = {label: i for i, label in enumerate(LABELS)}
    assert not allowed[index["O"], index["I-PER"]]
    assert not allowed[index["B-LOC"], index["I-PER"]]
    assert not allowed[index["I-LOC"], index["I-PER"]]
    assert allowed[index["B-PER"], index["I-PER"]] and allowed[index["I-PER"], index["I-PER"]]
    assert allowed[index["I-PER"], index["B-LOC"]] and allowed[index["O"], index["B-PER"]]
    assert allowed_start.tolist() == [True, True, False, True, False]


def test_gradients_are_finite_and_reach_every_parameter():
    crf = random_crf(4, seed=2)
    emissions, mask = random_batch([4, 2, 1], 4, seed=2)
    emissions.requires_grad_(True)
    tags = torch.randint(0, 4, mask.shape)
    loss = crf.neg_log_likelihood(emissions, tags, mask).sum() + crf.marginals(emissions, mask).pow(2).sum()
    loss.backward()
    for tensor in (emissions, crf.transitions, crf.start_transitions, crf.end_transitions):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
    # Padding positions receive no gradient.
    assert torch.all(emissions.grad[1, 2:] == 0) and torch.all(emissions.grad[2, 1:] == 0)


def test_empty_sentence_has_zero_partition_and_decodes_to_nothing():
    crf = random_crf(3, seed=4)
    emissions, _ = random_batch([3, 3], 3, seed=4)
    mask = torch.tensor([[True, True, True], [False, False, False]])
    assert crf.log_partition(emissions, mask)[1] == 0
    tags, _ = crf.viterbi_decode(emissions, mask)
    assert tags[1].tolist() == [PAD_TAG] * 3


def test_numpy_marginals_stay_exact_for_extreme_scores():
    # The numpy forward–backward runs in probability space; scores this large would overflow a naive version.
    crf = random_crf(5, seed=6)
    with torch.no_grad():
        crf.transitions.mul_(6)
    emissions, mask = random_batch([40, 17, 1], 5, seed=6)
    emissions = emissions * 30
    scores = [p.detach().numpy() for p in (crf.transitions, crf.start_transitions, crf.end_transitions)]
    expected = crf.marginals(emissions, mask).detach().numpy()
    np.testing.assert_allclose(marginals_numpy(emissions.numpy(), mask.numpy(), *scores), expected, atol=1e-9)


def test_numpy_decoders_accept_batches_without_words():
    crf = random_crf(3, seed=1)
    scores = [p.detach().numpy() for p in (crf.transitions, crf.start_transitions, crf.end_transitions)]
    for shape in ((2, 0, 3), (2, 4, 3)):
        emissions, mask = np.zeros(shape), np.zeros(shape[:2], dtype=bool)
        assert np.all(viterbi_decode_numpy(emissions, mask, *scores) == PAD_TAG)
        assert viterbi_decode_numpy(emissions, mask, *scores).shape == shape[:2]
        assert np.all(marginals_numpy(emissions, mask, *scores) == 0)


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("scale", [1.0, 30.0, 100.0])
def test_one_sequence_decoding_equals_the_batched_decoding(constrained, scale):
    # A batch of one takes `CRFDecoder`'s own loop (rescaled every few words, handing over to the batched code when
    # a message underflows, as scores 100x larger make it): tags identical, scores equal, at every length and
    # across the rescaling points.
    crf = random_crf(5, seed=7, constrained=constrained)
    scores = [p.detach().numpy() * scale for p in (crf.transitions, crf.start_transitions, crf.end_transitions)]
    masks = (crf.allowed.numpy(), crf.allowed_start.numpy()) if constrained else (None, None)
    decoder = CRFDecoder(*scores, *masks)
    generator = np.random.default_rng(int(scale))
    handed_over = []
    for length in [1, 2, 7, 8, 9, 17, 40]:
        emissions = generator.normal(size=(1, length, 5)) * scale
        handed_over.append(decoder._decode_sequence(emissions[0]) is None)
        padded = np.concatenate([emissions, np.zeros((1, 3, 5))], axis=1)
        mask = np.arange(length + 3)[None, :] < length
        tags, scores = decoder(padded, mask)
        expected_tags = viterbi_decode_numpy(padded, mask, *decoder.decoding)
        marginals = marginals_numpy(padded, mask, *decoder.raw)
        expected_scores = np.take_along_axis(marginals, np.maximum(expected_tags, 0)[:, :, None], axis=2)[:, :, 0]
        np.testing.assert_array_equal(tags, expected_tags)
        np.testing.assert_allclose(scores, expected_scores * mask, rtol=1e-9, atol=1e-12)
        # The same row decoded next to another one, by the batched code.
        pair_tags, pair_scores = decoder(np.concatenate([padded, padded[:, ::-1]]), np.concatenate([mask, mask | True]))
        np.testing.assert_array_equal(pair_tags[:1], tags)
        np.testing.assert_allclose(pair_scores[:1], scores, rtol=1e-9, atol=1e-12)
    assert any(handed_over) == (scale == 100.0)
