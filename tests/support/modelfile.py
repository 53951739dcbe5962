"""Ollama's side of a Modelfile, for tests: its parser (a port of `parser.ParseFile` of
github.com/ollama/ollama: the same states, quoting and dropping of unprintable characters) and
its chat rendering (`ollama_render.go`, Go's own text/template, run with Debian's `go`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import unicodedata
from pathlib import Path

RENDER = Path(__file__).with_name("ollama_render.go")
COMMANDS = {"from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter", "message",
            "requires"}


def _printable(c: str) -> bool:  # Go's strconv.IsPrint
    return c == " " or unicodedata.category(c)[0] in "LMNPS"


def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s.startswith('"'):
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def _step(r: str, state: str) -> tuple[str, str]:
    """(next state, the character kept or "") as Ollama's parseRuneForState."""
    space, newline = r in " \t", r in "\r\n"
    if state == "nil":
        return ("comment", "") if r == "#" else ("nil", "") if space or newline else ("name", r)
    if state == "name":
        if r.isascii() and r.isalpha():
            return "name", r
        if space:
            return "value", ""
        raise ValueError("command must be one of " + ", ".join(sorted(COMMANDS)))
    if state == "value":
        return ("nil", r) if space or newline else ("value", r)
    if state == "parameter":
        if r.isascii() and (r.isalnum() or r == "_"):
            return "parameter", r
        if space:
            return "value", ""
        raise ValueError("unexpected EOF in a parameter name")
    return ("nil", "") if newline else ("comment", "")


def parse(text: str) -> list[tuple[str, str]]:
    """The Modelfile's commands as (name, value): FROM is "model", a PARAMETER its parameter's name."""
    commands: list[tuple[str, str]] = []
    buf: list[str] = []
    state, name = "nil", ""
    for c in text:
        nxt, r = _step(c, state)
        if nxt != state:
            if state == "name":
                word = "".join(buf).lower()
                if word not in COMMANDS:
                    raise ValueError(f"unknown command {word!r}")
                if word == "parameter":
                    nxt = "parameter"
                else:
                    name = "model" if word == "from" else word
            elif state == "parameter":
                name = "".join(buf)
            elif state == "value":
                value, ok = _unquote("".join(buf).strip())
                if not ok or r in " \t":
                    buf.append(r)
                    continue
                commands.append((name, value))
            buf, state = [], nxt
        if r and _printable(r):
            buf.append(r)
    if state == "value":
        value, ok = _unquote("".join(buf).strip())
        if not ok:
            raise ValueError("unexpected EOF: an unclosed quote")
        commands.append((name, value))
    elif state not in ("nil", "comment"):
        raise ValueError("unexpected EOF")
    return commands


def render(template: str, system: str, messages: list[dict[str, str]], tmp: Path) -> str:
    """What Ollama feeds its model for a chat of `messages` under `template` and the Modelfile's `system`."""
    go = shutil.which("go")
    assert go, "the Ollama template tests need Go (Debian's golang-go; `make test` installs it)"
    env = {**os.environ, "GOCACHE": str(tmp / "gocache"), "GOPATH": str(tmp / "gopath"),
           "GO111MODULE": "off"}
    done = subprocess.run([go, "run", str(RENDER)], input=json.dumps({"template": template, "system": system,
                                                                       "messages": messages}),
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout
