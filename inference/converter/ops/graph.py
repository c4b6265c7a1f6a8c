"""What every fold of a run of small nodes into one of ghostls's ops shares: the index it looks the graph up in,
applying it to every node, and the replacement node's domain. Edits a loaded onnx graph in place; never runs it.
"""

from __future__ import annotations

DOMAIN = "ai.ghostls"  # register.cc's custom op domain
MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib ops


class GraphIndex:
    """What a fold looks up in a graph: each value's producer and readers, small constants."""

    def __init__(self, graph) -> None:
        self.inits = {i.name: i for i in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.producer = {out: node for node in graph.node for out in node.output if out}
        self.readers: dict[str, list] = {}
        self.new_initializers: list = []  # what the replacements read that the graph does not hold yet
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)

    def read_once(self, name: str) -> bool:
        """Whether exactly one node, and no graph output, reads `name`."""
        return len(self.readers.get(name, [])) == 1 and name not in self.outputs

    def only_reader(self, name: str, op_type: str):
        """The one node reading `name` if it is an `op_type` and nothing else reads it, else None."""
        if self.read_once(name) and self.readers[name][0].op_type == op_type:
            return self.readers[name][0]
        return None

    def constant(self, name: str):
        """An initializer's value; None for a non-initializer or one whose data lies outside the graph (a model
        loaded without its external data: the W8A8 weights then stay as they are)."""
        from onnx import TensorProto, numpy_helper

        init = self.inits.get(name)
        if init is None or init.data_location == TensorProto.EXTERNAL:
            return None
        return numpy_helper.to_array(init)


def fold(graph, find) -> int:
    """Apply `find` (node, index -> (the node's replacement, the nodes it takes in) or None) to every node;
    returns how many runs it folded."""
    index = GraphIndex(graph)
    removed: list = []
    for node in graph.node:
        found = find(node, index)
        if found:
            replacement, taken = found
            node.CopyFrom(replacement)
            removed.append(taken)
    if not removed:
        return 0
    graph.initializer.extend(index.new_initializers)
    # A node's op type and first output name it: each value has one producer (a replacement takes over some).
    gone = {(n.op_type, n.output[0]) for run in removed for n in run}
    kept = [n for n in graph.node if (n.op_type, n.output[0]) not in gone]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for n in graph.node for name in n.input} | index.outputs
    still = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(still)
    produced = {out for n in graph.node for out in n.output} | {i.name for i in graph.input} | used
    info = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(info)
    return len(removed)


def make_node(op_type: str, inputs: list[str], outputs: list[str], name: str):
    """A node of one of ghostls's ops."""
    from onnx import helper

    return helper.make_node(op_type, inputs, outputs, name=name, domain=DOMAIN)
