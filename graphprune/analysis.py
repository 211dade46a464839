"""Channel dependency analysis: which channels of which tensors must be removed together.

Starting from every channel space an op creates (conv filters, Gemm/MatMul outputs), we ask the
coupling rule of every node a space touches which other spaces and weight entries are tied to
it, and record the links in a networkx graph whose nodes are channel spaces. Each connected
component is a *group*. Inside a group, links may map channels non-trivially (concat offsets,
flatten block expansion, channel shuffle), so channels are further joined into *units*: the
smallest sets of member channels that can be removed independently.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from . import rules  # noqa: F401  (registers every rule)
from .coupling import Constraint, Effect, Fixup, Link, ParamSlice, Port, Space, frozen, rule_for
from .rules.conv import UNIFORM_GROUPED, whole_grouped_conv
from .ir import Graph


@dataclass
class Group:
    """Coupled channel spaces and the weights, constraints and fix-ups that follow them."""

    id: int
    spaces: list[Space]
    sizes: dict[Space, int]
    units: int
    unit_of: dict[Space, np.ndarray]  # unit id of every channel of every member space
    params: list[tuple[Space, ParamSlice]]
    fixups: dict[str, Fixup]
    nodes: list[str]
    frozen: str | None = None
    blocks: np.ndarray | None = None  # [n_blocks, per_block] unit ids, from a constraint
    block_mode: str | None = None  # "uniform" or "whole"
    tags: set[str] = field(default_factory=set)  # "heads": units are attention heads

    @property
    def key(self) -> str:
        """Stable name of the group, used to match plans to models."""
        tensor, axis = self.spaces[0]
        return f"{tensor}:{axis}"

    @property
    def prunable(self) -> bool:
        return self.frozen is None


@dataclass
class Analysis:
    groups: list[Group]

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    @property
    def frozen(self) -> list[Group]:
        return [g for g in self.groups if not g.prunable]


@dataclass
class _SpaceInfo:
    size: int | None
    params: list[ParamSlice] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    fixups: dict[str, Fixup] = field(default_factory=dict)
    nodes: set[str] = field(default_factory=set)
    frozen: list[str] = field(default_factory=list)
    tags: set[str] = field(default_factory=set)


def analyze(graph: Graph) -> Analysis:
    """Find every group of coupled channels in a graph whose shapes have been inferred.

    Grouped convs that could lose whole groups (rules/conv.py) but meet another grouped conv's
    equal-count constraint in the same group (AlexNet's conv4 -> conv5) are analysed again
    keeping equal counts per group, which both can honour."""
    result = _analyze(graph)
    names = {n.name: n for n in graph.nodes}
    retry = {name for g in result.groups
             if g.frozen and g.frozen.startswith("conflicting block structures")
             for name in g.nodes if name in names and whole_grouped_conv(names[name], graph)}
    retry -= set(graph.options.get(UNIFORM_GROUPED, ()))
    if retry:
        graph.options[UNIFORM_GROUPED] = set(graph.options.get(UNIFORM_GROUPED, ())) | retry
        result = _analyze(graph)
    return result


def _analyze(graph: Graph) -> Analysis:
    links: list[tuple[Space, Space, tuple | None]] = []
    info: dict[Space, _SpaceInfo] = {}
    boundary = set(graph.input_names) | set(graph.output_names)
    queue: deque[Space] = deque(_seeds(graph))
    while queue:
        space = queue.popleft()
        if space in info:
            continue
        tensor, axis = space
        shape = graph.shape(tensor)
        size = shape[axis] if shape is not None and axis < len(shape) else None
        entry = info[space] = _SpaceInfo(size)
        if size is None:
            entry.frozen.append(f"tensor '{tensor}' has an unknown size on axis {axis}")
            continue
        if tensor in boundary:
            entry.frozen.append(f"tensor '{tensor}' is a graph input or output")
        for node, port in _ports(graph, tensor, axis):
            entry.nodes.add(node.name or node.op_type)
            rule = rule_for(node)
            if rule is None:
                entry.frozen.append(f"no coupling rule for {node.op_type} (node '{node.name}')")
                continue
            effect = _couple(rule, node, port, graph)
            if effect.frozen:
                entry.frozen.append(effect.frozen)
                continue
            entry.params += effect.params
            entry.constraints += effect.constraints
            entry.fixups.update(effect.fixups)
            entry.tags |= effect.tags
            for link in effect.links:
                _follow(graph, space, link, entry, links, queue)
    return Analysis(_build_groups(info, links))


def _couple(rule, node, port: Port, graph: Graph) -> Effect:
    """A rule that cannot handle a node it was given (shapes it did not foresee) freezes the
    channels there instead of stopping the whole run: the other groups can still be pruned."""
    try:
        return rule.couple(node, port, graph)
    except Exception as exc:  # noqa: BLE001 - any rule failure has the same safe outcome
        return frozen(f"the {node.op_type} rule could not follow node '{node.name}' "
                      f"({type(exc).__name__}: {exc})")


def _seeds(graph: Graph) -> list[Space]:
    seeds = []
    for node in graph.nodes:
        rule = rule_for(node)
        if rule is not None and rule.seeds is not None:
            seeds += rule.seeds(node, graph)
    return seeds


def _ports(graph: Graph, tensor: str, axis: int):
    producer = graph.producer(tensor)
    if producer is not None:
        yield producer, Port("out", list(producer.output).index(tensor), axis)
    seen = set()
    for node in graph.consumers(tensor):
        if id(node) in seen:
            continue
        seen.add(id(node))
        for i, name in enumerate(node.input):
            if name == tensor:
                yield node, Port("in", i, axis)
        if tensor not in node.input:  # captured by a subgraph: nothing can follow it there
            yield _Opaque(node), Port("in", -1, axis)


class _Opaque:
    """Stands for a node that uses a tensor inside a subgraph; it has no rule on purpose."""

    def __init__(self, node):
        self.name, self.op_type, self.domain = node.name, f"{node.op_type}-subgraph", ""


def _follow(graph, space, link: Link, entry: _SpaceInfo, links, queue) -> None:
    other_tensor, other_axis = link.other
    if graph.const(other_tensor) is not None:  # a constant operand: slice it with the channels
        entry.params.append(ParamSlice(other_tensor, other_axis, "param", pairs=link.pairs))
        return
    links.append((space, link.other, link.pairs))
    queue.append(link.other)


def _build_groups(info: dict[Space, _SpaceInfo], links) -> list[Group]:
    g = nx.Graph()
    g.add_nodes_from(info)
    edge_pairs: dict[tuple[Space, Space], list] = {}
    for a, b, pairs in links:
        g.add_edge(a, b)
        edge_pairs.setdefault((a, b), []).append(pairs)
    _join_shared_weights(g, info, edge_pairs)
    groups = []
    components = sorted((sorted(c) for c in nx.connected_components(g)), key=lambda c: c[0])
    for members in components:
        groups.append(_make_group(len(groups), members, info, edge_pairs))
    return groups


def _join_shared_weights(g, info, edge_pairs) -> None:
    """A weight axis sliced by two spaces couples them (a weight shared by two nodes)."""
    owner: dict[tuple[str, int], Space] = {}
    for space, entry in info.items():
        for p in entry.params:
            key = (p.weight, p.axis)
            first = owner.setdefault(key, space)
            if first != space:
                g.add_edge(first, space)
                if info[first].size != entry.size or p.pairs is not None:
                    entry.frozen.append(f"weight '{p.weight}' is shared in an unsupported way")
                edge_pairs.setdefault((first, space), []).append(None)


def _make_group(gid, members, info, edge_pairs) -> Group:
    reasons = [r for s in members for r in info[s].frozen]
    sizes = {s: info[s].size for s in members}
    params, fixups, nodes, constraints = [], {}, set(), []
    seen_params = set()
    for s in members:
        entry = info[s]
        for p in entry.params:
            key = (p.weight, p.axis, p.role, p.grouped)
            if key not in seen_params:
                seen_params.add(key)
                params.append((s, p))
        fixups.update(entry.fixups)
        nodes |= entry.nodes
        constraints += entry.constraints
    group = Group(gid, members, sizes, 0, {}, params, fixups, sorted(nodes),
                  tags=set().union(*(info[s].tags for s in members)))
    if reasons:
        group.frozen = reasons[0]
        return group
    edges = [(a, b, p) for (a, b), plist in edge_pairs.items() if a in sizes for p in plist]
    try:
        group.units, group.unit_of = _units(members, sizes, edges)
    except ValueError as err:
        group.frozen = str(err)
        return group
    if group.units < 2:
        group.frozen = "fewer than two independent channels"
    _apply_constraints(group, constraints)
    return group


def _units(members, sizes, edges):
    """Join member channels linked by any mapping into units (vectorised union-find)."""
    n = sizes[members[0]]
    if all(p is None for _, _, p in edges) and all(v == n for v in sizes.values()):
        return n, {s: np.arange(n) for s in members}
    offset, total = {}, 0
    for s in members:
        offset[s] = total
        total += sizes[s]
    us, vs = [], []
    for a, b, pairs in edges:
        if pairs is None:
            if sizes[a] != sizes[b]:
                raise ValueError(f"coupled spaces {a} and {b} differ in size")
            pairs = (np.arange(sizes[a]), np.arange(sizes[b]))
        mine, theirs = (np.asarray(x, dtype=np.int64) for x in pairs)
        if mine.max(initial=-1) >= sizes[a] or theirs.max(initial=-1) >= sizes[b]:
            raise ValueError(f"channel mapping between {a} and {b} is out of range")
        us.append(mine + offset[a])
        vs.append(theirs + offset[b])
    labels = np.arange(total)
    if us:
        u, v = np.concatenate(us), np.concatenate(vs)
        while True:
            lu, lv = labels[u], labels[v]
            if np.array_equal(lu, lv):
                break
            low = np.minimum(lu, lv)
            np.minimum.at(labels, lu, low)
            np.minimum.at(labels, lv, low)
            while True:  # pointer jumping until every label is a root
                jumped = labels[labels]
                if np.array_equal(jumped, labels):
                    break
                labels = jumped
    _, unit = np.unique(labels, return_inverse=True)
    return int(unit.max()) + 1, {s: unit[offset[s]:offset[s] + sizes[s]] for s in members}


def _apply_constraints(group: Group, constraints: list[Constraint]) -> None:
    """Turn "channels come in blocks" into a block structure over the group's units."""
    for c in constraints:
        units = group.unit_of[c.space]
        if units.size % c.blocks:
            group.frozen = f"'{c.space[0]}' has {units.size} channels, not divisible by {c.blocks}"
            return
        counts = np.zeros((c.blocks, group.units), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(c.blocks), units.size // c.blocks), units), 1)
        if c.mode == "uniform" and (counts == counts[:1]).all():
            continue  # every unit spans all blocks alike (after a shuffle): nothing to enforce
        present = counts > 0
        inside_one = present.sum(axis=0) <= 1
        per_block = present.sum(axis=1)
        if not inside_one.all() or len(set(per_block.tolist())) != 1:
            group.frozen = (f"channels of '{c.space[0]}' come in {c.blocks} blocks but are "
                            f"coupled across blocks")
            return
        blocks = np.stack([np.nonzero(row)[0] for row in present])
        if group.blocks is not None and (group.block_mode != c.mode or
                                         not np.array_equal(group.blocks, blocks)):
            group.frozen = f"conflicting block structures in the group of '{c.space[0]}'"
            return
        group.blocks, group.block_mode = blocks, c.mode
