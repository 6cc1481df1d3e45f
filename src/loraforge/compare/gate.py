"""`--gate` expressions: `accuracy>=baseline-0.01 and win_rate>=0.5`, evaluated safely (no eval()).

A metric name is the candidate's value; `baseline` on the right of a comparison is the baseline's value of
the metric on its left; `baseline.NAME` and `candidate.NAME` name a side explicitly. Numbers, + - * /,
comparisons, `and`, `or`, `not` and parentheses are allowed; nothing else.
"""

import ast
import operator
from typing import Any

from loraforge.errors import LoraforgeError

KNOWN_METRICS = {
    "accuracy",
    "macro_f1",
    "invalid_rate",
    "agreement",
    "valid_json_rate",
    "schema_valid_rate",
    "field_accuracy",
    "exact_match",
    "rouge_l",
    "win_rate",
    "error_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "cost_per_1k_usd",
}
_COMPARE = {
    ast.GtE: operator.ge,
    ast.Gt: operator.gt,
    ast.LtE: operator.le,
    ast.Lt: operator.lt,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def parse_gate(expression: str) -> ast.Expression:
    """Parse and check a gate; raises LoraforgeError naming what is wrong (before any work is done)."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise LoraforgeError(f"--gate {expression!r} is not a valid expression: {exc.msg}") from exc
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in KNOWN_METRICS | {"baseline", "candidate"}:
            known = ", ".join(sorted(KNOWN_METRICS))
            raise LoraforgeError(f"--gate: unknown metric {node.id!r} (known: {known})")
        if isinstance(node, ast.Attribute) and node.attr not in KNOWN_METRICS:
            raise LoraforgeError(f"--gate: unknown metric {node.attr!r}")
        allowed = (
            ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
            ast.Compare, ast.BinOp, ast.Name, ast.Attribute, ast.Load, ast.Constant,
            *_COMPARE, *_ARITH,
        )  # fmt: skip
        if not isinstance(node, allowed) or (
            isinstance(node, ast.Constant) and not isinstance(node.value, int | float)
        ):
            raise LoraforgeError(f"--gate: {ast.unparse(node)!r} is not allowed in a gate")
    return tree


def evaluate_gate(expression: str, candidate: dict[str, float], baseline: dict[str, float]) -> bool:
    """True when the gate holds; LoraforgeError when it uses a metric this comparison did not measure."""
    tree = parse_gate(expression)

    def value(side: dict[str, float], name: str, which: str) -> float:
        if name not in side:
            raise LoraforgeError(f"--gate uses {which} {name}, which this comparison did not measure")
        return side[name]

    def ev(node: ast.AST, left_metric: str | None = None) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BoolOp):
            results = [bool(ev(v)) for v in node.values]
            return all(results) if isinstance(node.op, ast.And) else any(results)
        if isinstance(node, ast.UnaryOp):
            operand = ev(node.operand, left_metric)
            return (
                not operand
                if isinstance(node.op, ast.Not)
                else (-operand if isinstance(node.op, ast.USub) else operand)
            )
        if isinstance(node, ast.Compare):
            metric = node.left.id if isinstance(node.left, ast.Name) else None
            left = ev(node.left)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = ev(right_node, metric)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.BinOp):
            return _ARITH[type(node.op)](ev(node.left, left_metric), ev(node.right, left_metric))
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Attribute):
            side = node.value.id if isinstance(node.value, ast.Name) else None
            if side not in ("baseline", "candidate"):
                raise LoraforgeError(f"--gate: {ast.unparse(node)!r}: use baseline.NAME or candidate.NAME")
            return value(baseline if side == "baseline" else candidate, node.attr, side)
        if isinstance(node, ast.Name):
            if node.id == "baseline":
                if left_metric is None:
                    raise LoraforgeError(
                        "--gate: a bare `baseline` must be compared with a metric on its left"
                    )
                return value(baseline, left_metric, "baseline")
            if node.id == "candidate":
                raise LoraforgeError("--gate: use candidate.NAME or the bare metric name")
            return value(candidate, node.id, "candidate")
        raise LoraforgeError(f"--gate: {ast.unparse(node)!r} is not allowed")  # parse_gate prevents this

    return bool(ev(tree))
