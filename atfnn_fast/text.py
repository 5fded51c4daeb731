"""Text that leaves the package for a terminal, a log or another program
(docs/design.md#output-text): one module, used by every command's output and error line.

* :func:`printable`: a file name, label or result as one line that can be told apart
  from any other (error and warning lines: the same without doubling backslashes). Escaped (Python's spelling, so the result reads as a string literal
  would): a backslash itself (``\\\\``: so an escape can never be mistaken for a name that
  holds those characters), the bytes of a name that are not UTF-8 (``\\xNN``), control
  characters (ESC, CR, LF, tab...: ``\\x1b``, ``\\r``, ``\\n``, ``\\t``), line and paragraph
  separators, format characters (the bidi controls U+202A-U+202E and U+2066-U+2069,
  zero-width characters, the byte-order mark: ``\\u202e``...), spaces other than U+0020
  (a no-break space looks like a space), private-use, unassigned and surrogate code
  points, and, in text that is not in Unicode's NFC form, the combining marks (the NFC
  and NFD spellings of one name look alike; the NFD one shows ``e\\u0301``). Every other
  character is itself. Each character maps to itself or to an escape starting with one
  backslash, and a backslash maps to two, so two different texts never print the same.
* :func:`one_line`: an exception's message on one line (an indented continuation line
  joins with ``; ``); its other line breaks are :func:`printable`'s to escape.
* :func:`csv_cell`: :func:`printable`, then a cell that a spreadsheet would run as a
  formula (starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) gets a
  leading single quote, as OWASP's CSV-injection advice and the spreadsheets themselves
  do (the quote shows the text as text).

JSON output needs none of this: ``json.dumps`` escapes everything outside printable ASCII.
"""

from __future__ import annotations

import re
import unicodedata

# categories escaped wherever they are: controls, format characters (bidi, zero-width,
# BOM), separators other than the space, surrogates, private use, unassigned
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
_COMBINING = frozenset({"Mn", "Mc", "Me"})
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a name that is not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:  # \xNN is kept for ASCII and the bytes above, so U+0080.. are \u0080..
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str, *, backslash: bool = True) -> str:
    """``text`` with every character that could hide, forge or break a line escaped (see
    the module docstring); one line, and distinct texts stay distinct. ``backslash=False``
    (error and warning lines, read by people, whose messages quote values with ``repr``)
    leaves backslashes as they are: still one line without control characters, but
    ``\\n`` written by a message and an escaped line feed then look alike."""
    text = str(text)
    marks = not text.isascii() and unicodedata.normalize("NFC", text) != text
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if (ch in _SHORT and (backslash or ch != "\\")) or (
            (category in _ESCAPED_CATEGORIES and ch != " ") or (marks and category in _COMBINING)
        ):
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out)


def one_line(err: BaseException | str) -> str:
    """An exception's message (or a text) on one line: a line break followed by
    indentation (how messages list details) or preceded by a colon joins with ``: `` or
    ``; ``. Any other line break (a file name may hold one) is left for :func:`printable`,
    which every output applies once, to escape."""
    text = (str(err).strip() if not isinstance(err, str) else err.strip()) or type(err).__name__
    text = re.sub(r":[ \t]*\n\s*", ": ", text)
    text = re.sub(r"[ \t]*\n(?:[ \t]*\n)*[ \t]+", "; ", text)
    return re.sub(r"\n(?:[ \t]*\n)+", "; ", text)  # a blank line between paragraphs


def csv_cell(text: str) -> str:
    """A CSV cell that no spreadsheet runs as a formula (see the module docstring)."""
    text = printable(text)
    return "'" + text if text.startswith(FORMULA_START) else text
