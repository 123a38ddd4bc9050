"""The filter language of sweep files: small, safe boolean expressions over a point's values."""

from __future__ import annotations

import ast
import operator
from typing import Any, Callable

_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}


class Expr:
    """A small, safe boolean expression over point values (``out_channels >= in_channels``).

    Only names, numbers, strings, lists/tuples of constants, arithmetic, comparisons and
    ``and``/``or``/``not`` are allowed: sweep files are data, never code.
    """

    def __init__(self, source: str, names: set[str]):
        self.source = source
        try:
            self._tree = ast.parse(source, mode="eval")
        except SyntaxError as exc:
            raise ValueError(f"cannot parse {source!r}: {exc.msg}") from None
        for node in ast.walk(self._tree):
            if isinstance(node, ast.Name):
                if node.id not in names:
                    raise ValueError(f"{source!r} uses unknown name {node.id!r}; "
                                     f"names are {', '.join(sorted(names))}")
            elif not isinstance(node, (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp,
                                       ast.Not, ast.USub, ast.BinOp, ast.Compare, ast.Constant,
                                       ast.Load, ast.Tuple, ast.List, *_COMPARE, *_BINARY)):
                raise ValueError(f"{source!r}: {type(node).__name__} is not allowed in a filter "
                                 "(use names, numbers, strings, arithmetic, comparisons, and/or/not)")

    def __call__(self, values: dict[str, Any]) -> bool:
        try:
            return bool(self._eval(self._tree.body, values))
        except (TypeError, ZeroDivisionError):  # "size" > 3, x / 0: no match
            return False

    def _eval(self, node: ast.AST, values: dict[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return values.get(node.id)
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(self._eval(e, values) for e in node.elts)
        if isinstance(node, ast.BoolOp):
            results = (self._eval(v, values) for v in node.values)
            return all(results) if isinstance(node.op, ast.And) else any(results)
        if isinstance(node, ast.UnaryOp):
            v = self._eval(node.operand, values)
            return (not v) if isinstance(node.op, ast.Not) else -v
        # A parameter this point's layer lacks is None: arithmetic on it stays None and every
        # comparison with it is false, so other parts of an ``or`` still decide.
        if isinstance(node, ast.BinOp):
            left, right = self._eval(node.left, values), self._eval(node.right, values)
            return None if left is None or right is None else _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, values)
            for op, comp in zip(node.ops, node.comparators, strict=True):
                right = self._eval(comp, values)
                if left is None or right is None or not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        raise ValueError(f"{self.source!r}: unsupported expression")  # unreachable after __init__
