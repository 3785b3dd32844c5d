"""Codat's query language (``query=``) and ``orderBy=`` for the sandbox.

Grammar (whitespace is free around every token)::

    expr    := and ( "||" and )*          # && binds tighter than ||
    and     := primary ( "&&" primary )*
    primary := "{" expr "}" | clause
    clause  := property op value
    property:= name ( "." name )*         # names: letters, digits, "_" (matched ignoring case)
    op      := "!=" | ">=" | "<=" | "=" | "~" | ">" | "<"
    value   := '"' ... '"' | "'" ... "'"  # quoted: backslash escapes the next character
             | text up to "&&", "||", "{", "}" or the end, trimmed (may contain spaces;
                 must not be empty, start with "!" or contain = < > ~: quote such values)

Semantics (documented choices where Codat's docs are silent):

* Each property of a dataset has a type: ``string``, ``date``, ``number`` or ``array``/``object``.
  An unknown property, an array or a whole object gives
  ``Error parsing query - Could not resolve property X on Dataset`` (400); dotted paths reach
  into objects (``referenceParentCompany.name``, ``tags.region``).
* strings: ``=`` / ``!=`` compare ignoring case, ``~`` is "contains" ignoring case;
  ``> < >= <=`` compare case-folded strings by code point.
* dates: the value must be a date (``2023-04-11``, ``2023-04-11T10:33:49Z``, offsets, up to 7
  fractional digits; unqualified times and date-only values are taken as UTC) and is compared as
  an instant; ``~`` on a date is malformed. Record dates in every shape are compared the same way.
* numbers: compared numerically; a non-numeric value is malformed.
* null or missing fields never match any clause, ``!=`` included ("nulls can't be queried").
* Anything that does not follow the grammar: ``Error parsing query - Malformed query.`` (400).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MALFORMED = "Error parsing query - Malformed query."

_DATE_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?"
    r"(Z|z|[+\- ]\d{2}:?\d{2})?)?$"
)
_TICKS = 10_000_000  # 100 ns ticks per second


def parse_date_ticks(text: Any) -> int | None:
    """Any Codat date shape -> 100 ns ticks since 0001-01-01 UTC (naive/date-only read as UTC).

    Returns None for None or anything unparseable. A space where the offset sign should be is
    read as "+" (an unescaped "+" in a URL query decodes to a space).
    """
    if not isinstance(text, str):
        return None
    m = _DATE_RE.match(text.strip())
    if not m:
        return None
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    import datetime as _dt

    try:
        days = _dt.date(int(y), int(mo), int(d)).toordinal() - 1
    except ValueError:
        return None
    h = int(hh or 0)
    mn = int(mi or 0)
    s = int(ss or 0)
    if h > 23 or mn > 59 or s > 59:
        return None
    secs = days * 86400 + h * 3600 + mn * 60 + s
    if tz and tz not in ("Z", "z"):
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        secs -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    ticks = secs * _TICKS
    if frac:
        ticks += int(frac.ljust(7, "0"))
    return ticks


class QueryError(ValueError):
    """A query or orderBy the API rejects with 400; ``str(err)`` is the API's error text."""


def unresolved(prop: str) -> QueryError:
    return QueryError(f"Error parsing query - Could not resolve property {prop} on Dataset")


@dataclass(frozen=True)
class Dataset:
    """Queryable properties of one dataset: canonical dotted path -> type.

    ``wildcards`` maps an object property whose keys are free (``tags``) to the type of its
    members.
    """

    fields: Mapping[str, str]
    wildcards: Mapping[str, str] = None  # type: ignore[assignment]

    def resolve(self, prop: str) -> tuple[tuple[str, ...], str]:
        """Property as written -> (path parts, type); QueryError when it can't be queried."""
        lowered = {k.lower(): k for k in self.fields}
        canon = lowered.get(prop.lower())
        if canon is not None:
            typ = self.fields[canon]
            if typ in ("array", "object"):
                raise unresolved(prop)
            return tuple(canon.split(".")), typ
        head, _, rest = prop.partition(".")
        for wk, wtyp in (self.wildcards or {}).items():
            if head.lower() == wk.lower() and rest and "." not in rest:
                return (wk, rest), wtyp
        raise unresolved(prop)


def _get(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    cur: Any = record
    for part in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
        if cur is None:
            return None
    return cur


def _to_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    try:
        return float(str(v))
    except ValueError:
        return None


_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
}

Predicate = Callable[[Mapping[str, Any]], bool]


