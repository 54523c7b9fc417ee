"""The code a job runs: the import closure of its entry module, and a fingerprint of what that code does.

The closure is read statically (no module is imported): every `import` of a prism module, at any depth of
a module (lazy imports in functions count), every string naming one (`"pkg://prism.verl.reward"`, an
`-m prism.verl.align` argument), the packages these sit in, and the files a module names beside it
(`ds_z3.json`, `config/`). The fingerprint hashes each module's syntax tree without docstrings, so a
comment, a docstring or a reformat changes nothing, and a module nothing imports is not part of it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
ROOT = PACKAGE_DIR.parent
MODULE_NAME = re.compile(r"\bprism(?:\.[A-Za-z_]\w*)+")


def module_file(name: str) -> Path | None:
    """The source file of a prism module or package, or None when there is none."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _longest_module(dotted: str) -> str | None:
    """`prism.eval.lmms_tasks.x_process_results` -> `prism.eval.lmms_tasks`: the module a name lives in."""
    parts = dotted.split(".")
    for end in range(len(parts), 1, -1):
        name = ".".join(parts[:end])
        if module_file(name):
            return name
    return None


def _parsed(path: Path) -> ast.Module:
    """A module's syntax tree without its docstrings: prose that names a module imports nothing. Shared
    between callers, who only read it."""
    return _tree(path.read_text(), str(path))


# Keyed by the source itself: the Snakefile fingerprints every rule's closure, and the closures share most
# modules, so each version of a module is parsed, walked and dumped once per process.
@functools.cache
def _tree(source: str, filename: str) -> ast.Module:
    return _WithoutDocstrings().visit(ast.parse(source, filename=filename))


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def references(name: str) -> tuple[frozenset[str], frozenset[Path]]:
    """The prism modules a module imports or names, and the files beside it that it names."""
    path = module_file(name)
    return _references(name, path, path.read_text())


@functools.cache
def _references(name: str, path: Path, source: str) -> tuple[frozenset[str], frozenset[Path]]:
    package = _package_of(name, path)
    modules, files = set(), set()
    tree = _tree(source, str(path))
    # the ENGINES table names every engine's module; a job imports only the one stage_roots adds
    engine_names = {id(n) for table in _engines_assignments(tree) for n in ast.walk(table)}
    for node in ast.walk(tree):
        if id(node) in engine_names:
            continue
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            modules.add(base)
            modules.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            modules.update(MODULE_NAME.findall(node.value))
            for named in _named_files(node.value, path.parent):
                if named.suffix == ".py":
                    modules.add(_dotted(named))  # a module copied or run by path, e.g. tiny_processing.py
                else:
                    files.add(named)
    found = {m for m in map(_longest_module, (m for m in modules if m.startswith("prism."))) if m}
    return frozenset(found), frozenset(files)


def _named_files(text: str, directory: Path) -> set[Path]:
    """Data files a module names: beside it (`ds_z3.json`, `config`) or from the repository root."""
    if not text or "\n" in text or len(text) > 200:
        return set()
    found = set()
    for candidate in (directory / text, ROOT / text):
        try:
            inside = candidate.resolve().is_relative_to(PACKAGE_DIR)
        except (OSError, ValueError):
            continue
        if not inside:
            continue
        if candidate.is_file():
            found.add(candidate)
        elif candidate.is_dir() and not (candidate / "__init__.py").exists() and candidate != directory:
            found.update(p for p in candidate.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return found


def _dotted(path: Path) -> str:
    parts = path.resolve().relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def closure(roots: list[str]) -> tuple[list[str], list[Path]]:
    """Every prism module that running `roots` can execute (their packages included), and the data files
    they name; both sorted."""
    seen, files, queue = set(), set(), list(roots)
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        if not module_file(name):
            raise ValueError(f"{name} is not a module of the prism package")
        seen.add(name)
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        modules, named = references(name)
        files |= named
        queue += [m for m in (*parents, *modules) if m not in seen]
    return sorted(seen), sorted(files)


class _WithoutDocstrings(ast.NodeTransformer):
    def _strip(self, node):
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            if isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        return node

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _strip


def behaviour(path: Path) -> str:
    """What a module does, as text: its syntax tree without docstrings (no comments, layout or lines)."""
    return _dumped(path.read_text(), str(path))


@functools.cache
def _dumped(source: str, filename: str) -> str:
    return ast.dump(_tree(source, filename))


def code_fingerprint(roots: list[str]) -> str:
    """One hash of the behaviour of every module in the closure of `roots` and of the files they name."""
    modules, files = closure(roots)
    digest = hashlib.sha256()
    for name in modules:
        digest.update(f"{name}\0{behaviour(module_file(name))}\0".encode())
    for path in files:
        digest.update(f"{path.relative_to(ROOT)}\0".encode() + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def stage_roots(package: str, engine: str | None = None) -> list[str]:
    """What `python -m <package>` runs for `engine`: its __main__, plus the engine module it imports for
    that engine (named in the __main__'s ENGINES table, so the other engines are no part of the job)."""
    main = f"{package}.__main__" if module_file(f"{package}.__main__") else package
    roots = [main]
    engines = _engines_table(main)
    if engines and engine is not None:
        if engine not in engines:
            raise ValueError(f"{main} has no engine {engine!r}; it has {', '.join(engines)}")
        roots.append(engines[engine])
    return roots


def _engines_assignments(tree: ast.Module) -> list[ast.expr]:
    return [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ENGINES" for t in node.targets)
    ]


def _engines_table(module: str) -> dict[str, str]:
    tables = _engines_assignments(_parsed(module_file(module)))
    return ast.literal_eval(tables[0]) if tables else {}
