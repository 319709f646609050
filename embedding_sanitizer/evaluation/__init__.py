"""Evaluation harness: erasure, preservation, robustness and cost of the sanitizer
against the methods users would pick instead (no defence, a keyword filter and a
SAFREE-style projection), on the same encoder, prompts and run.

Entry point: ``python -m embedding_sanitizer eval`` -> :func:`embedding_sanitizer.evaluation.run.main`.
"""
