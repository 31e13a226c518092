"""Tests of the layout: one idea per file, small enough to read. Modules import each other without
cycles, scripts share code through library modules rather than through each other, everything
imports cleanly in any order, no file or function grows past what a reader takes in at once, and no
prepared dataset is committed.

The project's modules are the top-level .py files other than the tests (test_*.py, conftest.py).
A script is a module with an `if __name__ == "__main__":` block; plot.py has one too, but is a
library that train.py draws with (its command line is a convenience).
"""
import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, run_script

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60
LIBRARIES_WITH_A_CLI = {"plot"}


def is_test(path):
    return path.name.startswith("test_") or path.name == "conftest.py"


MODULES = {p.stem: p for p in sorted(REPO.glob("*.py")) if not is_test(p)}
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in MODULES.items()}


def imports(name):
    """The top-level packages and modules `name` imports, at the top of the file or in a function."""
    found = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def project_imports(name):
    """The project modules `name` imports."""
    return (imports(name) & set(MODULES)) - {name}


def is_script(name):
    """Whether the module has a top-level `if __name__ == "__main__":` block."""
    for node in TREES[name].body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and \
                isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__":
            return True
    return False


GRAPH = {name: project_imports(name) for name in MODULES}
SCRIPTS = {name for name in MODULES if is_script(name)} - LIBRARIES_WITH_A_CLI


def find_cycle(graph):
    """One import cycle as a list of modules [a, b, ..., a], or None."""
    state, stack = {}, []  # state: 1 while on the current path, 2 when fully explored

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# -----------------------------------------------------------------------------
# Imports


def test_the_layout_finds_the_scripts_and_reads_their_imports():
    # a guard for the tests below: they prove nothing if the parsing found nothing to check
    assert {"prepare", "train", "sample", "serve", "bench"} <= SCRIPTS, SCRIPTS
    assert {"model", "configurator"} <= GRAPH["train"] and "measure" in GRAPH["bench"], GRAPH
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_between_the_projects_modules():
    cycle = find_cycle(GRAPH)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_scripts_import_no_other_script():
    # bench.py measures train.py as users run it, as a subprocess (measure.watch_training)
    wrong = {name: sorted(GRAPH[name] & SCRIPTS) for name in SCRIPTS}
    wrong = {name: imported for name, imported in wrong.items() if imported}
    assert not wrong, f"scripts that import another script (move what they share to a library): {wrong}"


def test_libraries_import_no_script():
    wrong = {name: sorted(GRAPH[name] & SCRIPTS) for name in MODULES if name not in SCRIPTS}
    wrong = {name: imported for name, imported in wrong.items() if imported}
    assert not wrong, f"library modules that import a script: {wrong}"


def test_only_serve_imports_the_web_server_packages():
    # fastapi and uvicorn are serve.py's dependencies: training and sampling run without them
    users = {name for name in MODULES if imports(name) & {"fastapi", "uvicorn", "starlette", "pydantic"}}
    assert users == {"serve"}, users


IMPORT_EACH = """
import importlib, sys
names = sys.argv[1:]

def forget():  # the project's modules only: a fresh start for them, without re-importing torch
    for name in names:
        sys.modules.pop(name, None)

failed = []
for name in names:  # each alone, as the first project module imported
    forget()
    try:
        importlib.import_module(name)
    except BaseException as e:
        failed.append(f"{name}, imported alone: {type(e).__name__}: {e}")
forget()
for i, name in enumerate(reversed(names)):  # all together, in reverse order
    try:
        importlib.import_module(name)
    except BaseException as e:
        failed.append(f"{name}, imported after {names[::-1][:i]}: {type(e).__name__}: {e}")
sys.exit("\\n".join(failed) or None)
"""


def test_every_module_imports_cleanly_in_a_fresh_interpreter_in_any_order():
    result = run_script("-c", IMPORT_EACH, *MODULES)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "", f"importing the modules printed {result.stdout[:500]!r}"


# -----------------------------------------------------------------------------
# Sizes


def functions(tree, prefix=""):
    """(qualified name, lines) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node.end_lineno - node.lineno + 1
            yield from functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, f"{prefix}{node.name}.")
        else:
            yield from functions(node, prefix)


def test_no_file_is_longer_than_600_lines():
    lines = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in MODULES.values()}
    long = {name: n for name, n in lines.items() if n > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_is_longer_than_60_lines():
    long = [f"{MODULES[module].name}: {name} ({n} lines)" for module in MODULES
            for name, n in functions(TREES[module]) if n > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


# -----------------------------------------------------------------------------
# The repository


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_the_repository_commits_no_prepared_dataset_files():
    # a committed meta.json would make a fresh clone's `prepare.py NAME` refuse to run without --force
    tracked = subprocess.run(["git", "ls-files", "data"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    prepared = [p for p in tracked if Path(p).name in ("train.bin", "val.bin", "meta.json")]
    assert not prepared, f"prepared dataset files are committed: {prepared}"


def test_a_newcomers_clone_collects_every_test_without_gpt2_files_or_shared_data(tmp_path):
    # offline, with no GPT-2 BPE files and no ../shared: collecting must not fail anywhere (a module
    # that loaded GPT-2's tokenizer or read ../shared at import would). Running the tests so is
    # conftest's part: each test not marked needs_gpt2_files runs without the files; CI runs the whole
    # suite this way once.
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path), "SPROUT_NO_SHARED": "1"}
    result = run_script("-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    collected = int(re.search(r"(\d+) tests? collected", result.stdout)[1])
    errors = re.findall(r"^ERROR .*|\d+ errors?", result.stdout, flags=re.MULTILINE)
    assert collected > 250 and not errors, errors
