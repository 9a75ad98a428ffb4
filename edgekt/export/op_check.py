"""Lists the operators of a `.tflite` flatbuffer and checks that all are TFLite builtins."""

from __future__ import annotations

import collections

from tensorflow.lite.python import schema_py_generated as schema

from edgekt.errors import UserError

_BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


class NonBuiltinOpsError(UserError):
    """The model uses custom or Flex ops that board runtimes (no Flex delegate) cannot run."""


def list_ops(tflite_model: bytes) -> collections.Counter:
    """Counts each operator of every subgraph by name (custom ops by their custom code,
    Flex ops appear as e.g. `FlexConv2DBackpropFilter`)."""
    model = schema.Model.GetRootAsModel(tflite_model, 0)
    names = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            names.append(custom.decode() if isinstance(custom, bytes) else str(custom))
        else:
            names.append(_BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}"))
    counts: collections.Counter = collections.Counter()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for j in range(graph.OperatorsLength()):
            counts[names[graph.Operators(j).OpcodeIndex()]] += 1
    return counts


def non_builtin_ops(tflite_model: bytes) -> list[str]:
    """Names of the ops that are not TFLite builtins (custom or Flex)."""
    return sorted(op for op in list_ops(tflite_model) if op not in _BUILTIN_NAMES.values())


def check_builtin_only(tflite_model: bytes, name: str = "model") -> collections.Counter:
    """Returns the op counts; raises if any op is not a builtin.

    Raises:
      NonBuiltinOpsError: lists the offending ops.
    """
    counts = list_ops(tflite_model)
    bad = non_builtin_ops(tflite_model)
    if bad:
        raise NonBuiltinOpsError(f"{name} uses ops that are not TFLite builtins and cannot run on tflite-runtime "
                                 f"without the Flex delegate: {', '.join(bad)}")
    return counts
