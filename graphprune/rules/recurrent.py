"""Recurrent layers (LSTM, GRU, RNN): the features they read come from a CNN or an embedding in
front of them (OCR and speech models), so those channels can go; the hidden state stays."""
from __future__ import annotations

from ..coupling import Effect, ParamSlice, Port, frozen, rule


@rule("LSTM", "GRU", "RNN")
def recurrent(node, port: Port, graph) -> Effect:
    """Input features (axis 2 of X, in either layout) own slices of W's last axis; the hidden size (outputs, R, B, states) is frozen."""
    if port.side != "in" or port.index != 0:
        return frozen(f"{node.op_type} '{node.name}' keeps its hidden size")
    if port.axis != 2:
        return frozen(f"{node.op_type} '{node.name}' mixes its sequence and batch axes")
    if graph.const(node.input[1]) is None:
        return frozen(f"{node.op_type} '{node.name}' has input weights computed at run time")
    return Effect(params=[ParamSlice(node.input[1], 2, "consumer")])
