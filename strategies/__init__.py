"""Hypothesis strategies for PyTorch persistence testing."""