def _clause(path: tuple[str, ...], typ: str, op: str, raw: str) -> Predicate:
    if typ == "string":
        want = raw.casefold()
        if op == "~":
            return lambda r: (v := _get(r, path)) is not None and want in str(v).casefold()
        cmp = _CMP[op]
        return lambda r: (v := _get(r, path)) is not None and cmp(str(v).casefold(), want)
    if typ == "date":
        if op == "~":
            raise QueryError(MALFORMED)
        want_t = parse_date_ticks(raw)
        if want_t is None:
            raise QueryError(MALFORMED)
        cmp = _CMP[op]

        def date_pred(r: Mapping[str, Any]) -> bool:
            t = parse_date_ticks(_get(r, path))
            return t is not None and cmp(t, want_t)

        return date_pred
    if typ == "number":
        want_n = _to_number(raw)
        if want_n is None or op == "~":
            raise QueryError(MALFORMED)
        cmp = _CMP[op]

        def num_pred(r: Mapping[str, Any]) -> bool:
            n = _to_number(_get(r, path))
            return n is not None and cmp(n, want_n)

        return num_pred
    raise QueryError(MALFORMED)  # pragma: no cover


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_OPS = ("!=", ">=", "<=", "=", "~", ">", "<")


class _Parser:
    def __init__(self, text: str, dataset: Dataset) -> None:
        self.s = text
        self.i = 0
        self.ds = dataset

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def peek(self, tok: str) -> bool:
        self.ws()
        return self.s.startswith(tok, self.i)

    def parse(self) -> Predicate:
        if not self.s.strip():
            raise QueryError(MALFORMED)
        pred = self.expr()
        self.ws()
        if self.i != len(self.s):
            raise QueryError(MALFORMED)
        return pred

    def expr(self) -> Predicate:
        parts = [self.and_()]
        while self.peek("||"):
            self.i += 2
            parts.append(self.and_())
        if len(parts) == 1:
            return parts[0]
        return lambda r: any(p(r) for p in parts)

    def and_(self) -> Predicate:
        parts = [self.primary()]
        while self.peek("&&"):
            self.i += 2
            parts.append(self.primary())
        if len(parts) == 1:
            return parts[0]
        return lambda r: all(p(r) for p in parts)

    def primary(self) -> Predicate:
        if self.peek("{"):
            self.i += 1
            inner = self.expr()
            if not self.peek("}"):
                raise QueryError(MALFORMED)
            self.i += 1
            return inner
        return self.clause()

    def clause(self) -> Predicate:
        self.ws()
        m = _NAME_RE.match(self.s, self.i)
        if not m:
            raise QueryError(MALFORMED)
        prop = m.group(0)
        self.i = m.end()
        self.ws()
        op = next((o for o in _OPS if self.s.startswith(o, self.i)), None)
        if op is None:
            raise QueryError(MALFORMED)
        self.i += len(op)
        value = self.value()
        path, typ = self.ds.resolve(prop)
        return _clause(path, typ, op, value)

    def value(self) -> str:
        self.ws()
        if self.i < len(self.s) and self.s[self.i] in "\"'":
            quote = self.s[self.i]
            self.i += 1
            out = []
            while self.i < len(self.s):
                c = self.s[self.i]
                if c == "\\" and self.i + 1 < len(self.s):
                    out.append(self.s[self.i + 1])
                    self.i += 2
                    continue
                if c == quote:
                    self.i += 1
                    return "".join(out)
                out.append(c)
                self.i += 1
            raise QueryError(MALFORMED)  # unterminated quote
        start = self.i
        while self.i < len(self.s):
            if self.s.startswith(("&&", "||", "}", "{"), self.i):
                break
            self.i += 1
        raw = self.s[start : self.i].strip()
        if not raw or raw[0] == "!" or any(c in raw for c in "=<>~"):
            # empty, a doubled operator ("id==1") or a missing && / || ("a=1 b=2"): quote
            # values that really contain these characters
            raise QueryError(MALFORMED)
        return raw


def compile_query(text: str, dataset: Dataset) -> Predicate:
    """Query text -> predicate over API JSON dicts; QueryError (400 text) when rejected."""
    if len(text) >= 2048:
        raise QueryError(MALFORMED)
    return _Parser(text, dataset).parse()


def compile_order_by(text: str, dataset: Dataset) -> tuple[Callable[[Mapping], tuple], bool]:
    """``orderBy`` text -> (sort key, descending). Nulls sort first ascending (last descending).

    Keys: strings case-folded, dates as instants, numbers numerically. Sorting is stable, so
    ties keep the default (index) order. Unknown property: QueryError (400).
    """
    t = text.strip()
    desc = t.startswith("-")
    prop = t[1:].strip() if desc else t
    if not _NAME_RE.fullmatch(prop or ""):
        raise QueryError("Error parsing orderBy - Malformed orderBy.")
    try:
        path, typ = dataset.resolve(prop)
    except QueryError as exc:
        raise QueryError(str(exc).replace("parsing query", "parsing orderBy")) from None

    def key(r: Mapping) -> tuple:
        v = _get(r, path)
        if typ == "date":
            k: Any = parse_date_ticks(v)
        elif typ == "number":
            k = _to_number(v)
        else:
            k = None if v is None else str(v).casefold()
        return (0, 0) if k is None else (1, k)

    return key, desc
