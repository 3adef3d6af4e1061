"""Text formatting shared by every renderer: numbers, step ranges, and markdown escaping of strings from logs."""

from __future__ import annotations

import json
import math
import re
from typing import Any

SIGNIFICANT_DIGITS = 4  # numbers in prose and tables; enough to tell 3.75 from 3.60 without noise
PATCH_DIGITS = 6  # numbers in a patch to paste: the value a user will actually set


# One notation for every number in every report, the detectors' messages included (analyzer/detectors/stats.py
# fmt_num): plain decimals from 1e-3 up, e-notation below it and for fractions from 1e4 up, written 6e-5 and 4.85e8,
# never Python's 6e-05 / 4.85e+08 or 0.00006. An lr of 3e-4 and a min_lr of 6e-5 then read alike in one table.
SCIENTIFIC_BELOW = 1e-3
SCIENTIFIC_FROM = 1e4  # for values that are not whole numbers: a whole number keeps its digits (65536, 1000000)
WHOLE_DIGITS = 1e7  # a whole float under this is written out (a loss scale of 65536.0), above it in e-notation
_EXPONENT = re.compile(r"e(-?)\+?0*(\d)")


def number(value: Any, digits: int = SIGNIFICANT_DIGITS) -> str:
    """A value as a reader wants it: 0.002, 9, 4.85e8, 3e-4, 6e-5, NaN, true, [0.9, 0.999].

    This is the only way a number reaches a report (markdown, HTML, terminal, JUnit, plots, the patch)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        try:
            return number(value.item(), digits)  # numpy scalars
        except (TypeError, ValueError):
            pass
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Inf" if value > 0 else "-Inf"
        if value.is_integer() and abs(value) < WHOLE_DIGITS:
            return f"{int(value)}.0"  # 3.0 stays visibly a float, and a loss scale of 65536 keeps its digits
        if value != 0 and (abs(value) < SCIENTIFIC_BELOW or abs(value) >= SCIENTIFIC_FROM):
            return scientific(value, digits)
        return _EXPONENT.sub(r"e\1\2", f"{value:.{digits}g}")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(number(v, digits) for v in value) + "]"
    return str(value)


def scientific(value: float, digits: int = SIGNIFICANT_DIGITS) -> str:
    """3e-4, 4.75e-4, 1.2e10: `digits` significant digits at most, trailing zeros and the exponent's padding dropped."""
    mantissa, exponent = f"{value:.{max(1, digits) - 1}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def count(n: int) -> str:
    """A count of things (points, NaN values) as the findings' messages write it: 1,154; steps stay plain (19072)."""
    return f"{int(n):,}"


def number_pair(before: Any, after: Any, digits: int = PATCH_DIGITS) -> tuple[str, str]:
    """Two values of one setting, written alike: `lr 5e-4 -> 1e-3`, not `5e-4 -> 0.001`, where either needs
    e-notation."""
    texts = [number(before, digits), number(after, digits)]
    if any(_is_scientific(t) for t in texts):
        texts = [scientific(v, digits) if _is_fraction(v) and not _is_scientific(t) else t
                 for v, t in zip((before, after), texts)]
    return texts[0], texts[1]


def _is_scientific(text: str) -> bool:
    return re.fullmatch(r"-?\d(\.\d+)?e-?\d+", text) is not None


def _is_fraction(value: Any) -> bool:
    """A finite, non-zero float that is not a whole number (0.001, not 3.0 and not 2)."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        value = value.item()
    return (isinstance(value, float) and math.isfinite(value) and value != 0 and not value.is_integer())


def json_text(value: Any, indent: int = 2) -> str:
    """JSON whose numbers read as the rest of the report writes them ("lr": 3e-5, not 3e-05): still valid JSON.
    Values come through patch_value first, so floats are finite here and rounded to PATCH_DIGITS."""
    def encode(item: Any, depth: int) -> str:
        pad, inner = " " * (indent * depth), " " * (indent * (depth + 1))
        if isinstance(item, dict):
            if not item:
                return "{}"
            body = ",\n".join(f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {encode(v, depth + 1)}"
                              for k, v in item.items())
            return "{\n" + body + "\n" + pad + "}"
        if isinstance(item, (list, tuple)):
            return "[" + ", ".join(encode(v, depth + 1) for v in item) + "]"
        if isinstance(item, float) and math.isfinite(item):
            return number(item, PATCH_DIGITS)
        return json.dumps(item, ensure_ascii=False)

    return encode(value, 0)


def patch_value(value: Any) -> Any:
    """A JSON-safe value for the patch: floats rounded to PATCH_DIGITS so 2e-4 reads 0.0002, not 0.00020000000001."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if hasattr(value, "item") and callable(value.item):
        return patch_value(value.item())
    if isinstance(value, float):
        return float(f"{value:.{PATCH_DIGITS}g}") if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [patch_value(v) for v in value]
    return str(value)


