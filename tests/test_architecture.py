"""The layer rule: every package imports only the ones below it (import-linter), and nothing dodges it."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "mcp_hub"


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return list(contract["layers"])


def test_lint_imports_keeps_the_layers_contract() -> None:
    lint = pathlib.Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout


def test_the_contract_covers_every_package_and_module() -> None:
    layers = {name.removeprefix("mcp_hub.") for name in _layers()}
    top = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
           if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name != "__init__.py")}
    assert top == layers


def test_config_imports_nothing_else_of_the_package() -> None:
    code = "import sys, mcp_hub.config; print(sorted(m for m in sys.modules if m.startswith('mcp_hub.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = eval(out.stdout)  # noqa: S307 - our own printout of a list of names
    assert loaded and all(name.startswith("mcp_hub.config") for name in loaded), loaded


def test_no_function_level_import_of_the_package() -> None:
    """A function-level import of mcp_hub usually hides a cycle the layer contract should forbid (the CLI may
    import lazily, for its start-up time)."""
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "cli.py":
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("mcp_hub")):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []
