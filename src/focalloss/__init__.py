"""focalloss: exact, fast focal loss for PyTorch.

Public API:

* :func:`focal_loss` / :class:`FocalLoss`: multi-class (softmax) focal loss.
* :func:`sigmoid_focal_loss` / :class:`SigmoidFocalLoss`: binary, multi-label and detection
  (RetinaNet) focal loss.
* :func:`linear_focal_loss` / :class:`LinearFocalLoss`: focal loss fused with the output
  projection, for very large class counts (language models), without the full logits.
* :func:`varifocal_loss`, :func:`quality_focal_loss`, :func:`distribution_focal_loss` (and
  their modules), :func:`dfl_decode`: the focal losses of modern detectors (VFNet, GFL, YOLO).
* :func:`asymmetric_loss`, :func:`sigmoid_focal_loss_star`, :func:`focal_tversky_loss` (and
  their modules): the asymmetric loss (multi-label), FL* and the focal Tversky loss.
* :class:`GammaSchedule`: a sample-dependent ``gamma`` (FLSD-53) for ``focal_loss`` and
  ``sigmoid_focal_loss``.
* :func:`prior_bias`, :func:`init_prior_bias_`: classifier bias initialisation.
* :func:`class_balanced_weights`: effective-number class weights (Cui et al. 2019).
* :func:`set_value_checks`: switch off the checks that read tensor values.
"""

from ._validation import set_value_checks
from .classification import (
    AsymmetricLoss,
    FocalTverskyLoss,
    SigmoidFocalLossStar,
    asymmetric_loss,
    focal_tversky_loss,
    sigmoid_focal_loss_star,
)
from .detection import (
    DistributionFocalLoss,
    QualityFocalLoss,
    VarifocalLoss,
    dfl_decode,
    distribution_focal_loss,
    quality_focal_loss,
    varifocal_loss,
)
from .functional import focal_loss, sigmoid_focal_loss
from .linear import LinearFocalLoss, linear_focal_loss
from .modules import FocalLoss, SigmoidFocalLoss
from .priors import init_prior_bias_, prior_bias
from .schedules import GammaSchedule
from .weights import class_balanced_weights

__all__ = [
    "AsymmetricLoss",
    "DistributionFocalLoss",
    "FocalLoss",
    "FocalTverskyLoss",
    "GammaSchedule",
    "LinearFocalLoss",
    "QualityFocalLoss",
    "SigmoidFocalLoss",
    "SigmoidFocalLossStar",
    "VarifocalLoss",
    "asymmetric_loss",
    "class_balanced_weights",
    "dfl_decode",
    "distribution_focal_loss",
    "focal_loss",
    "focal_tversky_loss",
    "init_prior_bias_",
    "linear_focal_loss",
    "prior_bias",
    "quality_focal_loss",
    "set_value_checks",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_star",
    "varifocal_loss",
]
__version__ = "0.1.0"
