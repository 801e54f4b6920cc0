"""``focalloss demo detection``: a small one-stage detector, trained with each classification
loss over seeds, evaluated with COCO AP.

The setting focal loss was made for (Lin et al. 2017): a dense head scores every anchor of
every location, and the background anchors outnumber the object anchors by more than 1000:1.

* Data (generated, nothing downloaded): 128 x 128 single-channel images with a textured
  background, one small object of one of three classes (filled "square", "ring", "cross";
  6-14 px) and up to two unlabelled filled-disc distractors drawn like the objects (hard
  negatives). Boxes are the exact pixel extent of what was drawn.
* Detector: four conv layers to a stride-4 feature map and a RetinaNet-style head (a
  classification tower and a box tower of two conv layers each), 4 square anchors per location
  (6 to 17 px, two per octave): 4096 anchors per image. Anchors with IoU >= 0.5 with an object
  are positive (and each object's best anchor), < 0.4 background, in between ignored
  (RetinaNet's rule): about 1,400 background anchors per positive anchor.
* Classification losses: a table of named configurations (``LOSS_TABLE``), all run by
  default: alpha-balanced BCE (the baseline), ``sigmoid_focal_loss`` with and without the
  prior-bias init, ``varifocal_loss`` and ``quality_focal_loss`` (IoU-aware targets). The box
  branch is the same smooth-L1 on the encoded offsets for all of them.
* Metrics: COCO AP and AP50 (pycocotools), the share of the classification loss carried by
  easy negatives (negative anchor-class pairs with ``p < 0.1``) on the validation set.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import focalloss

from ..priors import init_prior_bias_
from .common import (
    Clock,
    Metric,
    Progress,
    check_common,
    format_summary,
    keeps_thread_count,
    machine_info,
    resolve_device,
    run_grid,
    seed_list,
    summarise,
    try_figure,
    worker_position,
    write_outputs,
)
from .stats import INTERVAL_METHOD

CLASS_NAMES = ("square", "ring", "cross")
NUM_CLASSES = len(CLASS_NAMES)
STRIDE = 4
ANCHOR_SIZES = tuple(6.0 * 2 ** (k / 2) for k in range(4))  # 6.0, 8.5, 12.0, 17.0 px
POSITIVE_IOU, NEGATIVE_IOU = 0.5, 0.4
IGNORE = -1  # assigned label of anchors between the two thresholds
EASY_P = 0.1  # a negative anchor-class pair is "easy" when its p < 0.1 (p_t > 0.9)
PRIOR = 0.01


# --- data ----------------------------------------------------------------------------------


@dataclass
class DetectionSet:
    images: Tensor  # (N, 1, S, S) float32
    boxes: list[Tensor]  # per image (G, 4) float32, (x0, y0, x1, y1) pixels
    labels: list[Tensor]  # per image (G,) int64 in [0, NUM_CLASSES)


def _shape_mask(kind: int, yy: Tensor, xx: Tensor, cy: float, cx: float, size: float) -> Tensor:
    dy, dx = yy - cy, xx - cx
    half = size / 2
    if kind == 0:  # filled square
        return (dy.abs() <= half) & (dx.abs() <= half)
    if kind == 1:  # ring
        r = (dy**2 + dx**2).sqrt()
        return (r <= half) & (r >= 0.5 * half)
    if kind == 2:  # cross (plus sign), arms a third of the size thick
        arm = max(1.0, size / 6)
        return ((dy.abs() <= half) & (dx.abs() <= arm)) | ((dx.abs() <= half) & (dy.abs() <= arm))
    # distractor: filled disc
    return dy**2 + dx**2 <= half**2


def make_detection_set(
    count: int, size: int, seed: int, max_objects: int = 1, distractors: int = 2
) -> DetectionSet:
    """``count`` images of ``size`` x ``size`` pixels, deterministic from ``seed``."""
    if size < 32 or size % STRIDE:
        raise ValueError(f"size: expected a multiple of {STRIDE} >= 32, got {size}")
    g = torch.Generator().manual_seed(seed)
    coords = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = torch.empty(count, 1, size, size)
    all_boxes, all_labels = [], []

    def rand() -> float:
        return float(torch.rand((), generator=g))

    for i in range(count):
        image = torch.zeros(size, size)
        for _ in range(3):  # low-frequency background waves
            fy, fx = (rand() - 0.5) * 0.4, (rand() - 0.5) * 0.4
            image += 0.25 * torch.sin(fy * yy + fx * xx + rand() * 6.283)
        image += 0.3 * torch.randn(size, size, generator=g)
        placed: list[tuple[float, float, float]] = []
        boxes, labels = [], []
        kinds = [int(rand() * NUM_CLASSES) for _ in range(1 + int(rand() * max_objects))]
        kinds += [NUM_CLASSES] * int(rand() * (distractors + 1))  # unlabelled discs
        for kind in kinds:
            for _ in range(50):  # rejection sampling: no overlaps
                s = 6.0 + rand() * 8.0
                cy, cx = s / 2 + 2 + rand() * (size - s - 4), s / 2 + 2 + rand() * (size - s - 4)
                if all(
                    abs(cy - y) > (s + t) / 2 + 2 or abs(cx - x) > (s + t) / 2 + 2
                    for y, x, t in placed
                ):
                    break
            else:
                continue
            mask = _shape_mask(kind, yy, xx, cy, cx, s)
            if not bool(mask.any()):
                continue
            placed.append((cy, cx, s))
            image[mask] += 0.9 + 0.25 * float(torch.randn((), generator=g))
            if kind < NUM_CLASSES:
                ys, xs = mask.nonzero(as_tuple=True)
                boxes.append([xs.min().item(), ys.min().item(), xs.max() + 1.0, ys.max() + 1.0])
                labels.append(kind)
        images[i, 0] = image
        all_boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        all_labels.append(torch.tensor(labels, dtype=torch.long))
    return DetectionSet(images=images, boxes=all_boxes, labels=all_labels)


# --- boxes and anchors ---------------------------------------------------------------------


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box of ``a`` ``(N, 4)`` with every box of ``b`` ``(M, 4)``: ``(N, M)``."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    low = torch.maximum(a[:, None, :2], b[None, :, :2])
    high = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-12)


def make_anchors(
    feature_size: int, stride: int = STRIDE, sizes: tuple[float, ...] = ANCHOR_SIZES
) -> Tensor:
    """``(feature_size**2 * len(sizes), 4)`` square anchors, ordered (row, column, size)."""
    centres = (torch.arange(feature_size, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    half = torch.tensor(sizes, dtype=torch.float32) / 2
    cy, cx = cy[..., None], cx[..., None]
    boxes = torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1)
    return boxes.reshape(-1, 4)


def encode(anchors: Tensor, boxes: Tensor) -> Tensor:
    """R-CNN box offsets ``(dx, dy, log dw, log dh)`` of ``boxes`` relative to ``anchors``."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    bx, by = boxes[:, 0] + bw / 2, boxes[:, 1] + bh / 2
    return torch.stack([(bx - ax) / aw, (by - ay) / ah, (bw / aw).log(), (bh / ah).log()], -1)


