"""The package's import graph: no import circles between modules (lazy imports inside functions
count too: a circle hidden in a function is still a circle), and no module imports another
package's ``_private`` names."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "hloc_bpnp"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """(imported module, [names]) for every import statement of a file, relative ones resolved."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def _graph():
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    edges = {m: set() for m in modules}
    for m, p in modules.items():
        for target, names in _imports(p):
            if not target.startswith("hloc_bpnp"):
                continue
            for n in names or [None]:
                full = f"{target}.{n}" if n else target
                dst = full if full in modules else target
                while dst not in modules and "." in dst:
                    dst = dst.rsplit(".", 1)[0]
                if dst in modules and dst != m and not m.startswith(dst + ".") and not _is_package(dst, modules):
                    edges[m].add(dst)
    return edges


def _is_package(name, modules):
    return modules[name].name == "__init__.py"


def _cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    cycles = _cycles(_graph())
    assert not cycles, f"import circles between modules: {cycles}"


def test_no_private_names_across_packages():
    bad = []
    for p in PKG.rglob("*.py"):
        mod = _module_name(p)
        own = mod.split(".")[:2]
        for target, names in _imports(p):
            if not target.startswith("hloc_bpnp"):
                continue
            if target.split(".")[:2] == own:
                continue  # inside one package, private helpers are fine
            priv = [n for n in names if n.startswith("_") and n != "__version__"]
            priv_mod = [s for s in target.split(".")[1:] if s.startswith("_") and s != "__init__"]
            if priv or priv_mod:
                bad.append(f"{mod} imports {target}: {priv or priv_mod}")
    assert not bad, "\n".join(bad)


def test_numpy_conversions_go_through_cpu():
    """``tensor.numpy()`` fails on a GPU tensor: every ``.numpy()`` in the library is called on
    ``.cpu()`` (checked on the source, since the CPU suite cannot catch it)."""
    bad = []
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "numpy"
                    and not node.args):
                recv, ok = node.func.value, False
                while isinstance(recv, ast.Call) and isinstance(recv.func, ast.Attribute):
                    if recv.func.attr == "cpu":  # .cpu() anywhere in the chain (.cpu().double().numpy())
                        ok = True
                        break
                    recv = recv.func.value
                if not ok:
                    bad.append(f"{p.relative_to(PKG.parent)}:{node.lineno}")
    assert not bad, "tensor.numpy() without .cpu(): " + ", ".join(bad)


def test_evaluation_is_metrics_only():
    """``evaluation`` holds metrics and plots; the protocols that build maps and localize live
    in ``protocols``: no evaluation module imports mapping, features, matching, retrieval,
    training, sequence or the protocols, and the metrics depend on geometry (and config) only."""
    heavy = ("mapping", "features", "matching", "retrieval", "training", "sequence", "protocols")
    bad = []
    for p in (PKG / "evaluation").glob("*.py"):
        for target, _ in _imports(p):
            parts = target.split(".")
            if parts[0] == "hloc_bpnp" and len(parts) > 1 and parts[1] in heavy:
                bad.append(f"{p.name} imports {target}")
            if p.name == "metrics.py" and parts[0] == "hloc_bpnp" and len(parts) > 1 \
                    and parts[1] not in ("geometry", "config"):
                bad.append(f"metrics.py imports {target}")
    assert not bad, bad
