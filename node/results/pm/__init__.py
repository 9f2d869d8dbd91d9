"""Parametric Maps of a routine's attribution (explainability) map."""
