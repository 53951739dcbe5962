"""An Ollama Modelfile for a persona's GGUF: a TEMPLATE that renders a chat as Doppel does.

Ollama renders prompts with Go's text/template over `.System` and `.Messages` (role and
content). The template here is generated from the transcript's own pieces, as the Jinja template
of `export.chat_template` is: every piece of text is a Go string literal, so nothing a name holds
can be read as template syntax, and the Modelfile holds printable ASCII only (Ollama's parser
drops what is not printable). A user message is the persona's first other participant's turn,
an assistant message the persona's; system messages replace the default `SYSTEM` (the sentence
naming the participants) where Doppel renders it, in a chat template's system message; the
template ends by opening the persona's turn. `PARAMETER stop` ends the turn where Doppel ends it.

Where Ollama differs from Doppel, it is Ollama's doing: it merges consecutive messages of one
role into one (joined by a blank line), and a plain ("plain-eos") model's message that holds the
EOS text keeps it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from doppel.errors import InvalidArgument
from doppel.transcript import Transcript, Turn, default_user, system_prompt


def go_literal(text: str) -> str:
    """`text` as a Go interpreted string literal of printable ASCII."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif " " <= c <= "~":
            out.append(c)
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


def _say(text: str) -> str:
    return "{{ " + go_literal(text) + " }}" if text else ""


def template(transcript: Transcript, participants: Sequence[str], speakers: Sequence[str]) -> str:
    """The Go template that renders Ollama's `.Messages` as Doppel renders the persona's conversation."""
    persona = speakers[0]
    user = default_user(participants, persona)
    header, system = transcript.header(participants), system_prompt(participants)
    before, found, after = header.partition(system) if not transcript.plain else (header, "", "")
    head = (_say(before) + "{{ if .System }}{{ .System }}{{ else }}" + _say(system) + "{{ end }}" + _say(after)
            if found else _say(header))

    def turn(name: str) -> str:
        start, _, end = transcript.turn(Turn(name, ""))
        return _say(start + f"{name}: ") + "{{ .Content }}" + _say(end)

    opening = transcript.prompt([], participants, persona)[len(header):]
    return (head + '{{ range .Messages }}{{ if eq .Role "user" }}' + turn(user)
            + '{{ else if eq .Role "assistant" }}' + turn(persona) + "{{ end }}{{ end }}" + _say(opening))


def writable(value: str) -> bool:
    """Whether a Modelfile's triple-quoted value holds `value` as it is (its parser keeps printable
    characters, spaces and newlines, and ends the value at the first `\"\"\"`)."""
    return ('""' not in value and not value.startswith('"') and not value.endswith('"')
            and all(c in " \t\n" or unicodedata.category(c)[0] in "LMNPS" for c in value))


def modelfile(transcript: Transcript, participants: Sequence[str], speakers: Sequence[str], gguf_file: str, *,
              name: str, temperature: float, top_p: float) -> str:
    """The Modelfile for the persona in `gguf_file` (beside it)."""
    tmpl = template(transcript, participants, speakers)
    if not writable(tmpl):
        raise InvalidArgument("the persona's Ollama template cannot be written in a Modelfile")  # not expected: ASCII
    system = system_prompt(participants)
    stops = transcript.stops(participants)
    left = [s for s in stops if not writable(s)]
    lines = [
        f"# {go_literal(name)[1:-1]}: a persona made with Doppel (speakers: {go_literal(', '.join(speakers))[1:-1]}).",
        "# What it writes is generated text, not anything its people said. See README.md and doppel.json.",
        "# `ollama create NAME -f Modelfile` makes it an Ollama model.",
        f"FROM ./{gguf_file}",
        f'TEMPLATE """{tmpl}"""',
    ]
    if writable(system):
        lines.append(f'SYSTEM """{system}"""')
    else:
        lines.append("# no SYSTEM: the participants' names hold characters a Modelfile cannot; the template names them")
    lines += [f'PARAMETER stop """{s}"""' for s in stops if s not in left]
    if left:
        lines.append(f"# {len(left)} stop strings left out: names with characters a Modelfile cannot hold")
    lines += [f"PARAMETER temperature {temperature:g}", f"PARAMETER top_p {top_p:g}"]
    return "\n".join(lines) + "\n"
