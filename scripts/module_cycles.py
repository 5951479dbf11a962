#!/usr/bin/env python3
"""Fails when a crate's modules import each other in a circle.

An edge A -> B means module A's code names module B: a `use crate::…`, `use super::…` or
`use self::…` statement, or an inline `crate::…` path. Re-exports (`pub use`) and `mod`
declarations are a parent's façade, not a dependency, and a file's inline `#[cfg(test)] mod
tests` is left out. Every strongly connected component of more than one module is printed.

Usage: scripts/module_cycles.py [WORKSPACE_ROOT]
"""
import os
import re
import sys

PATH = re.compile(r"\b(crate|super|self)((?:::\w+)+)")
USE = re.compile(r"(?m)^\s*(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);")


def modules(src):
    """Module path (tuple of names) -> file, for one crate's src/ (binaries left out)."""
    found = {}
    for folder, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            parts = os.path.relpath(os.path.join(folder, name), src)[:-3].split(os.sep)
            if parts[0] == "bin":
                continue
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            found[tuple(parts)] = os.path.join(folder, name)
    return found


def imports(module, text, known):
    """The modules `module`'s code names."""
    text = re.sub(r"(?s)#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", text)
    text = re.sub(r"//[^\n]*", "", text)
    names = []
    for public, body in USE.findall(text):
        if not public:
            names += PATH.findall(body)
    names += [("crate", rest) for rest in re.findall(r"\bcrate((?:::\w+)+)", text)]
    targets = set()
    for head, rest in names:
        tail = rest.split("::")[1:]
        if head == "crate":
            base = []
        else:
            base = list(module)
            if head == "super":
                base = base[:-1]
            while tail and tail[0] == "super":
                base, tail = base[:-1], tail[1:]
        path = base + tail
        # The longest prefix that is a module: the rest names items inside it.
        target = next(
            (tuple(path[:n]) for n in range(len(path), -1, -1) if tuple(path[:n]) in known), ()
        )
        if target != module and target != ():
            targets.add(target)
    return targets


def cycles(graph):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    return found


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    failed = False
    for crate in sorted(os.listdir(root)):
        src = os.path.join(root, crate, "src")
        if not (os.path.isdir(src) and os.path.isfile(os.path.join(root, crate, "Cargo.toml"))):
            continue
        known = modules(src)
        graph = {m: imports(m, open(f).read(), known) for m, f in known.items()}
        for component in cycles(graph):
            failed = True
            print(f"{crate}: modules import each other in a circle:")
            for member in sorted(component):
                inside = sorted("::".join(t) for t in graph[member] if t in component)
                print(f"    {'::'.join(member)} -> {', '.join(inside)}")
    if not failed:
        print("module_cycles: no crate's modules import each other in a circle")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
