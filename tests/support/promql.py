"""A small PromQL parser for the metrics-wiring test: the series an expression selects, and every
label it needs on each of them (its matchers, `by (...)`, `on (...)`, `group_left (...)`, Grafana's
`label_values(metric, label)`), and whether a range function (rate, increase...) reads it.

It covers the PromQL that deploy/ writes (selectors, aggregations, functions, binary operators with
their modifiers, ranges, subqueries, offset). Anything else raises PromQLError: an expression it
cannot read fails the test, it never yields a silently empty result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
                "topk", "quantile", "limitk", "limit_ratio"}
PARAMETERISED = {"count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}  # (param, expr)
# Functions whose argument is a range vector: the series must be a counter's or a histogram's for
# rate/increase/irate/resets to mean anything.
COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}
# Functions that make or rename labels: what they need is not simply "this label exists".
UNSUPPORTED = {"label_replace", "label_join", "info"}
PRECEDENCE = {"or": 1, "and": 2, "unless": 2, "==": 3, "!=": 3, "<=": 3, "<": 3, ">=": 3, ">": 3,
              "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "atan2": 5, "^": 6}
COMPARISONS = {"==", "!=", "<=", "<", ">=", ">"}

TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\[\]]*\])
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){},@])
""", re.VERBOSE)


class PromQLError(ValueError):
    """An expression this parser cannot read (or that is not PromQL)."""


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # =, !=, =~, !~
    value: str


@dataclass
class Selector:
    """One series selector of an expression, and what the expression needs of that series."""

    name: str
    matchers: tuple[Matcher, ...] = ()
    labels: set[str] = field(default_factory=set)  # every label the expression uses on this series
    range_function: str | None = None  # the function that reads it as a range vector, if any


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    pos: int


def tokenize(expr: str) -> list[Token]:
    out, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if m is None:
            raise PromQLError(f"cannot read {expr[pos:pos + 20]!r} at {pos} of {expr!r}")
        if m.lastgroup != "ws":
            out.append(Token(m.lastgroup or "", m.group(), pos))
        pos = m.end()
    return out


