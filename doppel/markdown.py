"""Text shown literally in Markdown, wherever Doppel renders people's messages (the UI, Prefect artifacts)."""

from __future__ import annotations

import html
import re

_SYNTAX = re.compile(r"([\\`*_{}\[\]()#+\-.!|~$])")


def escape(text: str) -> str:
    """`text` shown literally in Markdown: HTML, Markdown and LaTeX syntax neutralised, line breaks kept
    (a blank line too, as a line holding a no-break space: a blank line would end the paragraph)."""
    lines = _SYNTAX.sub(r"\\\1", html.escape(text, quote=False)).split("\n")
    return lines[0] if len(lines) == 1 else "  \n".join(line if line.strip() else "&nbsp;" for line in lines)


def cell(text: str) -> str:
    """`text` shown literally in one cell of a Markdown table: escaped, line breaks as `<br>`."""
    return _SYNTAX.sub(r"\\\1", html.escape(text, quote=False)).replace("\n", "<br>")
