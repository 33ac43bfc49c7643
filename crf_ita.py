"""Batched linear-chain CRF for ITA, with BIO decoding constraints and a numpy decoder.

This file is remote code: it is copied into every checkpoint, so it imports only torch and numpy.

Conventions shared by every function here:
    emissions: `(batch, words, num_tags)` scores of each tag at each word.
    mask: `(batch, words)` bool, True on real words. Words are left-aligned: a sentence of length n
        occupies positions `0..n-1`. A sentence of length 0 has log-partition 0 and decodes to nothing.
    transitions[i, j]: score of moving from tag i to tag j.
"""

import numpy as np
import torch
from torch import nn

# Added to forbidden transitions when decoding. Finite, so that sums never produce NaN (inf - inf).
FORBIDDEN_SCORE = -10000.0
PAD_TAG = -100


def bio_transition_constraints(labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which transitions keep a tag sequence valid BIO.

    `I-X` may only follow `B-X` or `I-X`, so `O → I-X`, `B-X → I-Y` and `I-X → I-Y` (X ≠ Y) are forbidden,
    and so is starting a sentence on `I-X`.

    Args:
        labels: the tags in id order (`O`, `B-X`, `I-X`).

    Returns:
        `allowed` `(num_tags, num_tags)` bool (from, to) and `allowed_start` `(num_tags,)` bool.
    """
    num_tags = len(labels)
    allowed = torch.ones(num_tags, num_tags, dtype=torch.bool)
    allowed_start = torch.ones(num_tags, dtype=torch.bool)
    for j, to_label in enumerate(labels):
        if not to_label.startswith("I-"):
            continue
        allowed_start[j] = False
        entity_type = to_label[2:]
        for i, from_label in enumerate(labels):
            allowed[i, j] = from_label in (f"B-{entity_type}", f"I-{entity_type}")
    return allowed, allowed_start


def _lengths(mask: torch.Tensor) -> torch.Tensor:
    return mask.long().sum(dim=1)


class ConditionalRandomField(nn.Module):
    """A linear-chain CRF with start and end transitions.

    Training (`neg_log_likelihood`) and `marginals` use the learned scores as they are; `viterbi_decode`
    adds the optional BIO constraints, so gold data with spans that start with `I-` still trains while
    decoded output is always valid BIO.

    Args:
        num_tags: number of tags.
        allowed: `(num_tags, num_tags)` bool, allowed transitions when decoding; None allows all.
        allowed_start: `(num_tags,)` bool, allowed first tags when decoding; None allows all.
    """

    def __init__(
        self,
        num_tags: int,
        allowed: torch.Tensor | None = None,
        allowed_start: torch.Tensor | None = None,
    ):
        super().__init__()
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
        self.start_transitions = nn.Parameter(torch.zeros(num_tags))
        self.end_transitions = nn.Parameter(torch.zeros(num_tags))
        if allowed is None:
            allowed = torch.ones(num_tags, num_tags, dtype=torch.bool)
        if allowed_start is None:
            allowed_start = torch.ones(num_tags, dtype=torch.bool)
        # Derived from the label set in the config, so not saved with the weights; a model rebuilds them in its
        # weight-initialisation path (`reset_constraints`), which transformers 5 runs after loading.
        self.register_buffer("allowed", allowed, persistent=False)
        self.register_buffer("allowed_start", allowed_start, persistent=False)

    @torch.no_grad()
    def reset_constraints(self, allowed: torch.Tensor | None = None, allowed_start: torch.Tensor | None = None) -> None:
        """Writes the decoding constraints into the existing buffers (None allows everything)."""
        self.allowed.copy_(allowed if allowed is not None else torch.ones_like(self.allowed))
        self.allowed_start.copy_(allowed_start if allowed_start is not None else torch.ones_like(self.allowed_start))

    def scores(
        self, emissions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Emissions (when given), transitions, start and end scores in the CRF's computation dtype.

        A half-precision model keeps its CRF parameters in half precision, but sums over tag sequences lose too
        much with 8 bits of mantissa: every CRF computation runs in float32, or wider for a float64 model.
        """
        dtype = torch.promote_types(self.transitions.dtype, torch.float32)
        if emissions is not None:
            dtype = torch.promote_types(dtype, emissions.dtype)
            emissions = emissions.to(dtype)
        return emissions, self.transitions.to(dtype), self.start_transitions.to(dtype), self.end_transitions.to(dtype)

    def decoding_parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Transition, start and end scores with the decoding constraints applied, in the computation dtype."""
        _, transitions, start, end = self.scores()
        forbidden = torch.tensor(FORBIDDEN_SCORE, dtype=transitions.dtype, device=transitions.device)
        return torch.where(self.allowed, transitions, forbidden), torch.where(self.allowed_start, start, forbidden), end

    def _forward_scores(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Log forward variables α, `(batch, words, num_tags)`; α at padding repeats the last real word."""
        emissions, transitions, start, _ = self.scores(emissions)
        alpha = start + emissions[:, 0]
        alphas = [alpha]
        for t in range(1, emissions.size(1)):
            step = torch.logsumexp(alpha.unsqueeze(2) + transitions, dim=1) + emissions[:, t]
            alpha = torch.where(mask[:, t : t + 1], step, alpha)
            alphas.append(alpha)
        return torch.stack(alphas, dim=1)

    def _backward_scores(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Log backward variables β, `(batch, words, num_tags)`; β at the last real word is the end score."""
        emissions, transitions, _, end_scores = self.scores(emissions)
        end = end_scores.expand(emissions.size(0), -1)
        beta = end
        betas = [beta]
        for t in range(emissions.size(1) - 2, -1, -1):
            step = torch.logsumexp(transitions + (emissions[:, t + 1] + beta).unsqueeze(1), dim=2)
            beta = torch.where(mask[:, t + 1 : t + 2], step, end)
            betas.append(beta)
        return torch.stack(betas[::-1], dim=1)

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Log Z per sentence by the forward algorithm, `(batch,)`."""
        alpha = self._forward_scores(emissions, mask)[:, -1]
        log_z = torch.logsumexp(alpha + self.scores()[3], dim=1)
        return torch.where(_lengths(mask) > 0, log_z, torch.zeros_like(log_z))

    def path_score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised score of the tag sequences `tags` `(batch, words)`, `(batch,)`; padding tags are ignored."""
        emissions, transitions, start, end = self.scores(emissions)
        tags = torch.where(mask, tags, torch.zeros_like(tags))
        maskf = mask.to(emissions.dtype)
        emitted = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)
        score = (emitted * maskf).sum(dim=1)
        score = score + start[tags[:, 0]] * maskf[:, 0]
        if tags.size(1) > 1:
            moves = transitions[tags[:, :-1], tags[:, 1:]]
            score = score + (moves * maskf[:, 1:]).sum(dim=1)
        last = (_lengths(mask) - 1).clamp(min=0)
        last_tags = tags.gather(1, last.unsqueeze(1)).squeeze(1)
        return score + end[last_tags] * maskf[:, 0]

    def neg_log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of `tags` per sentence, `(batch,)`."""
        return self.log_partition(emissions, mask) - self.path_score(emissions, tags, mask)

    def log_marginal_scores(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """α + β per word and tag, `(batch, words, num_tags)`: log-marginals up to the per-word constant log Z.

        Cross-view alignment tempers these scores (`softmax(scores / T)`); at T = 1 that softmax is the
        posterior marginal distribution.
        """
        return self._forward_scores(emissions, mask) + self._backward_scores(emissions, mask)

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Posterior marginals p(y_i = tag | x) by forward–backward, `(batch, words, num_tags)`; 0 at padding."""
        probs = torch.softmax(self.log_marginal_scores(emissions, mask), dim=-1)
        return probs * mask.unsqueeze(2).to(probs.dtype)

    def viterbi_decode(
        self, emissions: torch.Tensor, mask: torch.Tensor, constrained: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Best tag sequence per sentence.

        Args:
            emissions: `(batch, words, num_tags)`.
            mask: `(batch, words)` bool.
            constrained: apply the decoding constraints (BIO validity).

        Returns:
            `tags` `(batch, words)` long, `PAD_TAG` (-100) at padding, and `scores` `(batch,)`, the best
            path scores.
        """
        emissions, transitions, start, end = self.scores(emissions)
        if constrained:
            transitions, start, end = self.decoding_parameters()
        batch, words, _ = emissions.shape
        score = start + emissions[:, 0]
        history = []
        for t in range(1, words):
            best, best_prev = (score.unsqueeze(2) + transitions).max(dim=1)
            score = torch.where(mask[:, t : t + 1], best + emissions[:, t], score)
            history.append(best_prev)
        score = score + end
        best_score, current = score.max(dim=1)
        lengths = _lengths(mask)
        tags = torch.full((batch, words), PAD_TAG, dtype=torch.long, device=emissions.device)
        for t in range(words - 1, -1, -1):
            if t < words - 1:
                previous = history[t].gather(1, current.unsqueeze(1)).squeeze(1)
                current = torch.where(t < lengths - 1, previous, current)
            tags[:, t] = torch.where(t < lengths, current, tags[:, t])
        best_score = torch.where(lengths > 0, best_score, torch.zeros_like(best_score))
        return tags, best_score


def viterbi_decode_numpy(
    emissions: np.ndarray,
    mask: np.ndarray,
    transitions: np.ndarray,
    start_transitions: np.ndarray,
    end_transitions: np.ndarray,
) -> np.ndarray:
    """The Viterbi of `ConditionalRandomField.viterbi_decode` in numpy, for ONNX Runtime outputs.

    Pass the scores of `ConditionalRandomField.decoding_parameters()` to decode with the BIO constraints.

    Args:
        emissions: `(batch, words, num_tags)`.
        mask: `(batch, words)` bool.
        transitions: `(num_tags, num_tags)`; start_transitions, end_transitions: `(num_tags,)`.

    Returns:
        `(batch, words)` int64 tags, `PAD_TAG` (-100) at padding.
    """
    emissions = np.asarray(emissions, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    batch, words, _ = emissions.shape
    lengths = mask.sum(axis=1)
    steps = int(lengths.max(initial=0))
    tags = np.full((batch, words), PAD_TAG, dtype=np.int64)
    if steps == 0:  # every sentence empty (or no word columns at all)
        return tags
    score = start_transitions[None, :] + emissions[:, 0]
    history = np.zeros((max(steps - 1, 0), batch, emissions.shape[2]), dtype=np.int64)
    # Columns where every sentence still has a word need no masking: decoding one tweet (the pipeline's
    # batch-1 case) then costs a few numpy calls per word.
    ragged = (~mask[:, :steps]).any(axis=0).tolist()
    for t in range(1, steps):
        candidates = score[:, :, None] + transitions[None, :, :]
        history[t - 1] = candidates.argmax(axis=1)
        step = candidates.max(axis=1) + emissions[:, t]
        score = np.where(mask[:, t : t + 1], step, score) if ragged[t] else step
    current = (score + end_transitions[None, :]).argmax(axis=1)
    rows = np.arange(batch)
    for t in range(steps - 1, -1, -1):
        if t < steps - 1:
            current = (
                np.where(t < lengths - 1, history[t, rows, current], current)
                if ragged[t + 1]
                else history[t, rows, current]
            )
        tags[:, t] = np.where(t < lengths, current, PAD_TAG) if ragged[t] else current
    return tags


def marginals_numpy(
    emissions: np.ndarray,
    mask: np.ndarray,
    transitions: np.ndarray,
    start_transitions: np.ndarray,
    end_transitions: np.ndarray,
) -> np.ndarray:
    """`ConditionalRandomField.marginals` in numpy (unconstrained scores), `(batch, words, num_tags)`.

    Forward–backward in probability space with per-step normalisation: one small matrix product per word
    instead of a log-sum-exp, which keeps decoding a negligible part of inference. Subtracting maxima before
    `exp` changes every path score of a word by the same constant, which the normalisation removes.
    """
    emissions = np.asarray(emissions, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    batch, words, num_tags = emissions.shape
    # Columns past the longest sentence are all padding: leave them out (and at 0) entirely.
    steps = int(mask.sum(axis=1).max(initial=0))
    if steps == 0:
        return np.zeros_like(emissions)
    moves = np.exp(transitions - transitions.max())
    emitted = np.exp(emissions[:, :steps] - emissions[:, :steps].max(axis=2, keepdims=True))

    def normalised(x: np.ndarray) -> np.ndarray:
        return x / x.sum(axis=-1, keepdims=True)

    alphas = np.empty_like(emitted)
    alphas[:, 0] = normalised(np.exp(start_transitions - start_transitions.max())[None, :] * emitted[:, 0])
    ragged = (~mask[:, :steps]).any(axis=0).tolist()  # as in viterbi_decode_numpy
    for t in range(1, steps):
        step = normalised((alphas[:, t - 1] @ moves) * emitted[:, t])
        alphas[:, t] = np.where(mask[:, t : t + 1], step, alphas[:, t - 1]) if ragged[t] else step
    betas = np.empty_like(emitted)
    end = np.broadcast_to(np.exp(end_transitions - end_transitions.max())[None, :], (batch, num_tags))
    betas[:, steps - 1] = end
    for t in range(steps - 2, -1, -1):
        step = normalised((emitted[:, t + 1] * betas[:, t + 1]) @ moves.T)
        betas[:, t] = np.where(mask[:, t + 1 : t + 2], step, end) if ragged[t + 1] else step
    probs = np.zeros_like(emissions)
    probs[:, :steps] = normalised(alphas * betas) * mask[:, :steps, None]
    return probs


# `CRFDecoder._decode_sequence` rescales its messages this often: over 8 words, messages of trained scores stay far
# above float64's smallest normal number (1e-308); `_SMALLEST_TOTAL` catches those that do not.
_RESCALE_EVERY = 8
_SMALLEST_TOTAL = 1e-280


class CRFDecoder:
    """Decodes emissions with a CRF's scores in float64 numpy, outside any graph (the pipeline, ONNX Runtime).

    Built once from a `ConditionalRandomField` (whatever its dtype or device) or from saved score arrays, it holds
    the constrained scores for Viterbi and the raw ones for the marginals, so a call costs only the decoding.

    Args:
        transitions: `(num_tags, num_tags)`; start_transitions, end_transitions: `(num_tags,)` learned scores.
        allowed, allowed_start: the BIO decoding constraints (`(num_tags, num_tags)`, `(num_tags,)` bool), or
            None to decode unconstrained.
    """

    def __init__(
        self,
        transitions: np.ndarray,
        start_transitions: np.ndarray,
        end_transitions: np.ndarray,
        allowed: np.ndarray | None = None,
        allowed_start: np.ndarray | None = None,
    ):
        raw = tuple(np.array(scores, dtype=np.float64) for scores in (transitions, start_transitions, end_transitions))
        num_tags = raw[0].shape[0]
        if raw[0].shape != (num_tags, num_tags) or raw[1].shape != (num_tags,) or raw[2].shape != (num_tags,):
            raise ValueError(
                f"CRF scores must be (num_tags, num_tags), (num_tags,), (num_tags,); got {[r.shape for r in raw]}."
            )
        self.raw = raw
        decoding = list(raw)
        if allowed is not None:
            decoding[0] = np.where(np.asarray(allowed, dtype=bool), raw[0], FORBIDDEN_SCORE)
        if allowed_start is not None:
            decoding[1] = np.where(np.asarray(allowed_start, dtype=bool), raw[1], FORBIDDEN_SCORE)
        self.decoding = tuple(decoding)
        # The raw scores in probability space, as `marginals_numpy` uses them, for the one-sequence path.
        self._moves, self._start, self._end = (np.exp(scores - scores.max()) for scores in raw)

    @classmethod
    def from_crf(cls, crf: ConditionalRandomField, constrained: bool = True) -> "CRFDecoder":
        """The decoder of `crf`'s current scores, with its BIO constraints when `constrained`."""
        with torch.no_grad():
            arrays = [
                t.detach().cpu().double().numpy() for t in (crf.transitions, crf.start_transitions, crf.end_transitions)
            ]
            masks = (crf.allowed.cpu().numpy(), crf.allowed_start.cpu().numpy()) if constrained else (None, None)
        return cls(*arrays, *masks)

    def __call__(self, emissions: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Viterbi tags and the posterior marginal probability of each decoded tag.

        Args:
            emissions: `(batch, words, num_tags)`, any float dtype (decoded in float64).
            mask: `(batch, words)` bool.

        Returns:
            `tags` `(batch, words)` int64 (`PAD_TAG` at padding) and `scores` `(batch, words)` float64 (0 at padding).
        """
        emissions = np.asarray(emissions, dtype=np.float64)
        mask = np.asarray(mask, dtype=bool)
        if emissions.shape[0] == 1:
            # One sequence (the pipeline at batch size 1): its own loop costs a third of the batched one. Its mask is
            # read as a list: right after a model forward, each kind of numpy call costs tens of microseconds more.
            row = mask[0].tolist()
            length = row.count(True)
            decoded = self._decode_sequence(emissions[0, :length]) if all(row[:length]) else None
            if decoded is not None:
                padding = len(row) - length
                tags, scores = decoded
                return np.array([tags + [PAD_TAG] * padding], dtype=np.int64), np.array([scores + [0.0] * padding])
        tags = viterbi_decode_numpy(emissions, mask, *self.decoding)
        marginals = marginals_numpy(emissions, mask, *self.raw)
        scores = np.take_along_axis(marginals, np.maximum(tags, 0)[:, :, None], axis=2)[:, :, 0] * mask
        return tags, scores

    def _decode_sequence(self, emissions: np.ndarray) -> tuple[list[int], list[float]] | None:
        """`__call__` for one unpadded sequence `(words, num_tags)`: the same tags and marginals, fewer numpy calls.

        Viterbi and the forward pass share one loop, and the forward–backward messages are rescaled every
        `_RESCALE_EVERY` words instead of every word (the rescaling cancels in the marginals). Returns None when a
        message underflows in between (scores a hundred times larger than trained ones), for the batched code.
        """
        words = len(emissions)
        if words == 0:
            return [], []
        transitions, start, end = self.decoding
        # Per word, everything the loop adds or multiplies: `moves[t][j, i]` is the score of tag i -> tag j at word t
        # (transposed, so the previous scores broadcast as a row), `steps[t][i, j]` the same in probability space.
        moves = transitions.T[None, :, :] + emissions[:, :, None]
        emitted = np.exp(emissions - emissions.max(axis=1, keepdims=True))
        steps = self._moves * emitted[:, None, :]
        # What a tweet's decoding costs is numpy's overhead per call, not arithmetic, so the loops make few and cheap
        # calls: every Viterbi candidate is kept, and one `argmax` after the loop finds all the back-pointers (the
        # same ones, ties included, as an argmax per word); they index lists of rows, not arrays; and the messages
        # go through `np.dot`, which costs a third of `np.matmul` on vectors this small.
        candidates, alphas, betas = np.empty_like(moves), np.empty_like(emitted), np.empty_like(emitted)
        move_rows, step_rows, candidate_rows = list(moves), list(steps), list(candidates)
        alpha_rows, beta_rows = list(alphas), list(betas)
        score = start + emissions[0]
        alpha = np.multiply(self._start, emitted[0], out=alpha_rows[0])
        for t in range(1, words):
            score = np.maximum.reduce(np.add(move_rows[t], score, out=candidate_rows[t]), axis=1)
            alpha = np.dot(alpha, step_rows[t], out=alpha_rows[t])
            if t % _RESCALE_EVERY == 0:
                total = np.add.reduce(alpha)
                if not total > _SMALLEST_TOTAL:  # underflowed: no division by 0, the batched code takes over
                    return None
                alpha /= total
        beta = beta_rows[words - 1]
        beta[:] = self._end
        for t in range(words - 2, -1, -1):
            beta = np.dot(step_rows[t + 1], beta, out=beta_rows[t])
            if t % _RESCALE_EVERY == 0:
                total = np.add.reduce(beta)
                if not total > _SMALLEST_TOTAL:
                    return None
                beta /= total
        history = candidates.argmax(axis=2)
        tag = int((score + end).argmax())
        tags = [tag]
        for row in history[:0:-1].tolist():
            tag = row[tag]
            tags.append(tag)
        tags.reverse()
        products = alphas * betas
        totals = products.sum(axis=1)
        if not totals.min() > _SMALLEST_TOTAL:  # also when a total is NaN, which `min` passes on
            return None
        return tags, (products[np.arange(words), tags] / totals).tolist()