def decode(anchors: Tensor, deltas: Tensor) -> Tensor:
    """The inverse of :func:`encode` (``log dw``, ``log dh`` clamped at ``log(1000 / 16)``)."""
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + aw / 2, anchors[..., 1] + ah / 2
    limit = math.log(1000.0 / 16)
    w = aw * deltas[..., 2].clamp(max=limit).exp()
    h = ah * deltas[..., 3].clamp(max=limit).exp()
    x, y = ax + deltas[..., 0] * aw, ay + deltas[..., 1] * ah
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], -1)


def assign(
    anchors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, num_classes: int = NUM_CLASSES
) -> tuple[Tensor, Tensor]:
    """RetinaNet's anchor assignment for one image.

    Returns ``(labels, matched)``: per anchor the class index of its object if its best IoU is
    ``>= 0.5`` (and for every object the anchors with its highest IoU, if that is > 0),
    ``num_classes`` (background) below 0.4, ``IGNORE`` (-1) in between; and the index of the
    matched object (0 where there is none).
    """
    count = anchors.shape[0]
    if gt_boxes.numel() == 0:
        return torch.full((count,), num_classes, dtype=torch.long), torch.zeros(
            count, dtype=torch.long
        )
    iou = box_iou(anchors, gt_boxes)  # (A, G)
    best, matched = iou.max(1)
    labels = torch.full((count,), IGNORE, dtype=torch.long)
    labels[best < NEGATIVE_IOU] = num_classes
    positive = best >= POSITIVE_IOU
    # Low-quality matches: each object keeps the anchors of its highest IoU.
    per_gt_best = iou.max(0).values
    is_best = (iou == per_gt_best[None, :]) & (per_gt_best[None, :] > 0)
    anchor_of_best, gt_of_best = is_best.nonzero(as_tuple=True)
    matched[anchor_of_best] = gt_of_best
    positive[anchor_of_best] = True
    labels[positive] = gt_labels[matched[positive]]
    return labels, matched


