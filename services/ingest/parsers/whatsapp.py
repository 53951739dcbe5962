"""Placeholder: replaced by the whatsapp parser."""

PARSERS: list = []
