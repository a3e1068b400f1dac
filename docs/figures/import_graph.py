"""The house as its imports draw it: every project module's imports (read with ast, nothing is imported), the
rooms (utils, config, data, models, losses, evaluation, the entry points) on their floors, arrows between rooms,
and in red every circle and every import against the floors.

    python docs/figures/import_graph.py [ROOT] [--output graph.png] [--strict]

ROOT is a repository checkout (default: the one this file lives in). The text summary (edges per room pair,
circles, imports against the floors, function-local project imports) goes to stdout; --strict exits with
status 1 when there is a circle or an import against the floors.

The floors (docs/what_is_where.md): a room imports only itself and the rooms it is allowed to stand on.
"""
from __future__ import annotations

import argparse
import ast
import math
import os
import sys
import textwrap
from collections import Counter, defaultdict
from dataclasses import dataclass, field

ENTRY = "entry points"
# room: (floor, the rooms it may import besides itself). Everything that is not one of these packages (train.py,
# test.py, hubconf.py, bench/, tests/, docs/) is an entry point and may import anything.
FLOORS: dict[str, tuple[int, frozenset[str]]] = {
    "utils": (0, frozenset()),
    "config": (1, frozenset({"utils"})),
    "data": (2, frozenset({"utils", "config"})),
    "models": (2, frozenset({"utils", "config"})),
    "losses": (3, frozenset({"utils", "config"})),
    "evaluation": (4, frozenset({"utils", "config", "data", "models"})),
    ENTRY: (5, frozenset({"utils", "config", "data", "models", "losses", "evaluation"})),
}
SKIPPED_FOLDERS = {"__pycache__", "node_modules", "site-packages"}
DEFAULT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported project module, dotted
    line: int
    local: bool  # inside a function body


@dataclass
class House:
    modules: dict[str, str]  # dotted name -> path relative to the root
    lines: dict[str, int]
    imports: list[Import] = field(default_factory=list)


def room_of(module: str) -> str:
    top = module.split(".")[0]
    return top if top in FLOORS and top != ENTRY else ENTRY


def project_files(root: str) -> dict[str, str]:
    """Dotted module name -> relative path of every .py file under root (hidden folders, caches and virtual
    environments left out)."""
    found = {}
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".") and name not in SKIPPED_FOLDERS
                               and not os.path.isfile(os.path.join(folder, name, "pyvenv.cfg")))
        for name in sorted(files):
            if name.endswith(".py"):
                relative = os.path.relpath(os.path.join(folder, name), root)
                parts = relative[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                if parts:
                    found[".".join(parts)] = relative
    return found


def resolve(name: str, importer: str, is_package: bool, modules: dict[str, str]) -> str | None:
    """The project module an absolute dotted name means: the longest known prefix of the name, or, for scripts
    run from their own folder (tests' `import helpers`), of the name beside the importer when its first part is
    a module there."""
    package = importer if is_package else importer.rpartition(".")[0]
    candidates = [name]
    if package and f"{package}.{name.split('.')[0]}" in modules:
        candidates.insert(0, f"{package}.{name}")
    for candidate in candidates:
        parts = candidate.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in modules:
                return ".".join(parts[:end])
    return None


class _ImportVisitor(ast.NodeVisitor):
    def __init__(self, importer: str, is_package: bool, modules: dict[str, str]):
        self.importer, self.is_package, self.modules = importer, is_package, modules
        self.found: list[Import] = []
        self.depth = 0

    def _add(self, name: str, line: int) -> None:
        target = resolve(name, self.importer, self.is_package, self.modules)
        if target and target != self.importer:
            self.found.append(Import(self.importer, target, line, self.depth > 0))

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = (self.importer if self.is_package else self.importer.rpartition(".")[0]).split(".")
            package = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            base = ".".join([part for part in package if part] + ([base] if base else []))
        for alias in node.names:  # `from pkg import module` imports the module, else the package
            self._add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in self.modules else base, node.lineno)


def read_house(root: str) -> House:
    modules = project_files(root)
    house = House(modules, {})
    for module, relative in modules.items():
        with open(os.path.join(root, relative), encoding="utf-8") as f:
            source = f.read()
        house.lines[module] = source.count("\n")
        try:
            tree = ast.parse(source, filename=relative)
        except SyntaxError as error:
            sys.exit(f"{relative}, line {error.lineno}: not Python ({error.msg})")
        visitor = _ImportVisitor(module, relative.endswith("__init__.py"), modules)
        visitor.visit(tree)
        seen = set()
        for edge in visitor.found:  # one import per (module, imported module): its first, module-level if any
            if (edge.target, edge.local) not in seen and (edge.target, False) not in seen:
                seen.add((edge.target, edge.local))
                house.imports.append(edge)
    return house


