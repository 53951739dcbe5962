"""Placeholder: replaced by the reddit parser."""

PARSERS: list = []
