"""Who said it, and real or generated: two small text classifiers over character n-grams.

Both are logistic regression on TF-IDF of character 2- to 4-grams, the standard baseline of
authorship attribution: character n-grams catch what makes a voice (spelling, case,
punctuation, emoji, favourite endings) without a tokenizer or a vocabulary of words. They are
written here on torch, which Doppel already carries, instead of taken from scikit-learn, which
would add scikit-learn and SciPy (~100 MB) to the image for two linear models: the n-grams are
hashed into 2^18 columns (xxhash64), counts get sublinear tf (1 + log) and idf from the training
texts, rows are L2-normalised, and the model is fitted full-batch with L-BFGS under an L2
penalty, with the classes weighted to count alike (sklearn's `class_weight="balanced"`), so
0.5 stays the fair threshold when one person wrote a tenth of the chat.

* `WhoSaidIt`: trained on the person's training messages against the other participants'.
  `attributed(texts)` is the share it gives to the person: for the person's real held-out replies
  it says how well the classifier knows them; for the model's replies, how much they read as the
  person's.
* `real_or_generated(real, generated)`: k-fold cross-validated accuracy of a classifier telling
  the person's real replies from the model's. 0.5 means they cannot be told apart.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
import xxhash

DIMS = 1 << 18
NGRAMS = (2, 3, 4)


def _counts(text: str) -> Counter[int]:
    padded = f" {text} "
    return Counter(xxhash.xxh64_intdigest(padded[k : k + n].encode()) % DIMS
                   for n in NGRAMS for k in range(len(padded) - n + 1))


class Features:
    """TF-IDF of hashed character n-grams, idf fitted on the texts given to `fit`."""

    def __init__(self, texts: Sequence[str]):
        df: Counter[int] = Counter()
        for text in texts:
            df.update(_counts(text).keys())
        n = len(texts)
        self.idf = torch.full((DIMS,), math.log(n + 1) + 1.0)  # an n-gram never seen: as rare as can be
        if df:
            cols = torch.tensor(list(df.keys()))
            seen = torch.tensor(list(df.values()), dtype=torch.float)
            self.idf[cols] = torch.log((n + 1) / (seen + 1)) + 1

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """A sparse [len(texts), DIMS] matrix, rows L2-normalised."""
        rows, cols, values = [], [], []
        for r, text in enumerate(texts):
            counts = _counts(text)
            rows += [r] * len(counts)
            cols += list(counts.keys())
            values += [1 + math.log(c) for c in counts.values()]
        col = torch.tensor(cols, dtype=torch.long)
        v = torch.tensor(values, dtype=torch.float) * self.idf[col]
        row = torch.tensor(rows, dtype=torch.long)
        norms = torch.zeros(len(texts)).index_add_(0, row, v * v).sqrt().clamp(min=1e-12)
        return torch.sparse_coo_tensor(torch.stack([row, col]), v / norms[row], (len(texts), DIMS),
                                       check_invariants=False).coalesce()


class Logistic:
    """L2-penalised logistic regression with balanced class weights, fitted by L-BFGS."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, c: float = 1.0, steps: int = 100):
        self.w = torch.zeros(DIMS, requires_grad=True)
        self.b = torch.zeros(1, requires_grad=True)
        positives = float(y.sum())
        weights = torch.where(y > 0, len(y) / (2 * max(positives, 1.0)), len(y) / (2 * max(len(y) - positives, 1.0)))
        optimizer = torch.optim.LBFGS([self.w, self.b], max_iter=steps, line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            optimizer.zero_grad()
            logits = torch.sparse.mm(x, self.w[:, None])[:, 0] + self.b
            value = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=weights, reduction="sum")
                     + 0.5 / c * (self.w * self.w).sum())
            value.backward()
            return value

        with torch.enable_grad():
            optimizer.step(loss)

    def prob(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(torch.sparse.mm(x, self.w[:, None])[:, 0] + self.b)


def _fit(positive: Sequence[str], negative: Sequence[str]) -> tuple[Features, Logistic]:
    texts = [*positive, *negative]
    features = Features(texts)
    y = torch.tensor([1.0] * len(positive) + [0.0] * len(negative))
    return features, Logistic(features(texts), y)


class WhoSaidIt:
    """The person's messages against everyone else's."""

    def __init__(self, person: Sequence[str], others: Sequence[str]):
        if not person or not others:
            raise ValueError("who-said-it needs messages of the person and of someone else")
        self.features, self.model = _fit(person, others)

    def probabilities(self, texts: Sequence[str]) -> list[float]:
        return self.model.prob(self.features(texts)).tolist() if texts else []

    def attributed(self, texts: Sequence[str]) -> float:
        """The share of `texts` the classifier gives to the person."""
        p = self.probabilities(texts)
        return sum(v > 0.5 for v in p) / len(p) if p else 0.0


def real_or_generated(real: Sequence[str], generated: Sequence[str], *, folds: int = 5) -> float:
    """Cross-validated accuracy of telling `real` from `generated` (0.5: indistinguishable)."""
    folds = min(folds, len(real), len(generated))
    if folds < 2:
        raise ValueError("real-or-generated needs at least two replies of each kind")
    right = total = 0
    for k in range(folds):
        train_real = [t for i, t in enumerate(real) if i % folds != k]
        train_generated = [t for i, t in enumerate(generated) if i % folds != k]
        test = [(t, 1.0) for i, t in enumerate(real) if i % folds == k] + [(t, 0.0) for i, t in enumerate(generated) if i % folds == k]
        features, model = _fit(train_real, train_generated)
        p = model.prob(features([t for t, _ in test])).tolist()
        right += sum((v > 0.5) == (y > 0.5) for v, (_, y) in zip(p, test, strict=True))
        total += len(test)
    return right / total
