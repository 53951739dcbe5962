"""Persona fidelity: whether a model's replies read like its person, and never leak them.

`replies` has the model answer its person's held-out turns in their real context; the measures
take texts only (no gRPC, no store, no model): `style` (a style profile per speaker and the
distance between two, distinctive words), `attribution` (who said it; real or generated),
`copying` (regurgitation of the training text), `conduct` (speaking for others, leaked personal
data, repetition); `report` puts them together in one `Fidelity` and the `FidelityFigures` a
manifest keeps (`doppel.fidelity` shows them); `evaluate` does all of it for a trained model.
"""

from .evaluate import evaluate
from .report import Fidelity, figures

__all__ = ["Fidelity", "evaluate", "figures"]
