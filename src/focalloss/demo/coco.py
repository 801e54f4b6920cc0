"""The bridge to ``pycocotools``: COCO AP, the evaluator detection papers report.

Boxes are ``(x0, y0, x1, y1)`` in pixels (``x1 - x0`` is the width, no ``+1``), labels are
0-based class indices; COCO's ``[x, y, w, h]`` boxes and 1-based category ids are made here.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

from torch import Tensor

INSTALL_HINT = 'pip install "focalloss[demo]" (from a checkout: pip install -e ".[demo]")'


def _pycocotools() -> tuple[type, type]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:
        from ..cli import MissingExtraError

        raise MissingExtraError(
            f"focalloss demo detection needs pycocotools, which the demo extra installs: "
            f"{INSTALL_HINT}",
            name="pycocotools",
        ) from error
    return COCO, COCOeval


def _xywh(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def coco_ap(
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    det_boxes: Sequence[Tensor],
    det_scores: Sequence[Tensor],
    det_labels: Sequence[Tensor],
    class_names: Sequence[str],
    image_size: tuple[int, int] = (0, 0),
) -> dict[str, float]:
    """COCO box AP (IoU 0.50:0.95), AP50 and AP75 of per-image detections.

    Args:
        gt_boxes, gt_labels: per image, ``(G, 4)`` boxes and ``(G,)`` class indices.
        det_boxes, det_scores, det_labels: per image, ``(D, 4)``, ``(D,)``, ``(D,)``.
        class_names: one name per class index.
        image_size: ``(height, width)`` recorded in the COCO image entries.

    Returns:
        ``{"ap", "ap50", "ap75"}`` as pycocotools' ``COCOeval.stats[0:3]`` (0 when there are no
        detections at all; -1 where pycocotools reports -1, i.e. no ground truth).
    """
    lengths = {len(gt_boxes), len(gt_labels), len(det_boxes), len(det_scores), len(det_labels)}
    if len(lengths) != 1:
        raise ValueError(
            "gt_boxes, gt_labels, det_boxes, det_scores, det_labels: expected one entry per "
            f"image each, got lengths {sorted(lengths)}"
        )
    COCO, COCOeval = _pycocotools()
    height, width = image_size
    images = [{"id": i + 1, "height": height, "width": width} for i in range(len(gt_boxes))]
    annotations = []
    for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
        for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
            xywh = _xywh(box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(class_names)]
    detections = []
    for i, (boxes, scores, labels) in enumerate(
        zip(det_boxes, det_scores, det_labels, strict=True)
    ):
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            detections.append(
                {
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": _xywh(box),
                    "score": float(score),
                }
            )
    if not detections:  # pycocotools' loadRes cannot take an empty list
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        gt.createIndex()
        dt = gt.loadRes(detections)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {"ap": float(stats[0]), "ap50": float(stats[1]), "ap75": float(stats[2])}
