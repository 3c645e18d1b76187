"""The layer map: every `sdcpu` import in the source, lazy ones inside functions included, goes to its own layer or a
lower one, and no module reaches itself again through its imports (no circle)."""

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src" / "sdcpu"

# Top to bottom: a module may import from its own layer and those below it. A layer holds packages and modules.
LAYERS = (
    ("command line", ("sdcpu", "sdcpu.__main__", "sdcpu.cli", "sdcpu.commands")),
    ("jobs", ("sdcpu.serve", "sdcpu.batch", "sdcpu.bench", "sdcpu.tune")),
    ("pipeline", ("sdcpu.pipeline",)),
    ("steps", ("sdcpu.backends", "sdcpu.algorithms")),
    ("recipes", ("sdcpu.recipes",)),
    ("models", ("sdcpu.models",)),
    ("families", ("sdcpu.families",)),
    ("system", ("sdcpu.system",)),
    ("errors", ("sdcpu.errors",)),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in SRC.rglob("*.py")}


def layer(module: str) -> int:
    """The index in LAYERS of MODULE's layer: its longest listed prefix."""
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer of the map"
    return max(matches)[1]


def imports(module: str) -> set[str]:
    """The sdcpu modules MODULE imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `from sdcpu.x import function`: the module sdcpu.x
                name = name.rpartition(".")[0]
            if name.startswith("sdcpu") and name != module:
                found.add(name)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_is_in_a_layer_and_imports_only_its_own_or_lower_ones():
    upward = [f"{module} ({LAYERS[layer(module)][0]}) imports {target} ({LAYERS[layer(target)][0]})"
              for module, targets in GRAPH.items() for target in targets
              if layer(target) < layer(module) and not module.startswith(target + ".")]  # a package's __init__
    assert upward == []


def test_no_import_circle():
    def reaches(start, seen):
        for target in GRAPH[start]:
            if target not in seen:
                seen.add(target)
                reaches(target, seen)
        return seen

    circles = sorted(module for module in GRAPH if module in reaches(module, set()))
    assert circles == []


def test_the_map_itself_can_tell_layers_apart():
    assert layer("sdcpu.commands.serve") < layer("sdcpu.serve.app") < layer("sdcpu.pipeline.generate")
    assert layer("sdcpu.backends.openvino") < layer("sdcpu.recipes.auto") < layer("sdcpu.system.launcher")


def test_every_module_docs_architecture_names_exists():
    """docs/architecture.md names modules by path (`pipeline/prepare.py`, `serve/guard.BODY_BYTES`) and by file name in
    its layer table (prepare.py): each is there, so the map cannot drift from the tree unnoticed."""
    import re

    root = SRC.parent.parent
    doc = (root / "docs" / "architecture.md").read_text()
    missing = []
    for token in re.findall(r"`([^`\s]+)`", doc):
        path = re.match(r"((?:[a-z_0-9]+/)+[a-z_0-9]+)", token)
        if path and "NAME" not in token and not any(
                (base / f"{path[1]}{suffix}").exists() for base in (SRC, root) for suffix in (".py", "", ".sh")):
            missing.append(token)
    files = {path.name for path in SRC.rglob("*.py")}
    missing += sorted({name for name in re.findall(r"\b([a-z_0-9]+\.py)\b", doc) if name not in files
                       and not name.startswith("test_") and "NAME" not in name})
    assert missing == []