def quality_scores(pred_boxes: Tensor, labels: Tensor, matched_boxes: Tensor) -> Tensor:
    """The IoU-aware targets of varifocal / quality focal loss: at positive anchors the IoU of
    the predicted box with its matched object (detached), 0 elsewhere. Shapes ``(A, 4)``,
    ``(A,)`` (labels from :func:`assign`), ``(A, 4)``."""
    positive = (labels >= 0) & (labels < NUM_CLASSES)
    scores = torch.zeros(labels.shape, dtype=pred_boxes.dtype, device=pred_boxes.device)
    if bool(positive.any()):
        a, b = pred_boxes[positive].detach(), matched_boxes[positive]
        low = torch.maximum(a[:, :2], b[:, :2])
        high = torch.minimum(a[:, 2:], b[:, 2:])
        inter = (high - low).clamp(min=0).prod(-1)
        area = lambda x: (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0)  # noqa: E731
        scores[positive] = inter / (area(a) + area(b) - inter).clamp(min=1e-12)
    return scores


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, threshold: float) -> Tensor:
    """Indices kept by greedy per-class non-maximum suppression, highest score first."""
    if len(scores) == 0:
        return torch.zeros(0, dtype=torch.long)
    order = scores.argsort(descending=True, stable=True)
    boxes, labels = boxes[order], labels[order]
    # Boxes of different classes never overlap after this shift.
    shifted = boxes + labels[:, None].to(boxes.dtype) * (boxes.max() + 1)
    iou = box_iou(shifted, shifted)
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= iou[i, i + 1 :] <= threshold
    return order[keep]


