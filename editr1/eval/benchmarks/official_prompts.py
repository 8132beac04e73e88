"""Reading the benchmarks' official prompt files from the user's own copy, safely.

The official prompt texts are never shipped with editr1: the user points at their copy and we read it
at run time. GEdit's prompts live in a Python module; we parse it with :mod:`ast` and evaluate only
string constants, implicit concatenation, ``a + b`` of earlier names and f-strings without
expressions. Nothing in the file is imported or executed.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from editr1.errors import DataError


def resolve_prompt_file(path: str | Path, candidates: Sequence[str], what: str) -> Path:
    """`path` itself when it is a file, else the first of `candidates` (relative paths) under the folder.

    Raises DataError naming every place looked at."""
    p = Path(path).expanduser()
    if p.is_file():
        return p.resolve()
    if p.is_dir():
        for rel in candidates:
            c = p / rel
            if c.is_file():
                return c.resolve()
        looked = ", ".join(str(p / rel) for rel in candidates)
        raise DataError(f"{what}: no prompt file in folder {p} (looked for {looked})")
    raise DataError(f"{what}: {p} does not exist")


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def read_json_file(path: Path, what: str) -> Any:
    """Parse a JSON file; a DataError names the file (and the line for a syntax error, the key for a
    key given twice in one object, which plain JSON parsing would silently drop)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{what}: cannot read {path}: {e}") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise DataError(f"{what}: {path} gives key {e.args[0]!r} twice in one object") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{what}: {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


class _Unsupported(Exception):
    """An expression that is not a plain string expression (it is then ignored, never evaluated)."""


def _eval_str(node: ast.AST, names: dict[str, str]) -> str:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            return node.value
        raise _Unsupported
    if isinstance(node, ast.JoinedStr):
        # Only f-strings without any replacement field: their parts are all constants.
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant) and isinstance(v.value, str):
                parts.append(v.value)
            else:
                raise _Unsupported
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _eval_str(node.left, names) + _eval_str(node.right, names)
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        raise _Unsupported
    raise _Unsupported


def read_string_constants(path: str | Path) -> dict[str, str]:
    """Module-level string assignments of a Python file, read with `ast` (never imported or executed).

    Supported right-hand sides: string constants (implicit concatenation included), f-strings without
    replacement fields, and `+` of such strings and of names assigned earlier in the file. Every other
    statement (imports, calls, functions, ...) is ignored, and a name later re-assigned to something
    that is not a string expression is dropped."""
    p = Path(path)
    try:
        source = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"prompt module {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read prompt module {p}: {e}") from None
    try:
        tree = ast.parse(source, filename=str(p))
    except SyntaxError as e:
        raise DataError(f"prompt module {p} is not valid Python (line {e.lineno}: {e.msg})") from None
    names: dict[str, str] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        else:
            continue
        plain = [t.id for t in targets if isinstance(t, ast.Name)]
        try:
            text = _eval_str(value, names)
        except _Unsupported:
            for n in plain:
                names.pop(n, None)
            continue
        for n in plain:
            names[n] = text
    return names
