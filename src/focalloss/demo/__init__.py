"""``focalloss demo``: train a small U-Net with cross-entropy and with focal loss, compare."""

from .run import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