def unquote(text: str) -> str:
    if text[0] == "`":
        return text[1:-1]
    return re.sub(r"\\(.)", r"\1", text[1:-1])


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr, self.tokens, self.i = expr, tokenize(expr), 0

    def peek(self, ahead: int = 0) -> Token | None:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else None

    def next(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise PromQLError(f"unexpected end of {self.expr!r}")
        self.i += 1
        return tok

    def at(self, *texts: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind in ("op", "ident") and tok.text.lower() in texts

    def expect(self, text: str) -> None:
        tok = self.next()
        if tok.text != text:
            raise PromQLError(f"expected {text!r} at {tok.pos} of {self.expr!r}, found {tok.text!r}")

    def parse(self) -> list[Selector]:
        selectors = self.expression(0)
        if self.peek() is not None:
            tok = self.next()
            raise PromQLError(f"unexpected {tok.text!r} at {tok.pos} of {self.expr!r}")
        return selectors

    def expression(self, min_prec: int) -> list[Selector]:
        left = self.unary()
        while (tok := self.peek()) is not None and tok.text.lower() in PRECEDENCE \
                and tok.kind in ("op", "ident") and PRECEDENCE[tok.text.lower()] >= min_prec:
            op = self.next().text.lower()
            if op in COMPARISONS and self.at("bool"):
                self.next()
            needed: set[str] = set()
            if self.at("on", "ignoring"):
                on = self.next().text.lower() == "on"
                listed = self.label_list()
                if on:  # `ignoring` names labels to leave out: they need not exist
                    needed |= listed
            if self.at("group_left", "group_right"):
                self.next()
                if self.at("("):
                    needed |= self.label_list()  # copied from the "one" side
            prec = PRECEDENCE[op]
            right = self.expression(prec if op == "^" else prec + 1)  # ^ is right-associative
            for s in left + right:
                s.labels |= needed
            left = left + right
        return left

    def unary(self) -> list[Selector]:
        if self.at("-", "+"):
            self.next()
            return self.unary()
        selectors = self.primary()
        while True:
            tok = self.peek()
            if tok is not None and tok.kind == "range":  # a subquery of an expression
                self.next()
            elif self.at("offset"):
                self.next()
                self.duration()
            elif self.at("@"):
                self.next()
                self.next()
                if self.at("("):  # start() / end()
                    self.expect("(")
                    self.expect(")")
            else:
                return selectors

    def duration(self) -> None:
        if self.at("-"):
            self.next()
        tok = self.next()
        if tok.kind == "number" and (nxt := self.peek()) is not None and nxt.kind == "ident" \
                and nxt.pos == tok.pos + len(tok.text):
            self.next()  # 5m: the number and its unit
        elif tok.kind not in ("number", "ident"):
            raise PromQLError(f"expected a duration at {tok.pos} of {self.expr!r}")

    def label_list(self) -> set[str]:
        self.expect("(")
        labels: set[str] = set()
        while not self.at(")"):
            tok = self.next()
            if tok.kind != "ident":
                raise PromQLError(f"expected a label name at {tok.pos} of {self.expr!r}, found {tok.text!r}")
            labels.add(tok.text)
            if not self.at(")"):
                self.expect(",")
        self.expect(")")
        return labels

    def primary(self) -> list[Selector]:
        tok = self.next()
        if tok.kind in ("string", "number"):
            return []
        if tok.text == "(":
            inner = self.expression(0)
            self.expect(")")
            return inner
        if tok.text == "{":
            return [self.selector(None)]
        if tok.kind != "ident":
            raise PromQLError(f"unexpected {tok.text!r} at {tok.pos} of {self.expr!r}")
        word = tok.text
        if word.lower() in AGGREGATIONS and (self.at("(") or self.at("by", "without")):
            return self.aggregation(word.lower())
        if self.at("("):
            return self.call(word)
        if word.lower() in ("nan", "inf"):
            return []
        return [self.selector(word)]

    def aggregation(self, op: str) -> list[Selector]:
        grouping: set[str] = set()
        if self.at("by", "without"):
            by = self.next().text.lower() == "by"
            listed = self.label_list()
            grouping |= listed if by else set()  # `without` names labels to drop: they need not exist
        args = self.arguments()
        if self.at("by", "without"):
            by = self.next().text.lower() == "by"
            listed = self.label_list()
            grouping |= listed if by else set()
        if op in PARAMETERISED:
            if len(args) != 2:
                raise PromQLError(f"{op} takes (parameter, vector) in {self.expr!r}")
            args = args[1:]
        elif len(args) != 1:
            raise PromQLError(f"{op} takes one vector in {self.expr!r}")
        for s in args[0]:
            s.labels |= grouping
        return args[0]

    def call(self, function: str) -> list[Selector]:
        if function in UNSUPPORTED:
            raise PromQLError(f"{function} makes labels: extend tests/support/promql.py to check {self.expr!r}")
        start = self.i
        args = self.arguments()
        if function == "label_values":  # Grafana's template query: label_values(metric, label)
            if len(args) != 2 or len(args[0]) != 1 or self.tokens[self.i - 2].kind != "ident":
                raise PromQLError(f"label_values(metric, label) with a metric, in {self.expr!r}")
            args[0][0].labels.add(self.tokens[self.i - 2].text)
            return args[0]
        if function in COUNTER_FUNCTIONS or function.endswith("_over_time") or function in ("delta", "deriv"):
            first = self.tokens[start + 1: self.i - 1]
            # The argument is a selector with its range: mark what reads it.
            if len(args) >= 1 and len(args[0]) == 1 and first and first[-1].kind == "range":
                args[0][0].range_function = function
        return [s for arg in args for s in arg]

    def arguments(self) -> list[list[Selector]]:
        self.expect("(")
        args: list[list[Selector]] = []
        while not self.at(")"):
            args.append(self.expression(0))
            if not self.at(")"):
                self.expect(",")
        self.expect(")")
        return args

    def selector(self, name: str | None) -> Selector:
        """A selector; `name` None: its `{` is already read (a selector by __name__)."""
        matchers: list[Matcher] = []
        if name is None or self.at("{"):
            if name is not None:
                self.expect("{")
            while not self.at("}"):
                label = self.next()
                if label.kind != "ident":
                    raise PromQLError(f"expected a label name at {label.pos} of {self.expr!r}")
                op = self.next()
                if op.text not in ("=", "!=", "=~", "!~"):
                    raise PromQLError(f"expected a matcher at {op.pos} of {self.expr!r}, found {op.text!r}")
                value = self.next()
                if value.kind != "string":
                    raise PromQLError(f"expected a quoted value at {value.pos} of {self.expr!r}")
                matchers.append(Matcher(label.text, op.text, unquote(value.text)))
                if not self.at("}"):
                    self.expect(",")
            self.expect("}")
        if name is None:
            names = [m.value for m in matchers if m.label == "__name__" and m.op == "="]
            if len(names) != 1:
                raise PromQLError(f"a selector without one exact __name__ cannot be checked: {self.expr!r}")
            name = names[0]
        matchers = [m for m in matchers if m.label != "__name__"]
        if (tok := self.peek()) is not None and tok.kind == "range":
            self.next()
        return Selector(name, tuple(matchers), {m.label for m in matchers})


def parse(expr: str) -> list[Selector]:
    """Every series selector of `expr`, with the labels the expression uses on each."""
    return _Parser(expr).parse()
