"""quantlab: a command-line lab for neural-network quantization research."""

__version__ = "0.1.0"
