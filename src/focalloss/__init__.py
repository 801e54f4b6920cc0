"""focalloss: exact, fast focal loss for PyTorch."""

from ._validation import set_value_checks
from .functional import focal_loss

__all__ = ["focal_loss", "set_value_checks"]
__version__ = "0.1.0"
