"""The API's JSON parser."""

from __future__ import annotations

import io
import json

import orjson
from rest_framework import parsers
from rest_framework.exceptions import ParseError

_SHOWN = 100  # characters of a location named in a message
# A body's bytes mapped so that an integer of 19 digits or more reads " " and nineteen "0":
# digits to "0", what goes before a fraction's or an exponent's digits (".", "e", "E") to
# itself, the rest to " ". A regular expression took 190 µs over a 28x28 input, this 26 µs.
_NUMBERS = bytes(48 if 48 <= b <= 57 else b if b in b".eE" else 32 for b in range(256))
_LONG_INTEGER = b" " + b"0" * 19


def _long_integer(raw: bytes) -> bool:
    """Whether ``raw`` may hold an integer of 19 digits or more (a top-level number too)."""
    return _LONG_INTEGER in raw.translate(_NUMBERS) or raw.lstrip()[:1] in b"-0123456789"


class JSONParser(parsers.JSONParser):
    """DRF's, except that a body holding a NUL character or a lone UTF-16 surrogate in any
    string, key or value, is refused with where it is. Both are valid JSON (``"\\u0000"``,
    ``"\\ud800"``), but PostgreSQL stores neither (text and jsonb refuse NUL, UTF-8 cannot
    encode a lone surrogate): DRF's CharField refuses them, and a JSONField or a DictField
    (a listing's example input, a version's architecture config) let them through to the
    database, a 500 there. Refused here, they are refused for every field and view at once.

    ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON; DRF refuses them without saying
    where, so the refusal names the field that holds one."""

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read()
        encoding = parsers.get_encoding(parser_context or {}).lower().replace("_", "-")
        utf8 = encoding in ("utf-8", "utf8")
        # orjson and the check below read a prediction's input about 3x faster than json
        # (48 µs against 139 µs for a 28x28 image on the reference VM). orjson is taken only
        # where it gives what json gives: UTF-8, no escape (the walk below), no integer of 19
        # digits or more (orjson reads one beyond 64 bits as a float; json keeps it exact). Its
        # floats are json's to the bit, at any number of digits. Whatever orjson refuses (NaN,
        # 1e400, a BOM, bad JSON) goes the way below, with json's result or message. One
        # difference: orjson reads 1,024 levels of nesting, json what is left of the recursion
        # limit (about 850 in a request); a body between the two is refused further on (the
        # first recursion over it), with the same 400 (accounts/api/errors.py).
        if utf8 and b"\\u" not in raw and not _long_integer(raw):
            try:
                return orjson.loads(raw)
            except orjson.JSONDecodeError:
                pass
        try:
            data = super().parse(io.BytesIO(raw), media_type, parser_context)
        except ParseError:
            problem = _non_finite(raw, parser_context)
            if problem:
                raise ParseError(problem) from None
            raise
        # Only an escape puts either in parsed JSON: strict JSON refuses a raw control
        # character, and decoding refuses an encoded surrogate. Escapes are ASCII bytes in
        # UTF-8 (not in UTF-16 or UTF-32), so most bodies need no walk over what they hold.
        if utf8 and b"\\u" not in raw:
            return data
        problem = unstorable(data)
        if problem:
            raise ParseError(problem)
        return data


def _fault(text: str) -> str | None:
    """A message for what in ``text`` cannot be stored, with ``{where}`` to fill in."""
    if "\x00" in text:
        return 'A NUL character ("\\u0000") cannot be stored: remove the one in {where}.'
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return (
            'A lone UTF-16 surrogate (such as "\\ud800" without its pair) cannot be stored: '
            "fix the one in {where} (send such a character as a surrogate pair, or as UTF-8)."
        )
    return None


def _where(path: str) -> str:
    if not path:
        return "the body"
    return path if len(path) <= _SHOWN else path[:_SHOWN] + "…"


def _walk(data, kinds: tuple[type, ...]):
    """``(value, path, is_key)`` for each key of an object in ``data`` (parsed JSON) and
    each value of one of ``kinds``."""
    stack = [(data, "")]
    while stack:  # not recursive: a body may be nested as deep as the JSON parser allows
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                yield key, path, True
                if isinstance(item, (dict, list, *kinds)):
                    stack.append((item, f"{path}.{key}" if path else key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, (dict, list, *kinds)):
                    stack.append((item, f"{path}.{index}" if path else str(index)))
        elif isinstance(value, kinds):
            yield value, path, False


def unstorable(data) -> str | None:
    """What makes ``data`` (parsed JSON) unstorable, and where, as a message saying what to
    fix; ``None`` when every string in it can be stored."""
    for text, path, is_key in _walk(data, (str,)):
        fault = _fault(text)
        if fault:
            return fault.format(where=("a key of " if is_key else "") + _where(path))
    return None


class _NonFinite:
    def __init__(self, token: str):
        self.token = token


def _non_finite(raw: bytes, parser_context) -> str | None:
    """Where the body holds ``NaN`` or an infinity, as a message saying what to fix; ``None``
    when it holds neither, or is not JSON for another reason."""
    try:
        text = raw.decode(parsers.get_encoding(parser_context or {}))
        data = json.loads(text, parse_constant=_NonFinite)
    except (ValueError, LookupError, RecursionError):
        return None
    for value, path, is_key in _walk(data, (_NonFinite,)):
        if not is_key:
            return f"JSON has no {value.token}: send a finite number in {_where(path)}."
    return None
