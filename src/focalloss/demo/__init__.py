"""``focalloss demo``: what focal loss changes, measured over seeds with intervals.

Three demos (``focalloss demo [segmentation|detection|calibration]``):

* :mod:`.segmentation`: a small U-Net on generated, imbalanced images (CE vs focal loss);
* :mod:`.detection`: a small one-stage detector on generated images with small objects
  (alpha-balanced BCE vs sigmoid focal loss with and without the prior-bias init, varifocal
  and quality focal loss), COCO AP;
* :mod:`.calibration`: an MLP on scikit-learn's digits made long-tailed (CE, label smoothing,
  focal loss gamma 3, FLSD-53, Poly-1): accuracy, ECE and NLL before and after temperature
  scaling.

Each runs every loss on every seed and reports the paired difference to the baseline with a
95% t-interval over seeds (:mod:`.stats`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

from .segmentation import SegmentationConfig, run_segmentation

TASKS = ("segmentation", "detection", "calibration")

#: Former names of the segmentation demo's entry points.
DemoConfig = SegmentationConfig
run_demo = run_segmentation


def _task(task: str) -> tuple[type, Callable[..., dict[str, object]]]:
    if task == "segmentation":
        return SegmentationConfig, run_segmentation
    if task == "detection":
        from .detection import DetectionConfig, run_detection

        return DetectionConfig, run_detection
    if task == "calibration":
        from .calibration import CalibrationConfig, run_calibration

        return CalibrationConfig, run_calibration
    raise ValueError(f"task: expected one of {TASKS}, got {task!r}")


def run_task(
    task: str,
    quick: bool = False,
    command: str | None = None,
    print_fn: Callable[[str], None] = print,
    **options: object,
) -> dict[str, object]:
    """Run one demo with the command line's options (``None`` values keep the defaults).

    ``losses`` may be a comma-separated string. An option the task does not have (e.g.
    ``image_size`` for calibration) is an error that names it.
    """
    config_class, run = _task(task)
    known = {f.name for f in fields(config_class)}
    given = {key: value for key, value in options.items() if value is not None}
    for key in given:
        if key not in known:
            flag = "--" + key.replace("_", "-")
            raise ValueError(
                f"{flag}: not an option of focalloss demo {task} (it takes "
                + ", ".join("--" + k.replace("_", "-") for k in sorted(known))
                + ")"
            )
    if isinstance(given.get("losses"), str):
        names = [n.strip() for n in str(given["losses"]).split(",") if n.strip()]
        given["losses"] = tuple(names)
    if "out" not in given:
        given["out"] = f"focalloss-demo/{task}"
    config = config_class.quick(**given) if quick else config_class(**given)
    return run(config, print_fn=print_fn, command=command)


__all__ = [
    "TASKS",
    "DemoConfig",
    "SegmentationConfig",
    "run_demo",
    "run_segmentation",
    "run_task",
]