def cli_value(value: Any) -> str:
    """A value as a `--set KEY=VALUE` override: plain numbers, JSON for lists, shell-safe quoting for text."""
    value = patch_value(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return number(value, PATCH_DIGITS)
    if isinstance(value, list):
        return shell_quote(json.dumps(value, separators=(",", ":")))
    return shell_quote(str(value))


def shell_quote(text: str) -> str:
    if _SURROGATES.search(text):  # a path that is not UTF-8: bash's $'...' writes its bytes back as they are
        return "$'" + visible_bytes(text.replace("\\", "\\\\").replace("'", "\\'")) + "'"
    if re.fullmatch(r"[\w.,:+\-/=@]+", text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"


def steps(first: int | None, last: int | None) -> str:
    """'436', '100-600', 'from 436', 'whole run'."""
    if first is None and last is None:
        return "whole run"
    if last is None:
        return f"from {first}"
    if first is None:
        return f"until {last}"
    return str(first) if first == last else f"{first}-{last}"


def steps_phrase(first: int | None, last: int | None) -> str:
    """'step 436', 'steps 100-600', 'from step 5', 'whole run': the steps as prose."""
    span = steps(first, last)
    if first is None and last is None:
        return span
    if first is not None and last is not None:
        return f"step {span}" if first == last else f"steps {span}"
    return span.replace("from ", "from step ").replace("until ", "until step ")


def lead_clause(text: str) -> tuple[str, str]:
    """A sentence's lead clause and the rest, split at its first ': ' ("no checkpoint was found", "weights and
    ...") so a long note can be scanned by its lead, or shown by it alone where room is short."""
    text = " ".join(str(text).split())
    lead, sep, rest = text.partition(": ")
    return (lead, rest) if sep and rest else (text, "")


def truncate(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: max(0, limit - 1)].rstrip() + "…"


# --- text from logs -------------------------------------------------------------------------------------------------

# Invisible bidirectional controls (U+202A-U+202E embeddings and overrides, U+2066-U+2069 isolates, the LRM/RLM/ALM
# marks) reorder the text around them: a log line carrying one could show a reader a different line than it holds
# ("Trojan source"). Every renderer shows them as a visible code point instead; RTL letters themselves are kept.
_BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible_bidi(text: str) -> str:
    """`text` with each bidirectional control character replaced by its code point, as `{U+202E}`."""
    return _BIDI_CONTROLS.sub(lambda m: f"{{U+{ord(m.group()):04X}}}", text)


# A file or folder name that is not UTF-8 reaches us from os.fsdecode with each undecodable byte as a lone surrogate
# (U+DC80-U+DCFF); such a string cannot be written as UTF-8 at all. Outputs show each byte as `\xNN`, the way Python
# and `ls -b` write it; any other lone surrogate (from a JSON "\ud800" escape, say) as `\uXXXX`.
_SURROGATES = re.compile("[\ud800-\udfff]")


def _escape_surrogate(char: str, backslash: str) -> str:
    code = ord(char)
    return f"{backslash}x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"{backslash}u{code:04x}"


def visible_bytes(text: str) -> str:
    r"""`text` with each undecodable byte of a file name written as `\xNN` (and any other lone surrogate as
    `\uXXXX`): what can be encoded as UTF-8 and read, unchanged where there is none."""
    if not _SURROGATES.search(text):
        return text
    return _SURROGATES.sub(lambda m: _escape_surrogate(m.group(), "\\"), text)


def visible_bytes_json(text: str) -> str:
    r"""visible_bytes for a JSON document: the backslash is itself escaped, so each string decodes to `\xNN`."""
    if not _SURROGATES.search(text):
        return text
    return _SURROGATES.sub(lambda m: _escape_surrogate(m.group(), "\\\\"), text)


def finalize(value: Any) -> Any:
    """Applied by jinja2 to every value a template prints (before HTML escaping): bidi controls and undecodable
    bytes of file names made visible. Safe markup (an inlined figure, an escaped block) stays markup: the
    replacements are plain ASCII."""
    if not isinstance(value, str) or not (_BIDI_CONTROLS.search(value) or _SURROGATES.search(value)):
        return value
    return type(value)(visible_bytes(visible_bidi(str(value))))


# --- markdown ---------------------------------------------------------------------------------------------------

# "<" and "&" are enough to stop raw HTML and entities; ">" alone is harmless mid-line and reads better raw.
# "[" opens every link and image (`[x](javascript:...)`, `![x](https://tracker)`) and "]" closes the text of a
# template's own link (a run named `x](javascript:...) ` in the sweep index): both escaped, no log text links out.
_MD_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", "[": "\\[", "]": "\\]"})


def md_text(text: Any) -> str:
    """Inline markdown text from an untrusted string: HTML-escaped (GitHub renders raw tags), links and images
    disarmed, on one line."""
    return " ".join(str(text).split()).translate(_MD_HTML)


def md_cell(text: Any) -> str:
    """md_text that is also safe inside a table cell (pipes escaped)."""
    return md_text(text).replace("|", "\\|")


def md_code(text: Any, in_table: bool = False) -> str:
    """An inline code span that holds any string: the fence is longer than any backtick run inside it."""
    body = " ".join(str(text).split())
    if not body:
        return ""
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * (longest + 1)
    if body.startswith("`") or body.endswith("`") or (body.startswith(" ") and body.endswith(" ")):
        body = f" {body} "
    if in_table:
        body = body.replace("|", "\\|")  # GFM splits cells on pipes even inside code spans
    return f"{fence}{body}{fence}"


def md_fence(text: str, info: str = "") -> str:
    """A fenced code block that holds any text: the fence is longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return f"{fence}{info}\n{text.rstrip()}\n{fence}"
