"""focalloss: exact, fast focal loss for PyTorch.

Public API:

* :func:`focal_loss` / :class:`FocalLoss`: multi-class (softmax) focal loss.
* :func:`set_value_checks`: switch off the checks that read tensor values.
"""

from ._validation import set_value_checks
from .functional import focal_loss
from .modules import FocalLoss

__all__ = ["FocalLoss", "focal_loss", "set_value_checks"]
__version__ = "0.1.0"