def circles(house: House) -> list[list[str]]:
    """One loop (a → b → … → a) per group of modules that import each other (Tarjan's strongly connected
    components). Function-local imports count too: run later, they close no loop at import time, but they tie
    the modules together all the same."""
    graph: dict[str, set[str]] = defaultdict(set)
    for edge in house.imports:
        graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the module count
        index[node] = low[node] = len(index)
        stack.append(node)
        for following in sorted(graph[node]):
            if following not in index:
                visit(following)
                low[node] = min(low[node], low[following])
            elif following in stack:
                low[node] = min(low[node], index[following])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(house.modules):
        if node not in index:
            visit(node)
    return [_loop_through(group, graph) for group in sorted(groups)]


def _loop_through(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest loop from the group's first module back to it (breadth first, inside the group)."""
    start, members = group[0], set(group)
    came_from: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following_frontier = []
        for node in frontier:
            for following in sorted(graph[node] & members):
                if following == start:
                    path = [node]
                    while came_from[path[-1]] is not None:
                        path.append(came_from[path[-1]])
                    return path[::-1] + [start]
                if following not in came_from:
                    came_from[following] = node
                    following_frontier.append(following)
        frontier = following_frontier
    return group + [start]  # not reached: every member of a strongly connected group lies on a loop


def against_the_floors(house: House) -> list[Import]:
    """Imports of a room that the floors do not allow it (upward, or across to a room of its own floor)."""
    return [edge for edge in house.imports
            if room_of(edge.target) != room_of(edge.source)
            and room_of(edge.target) not in FLOORS[room_of(edge.source)][1]]


def room_edges(house: House) -> Counter:
    return Counter((room_of(e.source), room_of(e.target)) for e in house.imports
                   if room_of(e.source) != room_of(e.target))


def summary(house: House) -> str:
    rooms = defaultdict(list)
    for module in house.modules:
        rooms[room_of(module)].append(module)
    out = ["rooms (floor: room, files, lines):"]
    for room, (floor, _) in sorted(FLOORS.items(), key=lambda item: (item[1][0], item[0])):
        out.append(f"  {floor}: {room}, {len(rooms[room])} files, {sum(house.lines[m] for m in rooms[room])} lines")
    out.append("imports between rooms (module imports per room pair):")
    edges = room_edges(house)
    out += [f"  {a} -> {b}: {n}" for (a, b), n in sorted(edges.items())]
    both_ways = sorted({tuple(sorted(pair)) for pair in edges if pair[::-1] in edges})
    out.append(f"rooms importing each other: {len(both_ways)}")
    out += [f"  {a} <-> {b}" for a, b in both_ways]
    loops = circles(house)
    out.append(f"circles (modules importing each other): {len(loops)}")
    out += ["  " + " -> ".join(loop) for loop in loops]
    wrong = against_the_floors(house)
    out.append(f"imports against the floors: {len(wrong)}")
    out += [f"  {e.source} -> {e.target} ({house.modules[e.source]}, line {e.line}; {room_of(e.source)} may import "
            f"{', '.join(sorted(FLOORS[room_of(e.source)][1])) or 'only itself'})" for e in wrong]
    local = [e for e in house.imports if e.local]
    out.append(f"function-local project imports: {len(local)}")
    out += [f"  {e.source} -> {e.target} (line {e.line})" for e in local]
    return "\n".join(out)


# Where each room stands in the picture: (x of its centre, floor row).
POSITIONS = {"utils": (0.5, 0), "config": (0.5, 1), "data": (0.2, 2), "models": (0.8, 2), "losses": (0.5, 3),
             "evaluation": (0.5, 4), ENTRY: (0.5, 5)}


def _room_label(room: str, members: list[str], house: House) -> str:
    names = sorted(m.split(".", 1)[1] if "." in m and room != ENTRY else m for m in members)
    if room == ENTRY:  # tests and bench by folder, the scripts by name
        folders = Counter(m.split(".")[0] for m in members if "." in m)
        names = sorted(m for m in members if "." not in m) + [f"{f}/ ({n})" for f, n in sorted(folders.items())]
    lines = sum(house.lines[m] for m in members)
    body = textwrap.fill(", ".join(names), 58) if names else "(no modules)"
    return f"{room}: {len(members)} files, {lines} lines\n{body}"


def _route(source: str, target: str, centre: dict, widths: dict, height: float,
           both_ways: bool) -> tuple[tuple[float, float], tuple[float, float], float]:
    """(start, end, arc3 rad) of the arrow between two rooms. Rooms on neighbouring floors connect bottom to top;
    an arrow over more floors runs from side to side and bows out beside the rooms in between (on the side
    where its off-centre room stands; downward ones on the right, upward ones on the left when both are
    centred); rooms of one floor connect side to side."""
    (x0, y0), (x1, y1) = centre[source], centre[target]
    floors_apart = abs(FLOORS[source][0] - FLOORS[target][0])
    if floors_apart == 0:
        direction = math.copysign(1, x1 - x0)
        return ((x0 + direction * widths[source] / 2, y0), (x1 - direction * widths[target] / 2, y1),
                0.2 if both_ways else 0.0)
    if floors_apart == 1:
        vertical = math.copysign(height / 2, y1 - y0)
        return (x0, y0 + vertical), (x1, y1 - vertical), (0.15 if both_ways else 0.0)
    off_centre = x1 - 0.5 if abs(x1 - 0.5) > 0.01 else x0 - 0.5
    side = math.copysign(1, off_centre) if abs(off_centre) > 0.01 else (1.0 if y1 < y0 else -1.0)
    start, end = (x0 + side * widths[source] / 2, y0), (x1 + side * widths[target] / 2, y1)
    # arc3 moves the control point by rad × (dy, -dx): choose the sign that bows toward `side`.
    bow = 0.35 if y1 < y0 else 0.55
    if abs(x0 - 0.5) < 0.01 and abs(x1 - 0.5) < 0.01 and floors_apart > 2:  # around the rooms of floor 2
        bow = max(bow, 0.75 / math.dist(start, end))
    return start, end, side * bow * math.copysign(1, end[1] - start[1])


def draw(house: House, output: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    rooms = defaultdict(list)
    for module in house.modules:
        rooms[room_of(module)].append(module)
    loops = circles(house)
    loop_steps = {(room_of(a), room_of(b)) for loop in loops for a, b in zip(loop, loop[1:])}
    in_loop_rooms = {a for a, b in loop_steps if a == b}
    edges = room_edges(house)
    red_pairs = loop_steps | {(room_of(e.source), room_of(e.target)) for e in against_the_floors(house)}
    red_pairs |= {pair for pair in edges if pair[::-1] in edges}  # two rooms importing each other: a circle
    height = 0.11
    widths = {room: 0.3 if abs(x - 0.5) > 0.01 else 0.36 for room, (x, _) in POSITIONS.items()}
    figure, axes = plt.subplots(figsize=(15, 14), dpi=100)
    axes.set_xlim(-0.12, 1.12)
    axes.set_ylim(-0.1, 1.02)
    axes.axis("off")
    centre = {room: (x, 0.02 + row * 0.17 + height / 2) for room, (x, row) in POSITIONS.items()}
    for room, (x, y) in centre.items():
        red, width = room in in_loop_rooms, widths[room]
        axes.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.008",
                                      facecolor="#fbe3e3" if red else "#eef3f8",
                                      edgecolor="#c00000" if red else "#404040", linewidth=2 if red else 1.2,
                                      zorder=2))
        axes.text(x, y, _room_label(room, sorted(rooms[room]), house), ha="center", va="center", fontsize=7.2,
                  zorder=3)
        axes.text(x, y + height / 2 + 0.008, f"floor {FLOORS[room][0]}", ha="center", va="bottom", fontsize=8,
                  color="#707070")
    for (source, target), count in sorted(edges.items()):
        start, end, rad = _route(source, target, centre, widths, height, (target, source) in edges)
        red = (source, target) in red_pairs
        axes.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, zorder=1,
                                       connectionstyle=f"arc3,rad={rad}", color="#c00000" if red else "#505050",
                                       linewidth=0.8 + math.log2(count), alpha=0.9))
        # The middle of the arc: a quadratic Bezier curve whose control point is rad times the chord, turned.
        middle = ((start[0] + end[0]) / 2 + rad / 2 * (end[1] - start[1]),
                  (start[1] + end[1]) / 2 - rad / 2 * (end[0] - start[0]))
        axes.text(*middle, str(count), fontsize=8, color="#c00000" if red else "#303030", ha="center", va="center",
                  zorder=3, bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    notes = [" -> ".join(loop) for loop in loops]
    notes += [f"{e.source} -> {e.target}" for e in against_the_floors(house)]
    axes.text(0.0, -0.02, "in red: circles and imports against the floors\n" + textwrap.fill("; ".join(notes), 190),
              fontsize=7.5, va="top", color="#c00000")
    axes.set_title(title, fontsize=12)
    figure.savefig(output, metadata={"Software": None}, bbox_inches="tight")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=DEFAULT_ROOT, help="repository checkout (default: %(default)s)")
    parser.add_argument("--output", help="PNG to draw the rooms and their imports into")
    parser.add_argument("--title", default="", help="the picture's title (default: the root's folder name)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when there is a circle or an upward import")
    args = parser.parse_args()
    if not os.path.isdir(args.root):
        sys.exit(f"{args.root}: not a folder")
    house = read_house(args.root)
    print(summary(house))
    if args.output:
        draw(house, args.output, args.title or f"imports of {os.path.basename(os.path.abspath(args.root))}")
        print(f"wrote {args.output}")
    if args.strict and (circles(house) or against_the_floors(house)):
        sys.exit(1)


if __name__ == "__main__":
    main()
