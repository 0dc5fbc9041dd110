"""Quantization methods: one class per method, selected by conf/method/<name>.yaml."""

from quantlab.methods.base import Method

__all__ = ["Method"]
