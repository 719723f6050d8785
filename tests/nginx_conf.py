"""A small reader of NGINX configuration: directives, arguments and blocks, no semantics.

Enough for tests/unit/test_compose.py to ask questions of deploy/compose/nginx/carve.conf.template
(which proxy_set_header a location really sends, with NGINX's inheritance rule) without
matching text: comments, quoted strings (braces inside them included) and nesting are handled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A comment, a quoted string, a brace or semicolon, or a word (in which ${NAME} is one piece).
_TOKEN = re.compile(
    r"""#[^\n]*|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[{};]|(?:\$\{\w+\}|[^\s{};'"#])+"""
)


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def children(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return re.sub(r"\\([\\'\"])", r"\1", token[1:-1])
    return token


def parse(text: str) -> list[Directive]:
    """The top-level directives of ``text`` (a file that nginx.conf includes in ``http {}``)."""
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    for token in (t for t in _TOKEN.findall(text) if not t.startswith("#")):
        if token == ";":
            if not words:
                raise ValueError("empty directive")
            stack[-1].append(Directive(words[0], [_unquote(w) for w in words[1:]]))
            words = []
        elif token == "{":
            if not words:
                raise ValueError("block without a directive")
            directive = Directive(words[0], [_unquote(w) for w in words[1:]], [])
            stack[-1].append(directive)
            assert directive.block is not None
            stack.append(directive.block)
            words = []
        elif token == "}":
            if words or len(stack) == 1:
                raise ValueError(f"unexpected '}}' after {words}")
            stack.pop()
        else:
            words.append(token)
    if words or len(stack) != 1:
        raise ValueError("unterminated directive or block")
    return stack[0]


def proxy_headers(server: Directive, location: Directive) -> dict[str, str]:
    """The proxy_set_header a location sends, lowercased names: its own if it has any, else
    its server's (NGINX inherits the directive only when a level sets none of its own)."""
    own = location.children("proxy_set_header")
    chosen = own or server.children("proxy_set_header")
    return {d.args[0].lower(): d.args[1] for d in chosen}