# --- the detector --------------------------------------------------------------------------


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyRetinaNet(nn.Module):
    """Four conv layers to stride 4 and a RetinaNet-style head: classification and box towers
    (two 3x3 conv + ReLU each, weights N(0, 0.01), as RetinaNet's head) and 3x3 outputs for
    ``A * C`` class logits and ``A * 4`` box offsets per location.

    Example:
        >>> import torch
        >>> from focalloss.demo.detection import TinyRetinaNet
        >>> logits, deltas = TinyRetinaNet()(torch.zeros(2, 1, 64, 64))
        >>> logits.shape, deltas.shape  # (N, 16 * 16 locations * 4 anchors, C or 4)
        (torch.Size([2, 1024, 3]), torch.Size([2, 1024, 4]))
    """

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 16) -> None:
        super().__init__()
        self.num_classes, self.num_anchors = num_classes, len(ANCHOR_SIZES)
        half = max(1, width // 2)
        self.backbone = nn.Sequential(
            _conv(1, half, 2), _conv(half, half), _conv(half, width, 2), _conv(width, width)
        )

        def tower() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1),
                nn.ReLU(inplace=True),
            )

        self.cls_tower, self.box_tower = tower(), tower()
        self.cls_out = nn.Conv2d(width, self.num_anchors * num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(width, self.num_anchors * 4, 3, padding=1)
        for module in [*self.cls_tower, *self.box_tower, self.cls_out, self.box_out]:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.backbone(x)
        n = x.shape[0]
        logits = self.cls_out(self.cls_tower(features))  # (N, A * C, H, W)
        deltas = self.box_out(self.box_tower(features))
        logits = logits.permute(0, 2, 3, 1).reshape(n, -1, self.num_classes)
        deltas = deltas.permute(0, 2, 3, 1).reshape(n, -1, 4)
        return logits, deltas


# --- the classification losses -------------------------------------------------------------


@dataclass(frozen=True)
class DetectionLoss:
    """A named classification-loss configuration.

    ``function``: ``"bce"`` (alpha-balanced BCE with ``F.binary_cross_entropy_with_logits``)
    or the name of a focalloss function, called as ``function(logits (M, C), labels (M,)
    [, scores (M,)], **kwargs, reduction=..., normalizer=num_pos)`` with class-index targets
    (``C`` = background) and, for IoU-aware losses (``quality=True``), the score of
    :func:`quality_scores`.
    """

    name: str
    description: str
    function: str
    kwargs: dict[str, object] = field(default_factory=dict)
    prior_init: bool = True
    quality: bool = False

    def __call__(
        self, logits: Tensor, labels: Tensor, scores: Tensor, num_pos: float, reduction: str
    ) -> Tensor:
        """The loss of non-ignored anchors: ``"mean"`` divides by ``num_pos`` (>= 1, as
        RetinaNet), ``"none"`` is what the function returns (elementwise ``(M, C)``, or one
        value per anchor for quality focal loss)."""
        if self.function == "bce":
            alpha = float(self.kwargs["alpha"])  # type: ignore[arg-type]
            onehot = F.one_hot(labels, logits.shape[1] + 1)[:, :-1].to(logits.dtype)
            weight = alpha * onehot + (1 - alpha) * (1 - onehot)
            loss = F.binary_cross_entropy_with_logits(logits, onehot, weight, reduction="none")
            return loss if reduction == "none" else loss.sum() / max(1.0, num_pos)
        fn = getattr(focalloss, self.function)
        args = (logits, labels, scores) if self.quality else (logits, labels)
        if reduction == "none":
            return fn(*args, **self.kwargs, reduction="none")
        return fn(*args, **self.kwargs, reduction="mean", normalizer=float(num_pos))

    def elementwise(self, logits: Tensor, labels: Tensor, scores: Tensor) -> Tensor:
        """The loss of every anchor-class pair, ``(M, C)``. A function that sums over the
        classes of a position (quality focal loss) is evaluated with each pair as a position
        of its own: ``(M * C, 1)`` logits and the dense scores ``onehot(labels) * scores``."""
        out = self(logits, labels, scores, 1.0, "none")
        if out.shape == logits.shape:
            return out
        onehot = F.one_hot(labels, logits.shape[1] + 1)[:, :-1].to(logits.dtype)
        dense = onehot * scores[:, None].to(logits.dtype)
        fn = getattr(focalloss, self.function)
        pairs = fn(logits.reshape(-1, 1), dense.reshape(-1, 1), **self.kwargs, reduction="none")
        return pairs.reshape(logits.shape)


#: Every configuration the demo knows (all run by default); the first is the baseline.
LOSS_TABLE: tuple[DetectionLoss, ...] = (
    DetectionLoss(
        "bce",
        "alpha-balanced BCE (alpha 0.75, Lin et al.'s best for CE), prior-bias init",
        "bce",
        {"alpha": 0.75},
    ),
    DetectionLoss(
        "focal",
        "sigmoid_focal_loss (gamma 2, alpha 0.25), prior-bias init",
        "sigmoid_focal_loss",
        {"gamma": 2.0, "alpha": 0.25},
    ),
    DetectionLoss(
        "focal_no_prior",
        "sigmoid_focal_loss (gamma 2, alpha 0.25), classifier bias 0 (no prior init)",
        "sigmoid_focal_loss",
        {"gamma": 2.0, "alpha": 0.25},
        prior_init=False,
    ),
    DetectionLoss(
        "vfl",
        "varifocal_loss (alpha 0.75, gamma 2, IoU-weighted; IoU-aware target), prior-bias init",
        "varifocal_loss",
        {"alpha": 0.75, "gamma": 2.0, "iou_weighted": True},
        quality=True,
    ),
    DetectionLoss(
        "qfl",
        "quality_focal_loss (beta 2; IoU-aware target), prior-bias init",
        "quality_focal_loss",
        {"beta": 2.0},
        quality=True,
    ),
)
LOSSES = tuple(entry.name for entry in LOSS_TABLE)


def loss_entry(name: str) -> DetectionLoss:
    for entry in LOSS_TABLE:
        if entry.name == name:
            return entry
    raise ValueError(f"losses: expected names from {LOSSES}, got {name!r}")


# --- training and evaluation ---------------------------------------------------------------


@dataclass
class DetectionConfig:
    """The detection demo's settings."""

    seeds: int = 3
    seed: int = 0
    steps: int = 1000
    batch_size: int = 16
    image_size: int = 128
    width: int = 16
    train_images: int = 1024
    val_images: int = 128
    lr: float = 1e-3
    losses: tuple[str, ...] = LOSSES
    device: str = "cpu"
    out: str = "focalloss-demo/detection"
    threads: int | None = 1  # torch threads per process; see the module docstring of .common
    jobs: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))  # processes
    examples: int = 3  # validation images in the figure

    @classmethod
    def quick(cls, **overrides: object) -> DetectionConfig:
        values: dict[str, object] = dict(
            jobs=1,
            examples=1,
            seeds=2,
            steps=4,
            batch_size=4,
            image_size=48,
            width=8,
            train_images=8,
            val_images=4,
        )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


