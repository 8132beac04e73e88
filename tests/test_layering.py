"""Dependencies point one way: the product packages import nothing from `editr1.tasks`.

A task (the shapes demo included) plugs in the way a user's would: by a dotted path in a registry or a
config, never by an import in the library. Only `editr1/cli` may import a task.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "editr1"
PRODUCT = ("data", "models", "rewards", "rl", "sampling", "trainer", "eval")
FORBIDDEN = "editr1.tasks"


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, path: Path, root: Path) -> list[str]:
    """The absolute module names an import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level == 0:
            base = node.module or ""
        else:
            package = _module_name(path, root).split(".")
            if path.name != "__init__.py":
                package = package[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([node.module] if node.module else [])])
        return [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return []


def _violations(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """`file:line: imports editr1.tasks...` for each import of a task in the module at `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        for name in _imported(node, path, root):
            if name == FORBIDDEN or name.startswith(FORBIDDEN + "."):
                found.append(f"{path.relative_to(root)}:{node.lineno}: imports {name}")
                break
    return found


@pytest.mark.parametrize("package", PRODUCT)
def test_product_packages_import_no_task(package):
    modules = sorted((PACKAGE / package).rglob("*.py"))
    assert modules, f"editr1/{package} has no modules"
    problems = [problem for module in modules for problem in _violations(module)]
    assert not problems, "a product package imports a task (use a dotted path in a registry instead):\n" + "\n".join(problems)


def test_the_check_sees_absolute_and_relative_imports(tmp_path):
    folder = tmp_path / "editr1" / "rewards"
    folder.mkdir(parents=True)
    module = folder / "leaky.py"
    module.write_text(
        "import editr1.tasks.shapes.verifier\n"
        "from editr1.tasks import shapes\n"
        "from ..tasks.shapes import scenes\n"
        "from .. import tasks\n"
        "from editr1.rewards import base\n"
        "REWARD = 'editr1.tasks.shapes.verifier:ShapesVerifier'\n"
    )
    assert [problem.split(": ", 1)[0] for problem in _violations(module, tmp_path)] == [
        "editr1/rewards/leaky.py:1", "editr1/rewards/leaky.py:2", "editr1/rewards/leaky.py:3", "editr1/rewards/leaky.py:4",
    ]


def _named_families(path: Path, families: set[str]) -> list[str]:
    """`file: 'value'` for each string in the module's code (not its docstrings or help texts) that names
    one of `families`, or its tiny preset."""
    tree = ast.parse(path.read_text(), filename=str(path))
    prose = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            prose.add(id(body[0].value))
        if isinstance(node, ast.keyword) and node.arg == "help":
            prose.update(id(sub) for sub in ast.walk(node.value))
    return [f"{path.relative_to(PACKAGE.parent)}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
            and node.value.removeprefix("tiny:") in families]


def test_no_family_is_named_outside_the_models_package():
    """A family's facts live in its adapter: nothing else branches on a family name (docs and help texts
    aside). The one exception is the default `model.path`, the tiny preset a bare config trains."""
    from editr1.models.registry import FAMILIES

    modules = [m for m in sorted(PACKAGE.rglob("*.py")) if m.relative_to(PACKAGE).parts[0] != "models"]
    modules += sorted((PACKAGE.parent / "bench").glob("*.py"))  # the benchmarks too: they loop over the registry
    found = [hit for module in modules for hit in _named_families(module, set(FAMILIES))]
    assert found == ["editr1/config.py: 'tiny:qwen-image-edit'"], found
