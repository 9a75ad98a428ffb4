"""Which of a model's ops the interpreter hands to a delegate (XNNPACK on a CPU) and which run
on its builtin kernels, read from the interpreter's own node list after it applied the delegate.

The runtimes' Python API lists the nodes of the first subgraph only. In an edgekt export that is
the `distill` signature (the converter orders signatures by name): the same layers, forward and
backward, as `train`, with the soft-label loss, so its report is the train step's.
"""

from __future__ import annotations

from collections import Counter

DELEGATE = "DELEGATE"


def delegation(interpreter) -> dict | None:
    """How the ops of the interpreter's first subgraph run (call it after `allocate_tensors()`,
    where both runtimes apply their default delegate).

    Returns:
      {"subgraph": the signature of that subgraph (or None), "ops": model ops, "delegated": ops
      run by a delegate, "partitions": delegate kernels they form, "builtin": {op name: count}
      of the ops left to the builtin kernels}; None where the runtime exposes no node list.
    """
    native = getattr(interpreter, "_interpreter", None)
    if native is None or not all(hasattr(native, m) for m in ("NumNodes", "NodeName", "NodeInputs", "NodeOutputs")):
        return None
    n = native.NumNodes()
    names = [native.NodeName(i) for i in range(n)]
    producer = {}
    for i in range(n):
        if names[i] != DELEGATE:
            for t in native.NodeOutputs(i):
                producer[int(t)] = i
    delegated: set[int] = set()
    partitions = 0
    for i in range(n):
        if names[i] != DELEGATE:
            continue
        partitions += 1
        # A delegate node replaces the ops between its inputs and its outputs: walk back from
        # its outputs to its inputs.
        inputs = {int(t) for t in native.NodeInputs(i)}
        stack = [int(t) for t in native.NodeOutputs(i)]
        while stack:
            t = stack.pop()
            if t in inputs or t not in producer or producer[t] in delegated:
                continue
            delegated.add(producer[t])
            stack.extend(int(u) for u in native.NodeInputs(producer[t]) if int(u) >= 0)
    ops = [i for i in range(n) if names[i] != DELEGATE]
    subgraph = None
    try:
        for key in interpreter.get_signature_list():
            if native.GetSubgraphIndexFromSignature(key) == 0:
                subgraph = key
    except (AttributeError, ValueError, RuntimeError):
        pass
    return {"subgraph": subgraph, "ops": len(ops), "delegated": sum(i in delegated for i in ops),
            "partitions": partitions, "builtin": dict(sorted(Counter(names[i] for i in ops if i not in delegated).items()))}
