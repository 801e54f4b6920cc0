"""focalloss demo detection: box geometry, anchor assignment and IoU-aware targets on hand-made
cases, the pycocotools bridge on a case with a known AP, the loss table (entries that join when
varifocal / quality focal loss are in focalloss), and the --quick path end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import focalloss
from focalloss.cli import main
from focalloss.demo import detection as det

pytest.importorskip("pycocotools")

C = det.NUM_CLASSES  # background index


def test_box_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    expected = torch.tensor([[1.0, 50 / 150, 0.0], [25 / 175, 50 / 150, 0.0]])
    torch.testing.assert_close(det.box_iou(a, b), expected)


def test_anchor_assignment_hand_made():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 80/120 = 0.667 with object 0: positive
            [5.0, 0.0, 15.0, 10.0],  # 70/130 = 0.538: positive
            [20.0, 20.0, 30.0, 30.0],  # 16/100 = 0.16 with object 1, its best: positive
            [0.0, 0.0, 4.0, 4.0],  # 8/108 = 0.074: background
            [1.0, 0.0, 11.0, 10.0],  # 90/110 = 0.818: positive
            [6.0, 0.0, 16.0, 10.0],  # 60/140 = 0.429: between 0.4 and 0.5, ignored
        ]
    )
    boxes = torch.tensor([[2.0, 0.0, 12.0, 10.0], [21.0, 21.0, 25.0, 25.0]])
    labels, matched = det.assign(anchors, boxes, torch.tensor([1, 2]))
    assert labels.tolist() == [1, 1, 2, C, 1, det.IGNORE]
    assert matched[[0, 1, 2, 4]].tolist() == [0, 0, 1, 0]
    # No objects: everything is background.
    labels, _ = det.assign(anchors, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert labels.tolist() == [C] * 6


def test_assignment_keeps_every_tied_best_anchor():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]])
    box = torch.tensor([[7.0, 0.0, 13.0, 4.0]])  # 12/112 with both anchors
    labels, matched = det.assign(anchors, box, torch.tensor([0]))
    assert labels.tolist() == [0, 0] and matched.tolist() == [0, 0]


def test_box_encoding_by_hand_and_round_trip():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor([[2.0, 0.0, 12.0, 10.0], [0.0, 0.0, 20.0, 5.0]])
    expected = torch.tensor([[0.2, 0.0, 0.0, 0.0], [0.5, -0.25, math.log(2), math.log(0.5)]])
    torch.testing.assert_close(det.encode(anchors, boxes), expected)
    torch.testing.assert_close(det.decode(anchors, det.encode(anchors, boxes)), boxes)


def test_anchors_cover_the_image_in_head_order():
    anchors = det.make_anchors(2, stride=4, sizes=(2.0, 4.0))
    assert anchors.tolist() == [
        [1.0, 1.0, 3.0, 3.0],
        [0.0, 0.0, 4.0, 4.0],
        [5.0, 1.0, 7.0, 3.0],  # next column
        [4.0, 0.0, 8.0, 4.0],
        [1.0, 5.0, 3.0, 7.0],  # next row
        [0.0, 4.0, 4.0, 8.0],
        [5.0, 5.0, 7.0, 7.0],
        [4.0, 4.0, 8.0, 8.0],
    ]


def test_quality_scores_are_the_iou_of_the_predicted_box_at_positives():
    pred = torch.tensor([[2.0, 0.0, 12.0, 10.0], [0.0, 0.0, 5.0, 5.0], [0.0, 0.0, 10.0, 10.0]])
    matched = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 5.0, 5.0], [0.0, 0.0, 10.0, 10.0]])
    labels = torch.tensor([1, C, det.IGNORE])  # positive, background, ignored
    scores = det.quality_scores(pred, labels, matched)
    torch.testing.assert_close(scores, torch.tensor([80 / 120, 0.0, 0.0]))


def test_nms_per_class():
    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [1.0, 0.0, 11.0, 10.0], [20.0, 20, 30, 30]]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    # Box 1 overlaps box 0 (IoU 0.82) in the same class; box 2 is another class.
    assert det.batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 2, 3]
    assert det.batched_nms(boxes[:0], scores[:0], labels[:0], 0.5).tolist() == []


def test_coco_bridge_known_ap():
    """Two images, one object each. Detections: a false positive (score 0.95), an exact match
    (0.9) and a box with IoU 15.5 / 24.5 = 0.633 with the second object (0.8).

    IoU thresholds 0.50, 0.55, 0.60: precision 0, 1/2, 2/3 at recall 0, 1/2, 1; the
    interpolated precision is 2/3 everywhere: AP = 2/3.
    The other seven (0.65 ... 0.95): recall reaches only 1/2 at precision 1/2: the 51 recall
    points 0, 0.01, ..., 0.50 of COCO's 101 get 0.5: AP = 25.5 / 101.
    """
    from focalloss.demo.coco import coco_ap

    gt_boxes = [torch.tensor([[10.0, 10.0, 30.0, 30.0]]), torch.tensor([[40.0, 40.0, 60.0, 60.0]])]
    gt_labels = [torch.tensor([0]), torch.tensor([0])]
    det_boxes = [
        torch.tensor([[10.0, 10.0, 30.0, 30.0], [70.0, 70.0, 80.0, 80.0]]),
        torch.tensor([[44.5, 40.0, 64.5, 60.0]]),
    ]
    det_scores = [torch.tensor([0.9, 0.95]), torch.tensor([0.8])]
    det_labels = [torch.tensor([0, 0]), torch.tensor([0])]
    result = coco_ap(gt_boxes, gt_labels, det_boxes, det_scores, det_labels, ("a",), (100, 100))
    low, high = 2 / 3, 25.5 / 101
    assert result["ap50"] == pytest.approx(low)
    assert result["ap75"] == pytest.approx(high)
    assert result["ap"] == pytest.approx((3 * low + 7 * high) / 10)
    # Exact detections: AP 1; none at all: 0; the categories are 0-based in, 1-based in COCO.
    perfect = coco_ap(gt_boxes, gt_labels, gt_boxes, det_scores[1:] * 2, gt_labels, ("a",))
    assert perfect["ap"] == pytest.approx(1.0)
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    none = [torch.zeros(0), torch.zeros(0)]
    assert coco_ap(gt_boxes, gt_labels, empty, none, none, ("a",))["ap"] == 0.0
    wrong_class = coco_ap(
        gt_boxes,
        gt_labels,
        gt_boxes,
        none[:0] + [torch.ones(1)] * 2,
        [torch.tensor([1])] * 2,
        ("a", "b"),
    )
    assert wrong_class["ap"] == 0.0
    with pytest.raises(ValueError, match="expected one entry per image each"):
        coco_ap(gt_boxes, gt_labels, det_boxes[:1], det_scores, det_labels, ("a",))


def test_default_data_has_1000_negatives_per_positive_anchor():
    config = det.DetectionConfig()
    data = det.make_detection_set(24, config.image_size, seed=0)
    anchors = det.make_anchors(config.image_size // det.STRIDE)
    stats = det.imbalance(det.build_targets(data, anchors))
    assert stats["negatives_per_positive_anchor"] >= 1000
    assert stats["negatives_per_positive_element"] > stats["negatives_per_positive_anchor"]
    assert all(len(b) == 1 for b in data.boxes)
    for boxes in data.boxes:  # small objects, inside the image
        wh = boxes[:, 2:] - boxes[:, :2]
        assert bool((wh >= 4).all() and (wh <= 15).all())
        assert bool((boxes >= 0).all() and (boxes <= config.image_size).all())


def test_alpha_balanced_bce_entry_against_the_formula():
    entry = det.loss_entry("bce")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, C, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C + 1, (50,), generator=g)
    p = logits.sigmoid()
    t = torch.zeros(50, C, dtype=torch.float64)
    t[labels < C, labels[labels < C]] = 1.0
    ref = -(0.75 * t * p.log() + 0.25 * (1 - t) * (1 - p).log())
    num_pos = float((labels < C).sum())
    scores = torch.zeros(50, dtype=torch.float64)
    torch.testing.assert_close(entry(logits, labels, scores, num_pos, "none"), ref)
    torch.testing.assert_close(entry(logits, labels, scores, num_pos, "mean"), ref.sum() / num_pos)


def test_every_issue_loss_runs_by_default():
    """Issue 15's detection losses, all in the default list, BCE first (the baseline), each
    calling a public focalloss function."""
    expected = ("bce", "focal", "focal_no_prior", "vfl", "qfl")
    assert expected == det.LOSSES
    assert det.DetectionConfig().losses == expected
    assert det.DetectionConfig.quick().losses == expected
    functions = {e.name: (e.function, e.prior_init, e.quality) for e in det.LOSS_TABLE}
    assert functions == {
        "bce": ("bce", True, False),
        "focal": ("sigmoid_focal_loss", True, False),
        "focal_no_prior": ("sigmoid_focal_loss", False, False),
        "vfl": ("varifocal_loss", True, True),
        "qfl": ("quality_focal_loss", True, True),
    }
    for function, _, _ in functions.values():
        assert function == "bce" or function in focalloss.__all__
    with pytest.raises(ValueError, match="losses: expected names from"):
        det.loss_entry("ghm")


@pytest.mark.parametrize("name", ["vfl", "qfl"])
def test_iou_aware_entries_against_their_formulas(name):
    """The entries call varifocal / quality focal loss in the index + score form with the
    IoU-aware scores; their elementwise values against float64 re-statements of Zhang et al.'s
    and Li et al.'s formulas."""
    entry = det.loss_entry(name)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(40, C, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C + 1, (40,), generator=g)
    scores = torch.rand(40, generator=g, dtype=torch.float64) * (labels < C)
    q = torch.zeros(40, C, dtype=torch.float64)
    q[(labels < C).nonzero().squeeze(1), labels[labels < C]] = scores[labels < C]
    p = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, q, reduction="none")
    # VFL: BCE(x, q) * (q if q > 0 else alpha p^gamma), alpha 0.75, gamma 2;
    # QFL: BCE(x, y) * |y - p|^beta, beta 2.
    modulator = torch.where(q > 0, q, 0.75 * p**2) if name == "vfl" else (q - p).abs() ** 2
    ref = bce * modulator
    torch.testing.assert_close(entry.elementwise(logits, labels, scores), ref)
    num_pos = float((labels < C).sum())
    torch.testing.assert_close(entry(logits, labels, scores, num_pos, "mean"), ref.sum() / num_pos)


