"""Find import circles between the modules of each crate (docs/ARCHITECTURE.md promises none).

A module imports another when one of its `use` lines (or a `crate::`/`super::` path in its
code) names it. Parent-child declarations (`mod x;`) are not imports. Usage:
python3 tools/module_cycles.py [crate dirs...]   (default: src and crates/*/src)
Exit 1 and the cycle when one is found.
"""
import os
import re
import sys
from glob import glob


def module_of(path, root):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def resolve(mod, path_parts, modules):
    """The longest known module a path (relative to the crate root) names."""
    for n in range(len(path_parts), 0, -1):
        cand = tuple(path_parts[:n])
        if cand in modules:
            return cand
    return ()


def edges(root):
    files = glob(os.path.join(root, "**", "*.rs"), recursive=True)
    mods = {module_of(f, root): f for f in files}
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        text = open(f).read()
        text = re.sub(r"#\[cfg\(test\)\]\s*mod tests \{.*", "", text, flags=re.S)
        is_dir_mod = os.path.basename(f) in ("mod.rs", "lib.rs", "main.rs")
        for kind, rest in re.findall(r"\b(crate|super)::([A-Za-z_*{][\w:{}, *]*)", text):
            parts = re.split(r"::", rest)
            parts = [p for p in parts if re.fullmatch(r"\w+", p)]
            if kind == "crate":
                base = []
            else:
                base = list(m if is_dir_mod else m[:-1])
                base = base[:-1] if is_dir_mod else base
            target = resolve(m, base + parts, mods)
            if target != m and not (len(target) < len(m) and m[: len(target)] == target and target == ()):
                graph[m].add(target)
        # `use self::x` / `pub use x::y` of a child module is an import of the child
        for child in re.findall(r"^\s*pub use (\w+)::", text, flags=re.M):
            t = (m + (child,)) if is_dir_mod else m[:-1] + (child,)
            if t in mods:
                graph[m].add(t)
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for t in sorted(graph.get(n, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if state.get(t) is None:
                c = visit(t)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if state.get(n) is None:
            c = visit(n)
            if c:
                return c
    return None


roots = sys.argv[1:] or ["src"] + sorted(glob("crates/*/src"))
bad = False
for root in roots:
    cycle = find_cycle(edges(root))
    name = root
    if cycle:
        bad = True
        print(f"{name}: import circle: " + " -> ".join("::".join(c) or "(root)" for c in cycle))
    else:
        print(f"{name}: no import circle")
sys.exit(1 if bad else 0)
