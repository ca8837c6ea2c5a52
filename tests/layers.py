#!/usr/bin/env python3
"""The include graph follows the layers: fails on a cycle or an upward import.

Layers, bottom up: proxy/base, cache, proxy/upstream, proxy/serve,
proxy/cmd. A module is a .c file and the header(s) named after it
(include/<name>.h, or a private header beside it; <name>_int.h, private
to the files of one folder, belongs to module <name>). A file may include a
module of its own layer or of a lower one; within a layer the modules'
graph has no cycle. Run from the source tree, or with its path:
    tests/layers.py [SRCDIR]
Prints the graph's edges that break a rule and exits 1, else one line.
"""
import os
import re
import sys

LAYERS = ["proxy/base", "cache", "proxy/upstream", "proxy/serve", "proxy/cmd"]
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def module_of(path):
    """The module a file or include belongs to: its name, less "_int" for
    a private header."""
    name, ext = os.path.splitext(os.path.basename(path))
    return name[:-4] if ext == ".h" and name.endswith("_int") else name


def modules(root):
    """name -> (layer index, [files]) for every .c under the layers."""
    mods = {}
    for i, layer in enumerate(LAYERS):
        d = os.path.join(root, layer)
        for f in sorted(os.listdir(d)):
            if os.path.splitext(f)[1] not in (".c", ".h"):
                continue
            mods.setdefault(module_of(f), (i, []))[1].append(os.path.join(d, f))
    for name, (i, files) in mods.items():
        h = os.path.join(root, "include", name + ".h")
        if os.path.exists(h):
            files.append(h)
    return mods


def edges(mods):
    """(from module, to module) for every include of a project header."""
    out = set()
    for name, (_, files) in mods.items():
        for f in files:
            with open(f, encoding="utf-8") as fh:
                for inc in INCLUDE.findall(fh.read()):
                    to = module_of(inc)
                    if to in mods and to != name:
                        out.add((name, to))
                    elif to not in mods:
                        raise SystemExit(f"layers.py: {f} includes {inc}, "
                                         "which belongs to no module")
    return out


def cycle(mods, es):
    """One cycle as a list of modules, or None."""
    graph = {m: sorted(t for f, t in es if f == m) for m in mods}
    state = {}
    stack = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                c = visit(t)
                if c:
                    return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(mods):
        if m not in state:
            c = visit(m)
            if c:
                return c
    return None


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else \
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    mods = modules(root)
    es = edges(mods)
    bad = [f"{f} ({LAYERS[mods[f][0]]}) includes {t} ({LAYERS[mods[t][0]]}),"
           " a higher layer"
           for f, t in sorted(es) if mods[t][0] > mods[f][0]]
    c = cycle(mods, es)
    if c:
        bad.append("cycle: " + " -> ".join(c))
    for b in bad:
        print(b)
    if bad:
        return 1
    print(f"layers: {len(mods)} modules, {len(es)} includes, no cycle, "
          "none upward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