@dataclass
class _Targets:
    labels: Tensor  # (N, A)
    matched: Tensor  # (N, A, 4) boxes of the matched objects (zeros where none)


def build_targets(data: DetectionSet, anchors: Tensor) -> _Targets:
    labels, matched = [], []
    for boxes, classes in zip(data.boxes, data.labels, strict=True):
        lab, idx = assign(anchors, boxes, classes)
        labels.append(lab)
        matched.append(boxes[idx] if len(boxes) else torch.zeros(len(anchors), 4))
    return _Targets(torch.stack(labels), torch.stack(matched))


def imbalance(targets: _Targets) -> dict[str, float]:
    """Negatives per positive: anchors (background / positive anchors) and anchor-class pairs
    (the elements the sigmoid loss sees)."""
    labels = targets.labels
    positive = int(((labels >= 0) & (labels < NUM_CLASSES)).sum())
    background = int((labels == NUM_CLASSES).sum())
    elements_neg = background * NUM_CLASSES + positive * (NUM_CLASSES - 1)
    return {
        "positive_anchors_per_image": positive / labels.shape[0],
        "negatives_per_positive_anchor": background / max(1, positive),
        "negatives_per_positive_element": elements_neg / max(1, positive),
        "ignored_anchor_share": float((labels == IGNORE).double().mean()),
    }


