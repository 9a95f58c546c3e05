"""Markdown from strings that this program did not write itself, made inert.

Results files are contributed by anyone (the README's pull-request workflow renders them),
and transform labels, model paths and failure reasons come from the command line, and names
from plugins, so every such string goes through one of these before it reaches the leaderboard
or a README (``benchmark.reports.markdown`` re-exports them for the reports layer):

    text(value)          one line for a heading, a paragraph or a table cell (``cell``): no
                         HTML (tags, entities: ``&`` is escaped too), links, autolinks,
                         emphasis, code, line breaks or table pipes
    code(value)          an inline code span that no backtick inside can close
    json_block(data)     a fenced JSON block that no string inside can close
    link(label, target, folder, base, image=False)
                         a link to ``folder/target`` only when that file is inside ``folder``;
                         otherwise the label alone, as text
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from pathlib import Path
from urllib.parse import quote

__all__ = ["cell", "code", "json_block", "link", "text"]

# Backslash-escaped (CommonMark escapes any ASCII punctuation this way); <, > and & become
# entities, so that no HTML tag, entity or autolink survives.
_PUNCTUATION = set("\\`*_[]#!|~$")
_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def _one_line(value) -> str:
    """``value`` as text on one line: control, format (bidi overrides, zero-width) and
    line-separator characters become spaces, runs of spaces one space."""
    chars = (" " if unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")
             else ch for ch in str(value))
    return " ".join("".join(chars).split())


# A word that a renderer may make a link of by itself, with no markup: GFM's extended autolinks
# (``http://``, ``https://``, ``www.``, e-mail addresses, ``mailto:``/``xmpp:``), linkify-it's
# (``//host``, fuzzy ``name.tld`` links and e-mails) and GitHub's @mentions and :emoji:. Such a
# word is written as an inline code span, where no renderer makes a link: the reader sees the
# same characters, in code. A word stops at spaces and at what must stay escaped outside code.
_WORD = re.compile(r"[^\s|`<>\[\]()\"']+")
_LINKISH = re.compile(r":.|//|www\.|@|\.[^\W\d_]{2}", re.IGNORECASE)


def _escape(value: str) -> str:
    return "".join(_ENTITIES.get(ch) or ("\\" + ch if ch in _PUNCTUATION else ch) for ch in value)


def text(value) -> str:
    value, out, end = _one_line(value), [], 0
    for word in _WORD.finditer(value):
        linkish = word[0].rstrip(".,;:!?")  # a sentence's punctuation stays outside the code
        if _LINKISH.search(linkish):
            out += [_escape(value[end:word.start()]), code(linkish)]
            end = word.start() + len(linkish)
    out = "".join(out) + _escape(value[end:])
    # what would start a list, a quote or a heading underline at the start of a line
    return re.sub(r"^(\d+)([.)])", r"\1\\\2", re.sub(r"^([-+=])", r"\\\1", out))


cell = text  # text() escapes the pipe too, so it is safe in a table cell


def code(value) -> str:
    value = _one_line(value)
    fence = "`" * (max(map(len, re.findall("`+", value)), default=0) + 1)
    pad = " " if value[:1] in ("`", " ") or value[-1:] in ("`", " ") else ""  # CommonMark strips it
    return f"{fence}{pad}{value}{pad}{fence}"


def json_block(data) -> list[str]:
    """The lines of a fenced JSON block: ASCII only, and backticks and HTML's ``<>&`` inside
    strings written as ``\\u0060``..., so no line can close the fence or hold a tag."""
    body = json.dumps(data, indent=1, ensure_ascii=True, default=str)
    for char in "`<>&":
        body = body.replace(char, f"\\u{ord(char):04x}")
    return ["```json", body, "```"]


def link(label, target, folder: str | Path, base: str | Path, image: bool = False) -> str:
    """``[label](path)`` (``![...]`` for an image) relative to ``base``, when ``folder/target``
    is an existing file inside ``folder`` (symbolic links resolved); else ``text(label)``."""
    folder = Path(folder).resolve()
    try:
        path = (folder / str(target)).resolve()
    except (OSError, RuntimeError, ValueError):  # a loop of links, a NUL byte
        return text(label)
    try:
        inside = path.is_relative_to(folder) and path.is_file()
    except OSError:  # no permission to look
        inside = False
    if not inside:
        return text(label)
    url = quote(os.path.relpath(path, Path(base).resolve()).replace(os.sep, "/"))
    return f"{'!' if image else ''}[{text(label)}]({url})"
