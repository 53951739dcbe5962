"""Persona fidelity: whether a model's replies read like its person, and never leak them.

The measures, each a module with no gRPC, no store and no model in it (they take texts):
`style` (a style profile per speaker and the distance between two, distinctive words),
`attribution` (who said it; real or generated), `copying` (regurgitation of the training text),
`conduct` (speaking for others, leaked personal data, repetition). Sampling the replies to
measure, and reporting the figures, are still to come (issue 15).
"""