def _loss_step(
    entry: DetectionLoss,
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    labels: Tensor,
    matched: Tensor,
    reduction: str = "mean",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Classification and box losses of a batch; also the kept labels and logits."""
    keep = labels >= 0
    positive = keep & (labels < NUM_CLASSES)
    num_pos = float(positive.sum())
    anchors_b = anchors.expand(labels.shape[0], -1, -1)
    scores = torch.zeros(labels.shape, device=logits.device)
    if entry.quality:
        scores = quality_scores(
            decode(anchors_b, deltas.detach()).reshape(-1, 4),
            labels.reshape(-1),
            matched.reshape(-1, 4),
        ).reshape(labels.shape)
    cls = entry(logits[keep], labels[keep], scores[keep], num_pos, reduction)
    if bool(positive.any()):
        target = encode(anchors_b[positive], matched[positive])
        box = F.smooth_l1_loss(deltas[positive], target, beta=0.1, reduction="sum")
        box = box / max(1.0, num_pos)
    else:
        box = deltas.sum() * 0.0
    return cls, box, labels[keep], logits[keep]


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Tensor,
    anchors: Tensor,
    device: torch.device,
    score_threshold: float = 0.05,
    candidates: int = 1000,
    max_detections: int = 100,
    nms_threshold: float = 0.5,
) -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor, Tensor]:
    """Per image boxes, scores and labels (RetinaNet's post-processing), and the raw logits
    and offsets."""
    model.eval()
    outputs = [model(x.to(device)) for x in images.split(32)]
    model.train()
    logits = torch.cat([o[0].cpu() for o in outputs])
    deltas = torch.cat([o[1].cpu() for o in outputs])
    size = images.shape[-1]
    all_boxes, all_scores, all_labels = [], [], []
    for n in range(len(images)):
        probs = logits[n].sigmoid().flatten()
        candidate = (probs > score_threshold).nonzero().squeeze(1)
        top = probs[candidate].topk(min(candidates, len(candidate))).indices
        candidate = candidate[top]
        anchor_index = candidate // NUM_CLASSES
        labels = candidate % NUM_CLASSES
        boxes = decode(anchors[anchor_index], deltas[n, anchor_index]).clamp(0, size)
        scores = probs[candidate]
        keep = batched_nms(boxes, scores, labels, nms_threshold)[:max_detections]
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
        all_labels.append(labels[keep])
    return all_boxes, all_scores, all_labels, logits, deltas


def easy_negative_share(
    entry: DetectionLoss,
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    targets: _Targets,
) -> dict[str, float]:
    """On a set, each loss in its own units: the share of the classification loss carried by
    easy negatives (negative anchor-class pairs with ``p < 0.1``), by all negatives, and the
    share of the pairs that are easy negatives."""
    with torch.no_grad():
        keep = targets.labels >= 0
        labels, kept = targets.labels[keep], logits[keep]
        scores = _kept_scores(entry, deltas, anchors, targets)
        cls = entry.elementwise(kept, labels, scores)
        onehot = F.one_hot(labels, NUM_CLASSES + 1)[:, :NUM_CLASSES].bool()
        negative = ~onehot
        easy = negative & (kept.sigmoid() < EASY_P)
        total = cls.sum().clamp(min=1e-30)
        return {
            "easy_negative_loss_share": float(cls[easy].sum() / total),
            "negative_loss_share": float(cls[negative].sum() / total),
            "easy_negative_pair_share": float(easy.double().mean()),
        }


def _kept_scores(
    entry: DetectionLoss, deltas: Tensor, anchors: Tensor, targets: _Targets
) -> Tensor:
    keep = targets.labels >= 0
    if not entry.quality:
        return torch.zeros(int(keep.sum()))
    anchors_b = anchors.expand(targets.labels.shape[0], -1, -1)
    scores = quality_scores(
        decode(anchors_b, deltas).reshape(-1, 4),
        targets.labels.reshape(-1),
        targets.matched.reshape(-1, 4),
    ).reshape(targets.labels.shape)
    return scores[keep]


def train_one(
    entry: DetectionLoss,
    config: DetectionConfig,
    seed: int,
    train: DetectionSet,
    train_targets: _Targets,
    val: DetectionSet,
    val_targets: _Targets,
    anchors: Tensor,
    initial_state: dict[str, Tensor],
    device: torch.device,
) -> tuple[dict[str, float], dict[str, list[float]], tuple]:
    model = TinyRetinaNet(NUM_CLASSES, config.width).to(device)
    model.load_state_dict(initial_state)
    with torch.no_grad():
        if entry.prior_init:
            init_prior_bias_(model.cls_out.bias, PRIOR)
        else:
            model.cls_out.bias.zero_()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    order = torch.Generator().manual_seed(seed + 1)
    anchors_d = anchors.to(device)
    curve: dict[str, list[float]] = {"cls_loss": [], "box_loss": []}
    bar = Progress(config.steps, f"seed {seed} {entry.name}", position=worker_position())
    clock = Clock()
    for _ in range(config.steps):
        index = torch.randint(0, len(train.images), (config.batch_size,), generator=order)
        x = train.images[index].to(device)
        labels = train_targets.labels[index].to(device)
        matched = train_targets.matched[index].to(device)
        logits, deltas = model(x)
        cls, box, _, _ = _loss_step(entry, logits, deltas, anchors_d, labels, matched)
        optimizer.zero_grad(set_to_none=True)
        (cls + box).backward()
        optimizer.step()
        curve["cls_loss"].append(cls.item())
        curve["box_loss"].append(box.item())
        bar.update({"cls": f"{curve['cls_loss'][-1]:.4f}", "box": f"{box.item():.4f}"})
    bar.close()
    seconds = clock()
    boxes, scores, labels, logits, deltas = predict(model, val.images, anchors, device)
    from .coco import coco_ap

    size = config.image_size
    values: dict[str, float] = coco_ap(
        val.boxes, val.labels, boxes, scores, labels, CLASS_NAMES, (size, size)
    )
    values.update(easy_negative_share(entry, logits, deltas, anchors, val_targets))
    values["final_cls_loss"] = curve["cls_loss"][-1]
    values["seconds"] = seconds
    return values, curve, (boxes, scores, labels)


@functools.lru_cache(maxsize=1)
def _data(
    train_images: int, val_images: int, size: int, seed: int
) -> tuple[DetectionSet, _Targets, DetectionSet, _Targets]:
    anchors = make_anchors(size // STRIDE)
    train = make_detection_set(train_images, size, seed)
    val = make_detection_set(val_images, size, seed + 10_000)
    return train, build_targets(train, anchors), val, build_targets(val, anchors)


def run_one(config: DetectionConfig, seed: int, name: str) -> dict[str, object]:
    """One loss on one seed: the data, initial weights (all but the classifier bias, which the
    entry sets) and batch order come from ``seed``; runs in the main process or a worker."""
    device = torch.device(config.device)
    train, train_targets, val, val_targets = _data(
        config.train_images, config.val_images, config.image_size, seed
    )
    anchors = make_anchors(config.image_size // STRIDE)
    torch.manual_seed(seed)
    initial = TinyRetinaNet(NUM_CLASSES, config.width).state_dict()
    values, curve, pred = train_one(
        loss_entry(name),
        config,
        seed,
        train,
        train_targets,
        val,
        val_targets,
        anchors,
        initial,
        device,
    )
    return {
        "values": values,
        "curve": curve,
        "pred": pred if seed == config.seed else None,
        "data": imbalance(train_targets),
    }


def metric_list() -> list[Metric]:
    return [
        Metric("ap", "AP", headline=True),
        Metric("ap50", "AP50", headline=True),
        Metric("ap75", "AP75"),
        Metric("easy_negative_loss_share", "easy-negative loss share", higher_is_better=None),
        Metric("negative_loss_share", "negative loss share", higher_is_better=None),
    ]


def check_config(config: DetectionConfig) -> None:
    check_common(
        "detection", config.seeds, config.seed, config.losses, LOSSES, config.jobs, config.device
    )
    for name in config.losses:
        loss_entry(name)
    for key in ("steps", "batch_size", "width", "train_images", "val_images"):
        if getattr(config, key) < 1:
            raise ValueError(f"{key}: expected >= 1, got {getattr(config, key)}")
    if config.image_size < 32 or config.image_size % STRIDE:
        raise ValueError(
            f"image_size: expected a multiple of {STRIDE} >= 32, got {config.image_size}"
        )


@keeps_thread_count
def run_detection(
    config: DetectionConfig,
    print_fn: Callable[[str], None] = print,
    command: str | None = None,
) -> dict[str, object]:
    """Run every loss on every seed; print and write the summary; return the metrics."""
    check_config(config)
    from .coco import _pycocotools

    _pycocotools()  # a clear error before training when the extra is missing
    device = resolve_device(config.device, config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    machine = machine_info(device)
    seeds = seed_list(config.seed, config.seeds)
    entries = [loss_entry(name) for name in config.losses]
    anchors = make_anchors(config.image_size // STRIDE)
    items = [(seed, e.name) for seed in seeds for e in entries]
    results = run_grid(
        functools.partial(run_one, config),
        items,
        config.jobs,
        config.threads,
        "detection runs",
        lambda item, r: {
            "seed": str(item[0]),
            "loss": str(item[1]),
            "AP": f"{r['values']['ap']:.3f}",  # type: ignore[index]
        },
    )
    per_seed: dict[str, list[dict[str, float]]] = {e.name: [] for e in entries}
    curves: dict[str, list[dict[str, object]]] = {e.name: [] for e in entries}
    data_stats = []
    predictions = {}
    for (seed, name), result in zip(items, results, strict=True):
        per_seed[name].append({"seed": seed, **result["values"]})  # type: ignore[dict-item]
        curves[name].append({"seed": seed, **result["curve"]})  # type: ignore[dict-item]
        if name == entries[0].name:
            data_stats.append({"seed": seed, **result["data"]})  # type: ignore[dict-item]
        if seed == seeds[0]:
            predictions[name] = result["pred"]
    first = {
        "val": make_detection_set(config.val_images, config.image_size, seeds[0] + 10_000),
        "predictions": predictions,
    }

    spec = metric_list()
    baseline = entries[0].name
    summary, differences, sentences = summarise(per_seed, baseline, spec)
    ratio = [d["negatives_per_positive_anchor"] for d in data_stats]
    ratio_el = [d["negatives_per_positive_element"] for d in data_stats]
    header = "\n".join(
        [
            f"detection: {config.train_images} train / {config.val_images} val images of "
            f"{config.image_size}x{config.image_size} per seed, {config.steps} steps of batch "
            f"{config.batch_size} per loss; {len(anchors)} anchors per image; background "
            f"anchors per positive anchor {min(ratio):.0f}-{max(ratio):.0f} "
            f"(negative per positive anchor-class pair {min(ratio_el):.0f}-{max(ratio_el):.0f})",
            *(f"  {e.name}: {e.description}" for e in entries),
        ]
    )
    table = "\n".join(
        [header, format_summary(summary, differences, baseline, spec, len(seeds)), "", *sentences]
    )
    print_fn(table)
    wall = clock()
    metrics: dict[str, object] = {
        "demo": "detection",
        "command": command,
        "config": {**asdict(config), "losses": list(config.losses)},
        "loss_table": {
            e.name: {
                "description": e.description,
                "function": e.function,
                "kwargs": e.kwargs,
                "prior_init": e.prior_init,
            }
            for e in LOSS_TABLE
        },
        "machine": machine,
        "wall_seconds": wall,
        "seeds": seeds,
        "losses": [e.name for e in entries],
        "baseline": baseline,
        "interval_method": INTERVAL_METHOD,
        "class_names": list(CLASS_NAMES),
        "anchors_per_image": len(anchors),
        "data": data_stats,
        "per_seed": per_seed,
        "summary": summary,
        "differences": differences,
        "sentences": sentences,
        "curves": curves,
    }
    figure = out / "detection.png"

    def draw() -> None:
        from .plots import detection_figure

        detection_figure(metrics, first["val"], first["predictions"], figure)  # type: ignore[arg-type]

    if try_figure(draw, figure, print_fn):
        metrics["figure"] = str(figure)
    write_outputs(out, metrics, table)
    print_fn(f"wrote {out / 'metrics.json'}, {out / 'table.txt'}, {figure} in {wall:.0f} s")
    return metrics
