"""Quantizers, projections and their straight-through variants."""
