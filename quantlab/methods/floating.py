"""The full-precision reference ("REF (float)" in the MD paper's tables)."""

from __future__ import annotations

from torch import nn

from quantlab.methods.base import Method


class Float(Method):
    """Plain training of the float network; export is the network itself, unchanged."""

    def export(self, model: nn.Module) -> nn.Module:
        return model
