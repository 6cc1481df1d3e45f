"""Evaluation: batched greedy generation and task metrics, base model vs adapter."""
