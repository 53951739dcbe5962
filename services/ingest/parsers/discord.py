"""Placeholder: replaced by the discord parser."""

PARSERS: list = []
