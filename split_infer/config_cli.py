"""`split-infer config`: check YAML configs before deploying them, and print their JSON Schema.

    split-infer config check FILE... [--kind edge|cloud]   every problem, with its YAML line; exit 2 on any
    split-infer config schema [--kind edge|cloud]          JSON Schema for editors (both kinds by default)

`check` validates with the same models as the services (split_infer.config), so a file that passes
here loads there. It reports every problem, not only the first: each pydantic error's location is
mapped back to the YAML node it came from. An unset `${VAR}` is reported (with its line) and the
rest of the file is still checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from split_infer.config import CloudConfig, ConfigError, EdgeConfig, substitute_env

KINDS: dict[str, type[BaseModel]] = {"edge": EdgeConfig, "cloud": CloudConfig}
EXIT_OK, EXIT_INVALID = 0, 2
# Values never echoed in a report: they may hold a secret (a token, a password in a URL).
_SECRET_HINTS = ("token", "password", "secret", "url", "sha256", "key")


@dataclass(frozen=True)
class Problem:
    line: int | None  # 1-based; None: the file as a whole
    where: str  # dotted path of the setting, or "" for the file
    message: str

    def render(self, path: str) -> str:
        at = f"{path}:{self.line}" if self.line is not None else path
        return f"{at}: {self.where + ': ' if self.where else ''}{self.message}"


def detect_kind(data: dict[str, Any]) -> str | None:
    """'edge' or 'cloud' from the keys only one of the two models has; None when it cannot tell."""
    edge, cloud = set(EdgeConfig.model_fields), set(CloudConfig.model_fields)
    keys = set(data)
    scores = {"edge": len(keys & (edge - cloud)), "cloud": len(keys & (cloud - edge))}
    if scores["edge"] == scores["cloud"]:
        return None
    return max(scores, key=lambda k: scores[k])


def node_at(root: yaml.Node, loc: Sequence[int | str]) -> tuple[yaml.Node, bool]:
    """The deepest YAML node along pydantic's `loc`, and whether the whole path was found; a mapping
    key's node stands for its entry (so an unknown key points at the key's own line)."""
    node = root
    for i, part in enumerate(loc):
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    nxt = key if i == len(loc) - 1 else value
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            nxt = node.value[part]
        if nxt is None:
            return node, False
        node = nxt
    return node, True


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def _substitute(data: Any, node: yaml.Node | None, path: str, problems: list[Problem]) -> Any:
    """substitute_env, but every unset variable becomes a Problem at its line (the raw text is kept)."""
    if isinstance(data, str):
        try:
            return substitute_env(data, path)
        except ConfigError as e:
            problems.append(Problem(_line(node), "", str(e).split(": ", 1)[-1]))
            return data
    if isinstance(data, dict):
        pairs = node.value if isinstance(node, yaml.MappingNode) else []
        nodes = {k.value: v for k, v in pairs if isinstance(k, yaml.ScalarNode)}
        return {k: _substitute(v, nodes.get(str(k)), path, problems) for k, v in data.items()}
    if isinstance(data, list):
        items = node.value if isinstance(node, yaml.SequenceNode) else []
        return [_substitute(v, items[i] if i < len(items) else None, path, problems) for i, v in enumerate(data)]
    return data


def _describe(err: Any) -> str:
    loc = [str(p) for p in err["loc"]]
    got = err.get("input")
    secret = any(h in part.lower() for part in loc for h in _SECRET_HINTS)
    scalar = isinstance(got, (str, int, float, bool)) or got is None
    shown = f" (got {got!r:.60})" if scalar and not secret and err["type"] != "missing" else ""
    return f"{err['msg']}{shown}"


def check_file(path: Path, kind: str | None = None) -> list[Problem]:
    """Every problem of one config file (empty: valid). `kind` None: told from its keys."""
    try:
        text = path.read_text()
    except OSError as e:
        return [Problem(None, "", f"cannot read it ({e.strerror})")]
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or " ".join(str(e).split())
        return [Problem(mark.line + 1 if mark else None, "", f"not valid YAML: {problem}")]
    if root is None or data is None:
        data, root = {}, yaml.MappingNode("tag:yaml.org,2002:map", [])
    if not isinstance(data, dict):
        return [Problem(_line(root), "", f"expected a mapping of settings, got {type(data).__name__}")]
    kind = kind or detect_kind(data)
    if kind is None:
        return [Problem(None, "", "cannot tell an edge config from a cloud one by its keys: give --kind")]
    problems: list[Problem] = []
    data = _substitute(data, root, str(path), problems)
    try:
        KINDS[kind].model_validate(data, context={"config_dir": path.parent})  # camera_files are relative to it
    except ValidationError as e:
        for err in e.errors():
            loc = err["loc"]
            node, _ = node_at(root, loc)
            where = ".".join(str(p) for p in loc)
            problems.append(Problem(_line(node), where, _describe(err)))
    return sorted(problems, key=lambda p: (p.line or 0, p.where))


def schema(kind: str | None) -> dict[str, Any]:
    """The JSON Schema of one kind of config, or of either (anyOf) when `kind` is None."""
    if kind is not None:
        return KINDS[kind].model_json_schema()
    refs, defs = models_json_schema([(model, "validation") for model in KINDS.values()],
                                    title="split-infer config (edge or cloud)")
    defs["anyOf"] = [refs[(model, "validation")] for model in KINDS.values()]
    return defs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="split-infer config", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate config files; exit 2 on any problem",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    check.add_argument("files", nargs="+", type=Path, metavar="FILE", help="edge or cloud YAML config")
    check.add_argument("--kind", choices=sorted(KINDS), default=None,
                       help="config kind; default: told from each file's keys")
    sch = sub.add_parser("schema", help="print the JSON Schema (for editors)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sch.add_argument("--kind", choices=sorted(KINDS), default=None, help="config kind; default: either")
    args = parser.parse_args(argv)
    if args.action == "schema":
        print(json.dumps(schema(args.kind), indent=2))
        return EXIT_OK
    bad = 0
    for path in args.files:
        problems = check_file(path, args.kind)
        for p in problems:
            print(p.render(str(path)), file=sys.stderr)
        if problems:
            bad += 1
            print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        else:
            print(f"{path}: ok")
    return EXIT_INVALID if bad else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