def test_detection_quick_end_to_end(tmp_path):
    out = tmp_path / "det"
    assert main(["demo", "detection", "--quick", "--out", str(out)]) == 0
    assert (out / "detection.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["demo"] == "detection" and metrics["baseline"] == "bce"
    assert metrics["losses"] == ["bce", "focal", "focal_no_prior", "vfl", "qfl"]
    for key in ("config", "machine", "loss_table", "data", "summary", "differences", "sentences"):
        assert key in metrics
    assert set(metrics["loss_table"]) == {"bce", "focal", "focal_no_prior", "vfl", "qfl"}
    assert [d["seed"] for d in metrics["data"]] == metrics["seeds"] == [0, 1]
    for loss in metrics["losses"]:
        runs = metrics["per_seed"][loss]
        assert [r["seed"] for r in runs] == [0, 1]
        for run in runs:
            for key in ("ap", "ap50", "ap75", "easy_negative_loss_share", "negative_loss_share"):
                assert 0.0 <= run[key] <= 1.0, (loss, key)
            assert run["easy_negative_loss_share"] <= run["negative_loss_share"]
    for loss in metrics["losses"][1:]:
        assert {"ap", "ap50"} <= set(metrics["differences"][loss])
    # The prior-bias init: the same initial weights start with a far smaller loss with it.
    first = {
        name: metrics["curves"][name][0]["cls_loss"][0] for name in ("focal", "focal_no_prior")
    }
    assert first["focal_no_prior"] > 10 * first["focal"]
    assert (out / "table.txt").read_text().startswith("detection:")
