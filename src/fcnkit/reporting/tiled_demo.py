"""The demo's tiled-inference stage: a big held-out scene predicted tile by tile into OME-Zarr, and the exactness
check against whole-image inference on a crop (kept apart from :mod:`fcnkit.demo` so that each reads on its own).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fcnkit.reporting.html import Report


def tiled_section(out: Path, s: Any, run: Any, report: Report, clock: Any, log: Callable[[str], None],
                  progress: str) -> dict:
    """Predict the big scene tile by tile into OME-Zarr and compare tiled with whole-image logits on a crop.

    ``s`` is the demo's ``DemoSettings``, ``clock`` its timer, ``run`` the trained segmentation run.
    """
    from fcnkit.data.scenes import make_scene
    from fcnkit.io import create_output
    from fcnkit.metrics import confusion_matrix, scores
    from fcnkit.inference.tiled import plan_prediction, predict, predict_tiled
    from fcnkit.reporting.pictures import panels

    model, k = run.model, len(run.class_names)
    log(f"[4/5] exact tiled inference of the segmentation model over a {s.big_size}x{s.big_size} held-out scene")
    with clock("make the big scene"):
        image, truth = make_scene(s.big_size, split="val", seed=s.seed, index=2)
    plan = plan_prediction(model, image, output="labels", memory_limit="1GB")
    log(f"      {_tiles(len(plan.tiles))} of {plan.tile[0]}x{plan.tile[1]} px with a {plan.halo} px halo "
        f"({plan.overhead:.2f}x the image's pixels computed), labels streamed to OME-Zarr")
    target = out / f"scene{s.big_size}_labels.ome.zarr"
    with clock("tiled inference"):
        output = create_output(target, plan.shape, plan.dtype, chunks=512, palette=run.palette,
                               metadata={"class_names": run.class_names})
        predict_tiled(model, image, tile=plan.tile, batch_size=plan.batch_size, output="labels", out=output,
                      progress=progress != "off" and sys.stderr.isatty())  # no redraws in a log file
        labels = output[:, :]
        output.close()
    big = scores(confusion_matrix(labels, truth, k))
    log(f"      wrote {target}; mean IU of the whole scene {big['mean_iu']:.3f}")

    # Exactness, measured where the whole-image reference is affordable: a centre crop, predicted whole and tiled
    # (both see only the crop, so both have the same borders; tiles smaller than the crop make seams to test).
    c0 = (s.big_size - s.exact_crop) // 2
    crop = np.ascontiguousarray(image[c0:c0 + s.exact_crop, c0:c0 + s.exact_crop])
    with clock("exactness check"):
        whole = predict(model, crop, output="logits")
        tiles = predict_tiled(model, crop, tile=s.exact_tile, output="logits")
    max_diff = float(np.abs(whole - tiles).max())
    equal = bool((whole.argmax(2) == tiles.argmax(2)).all())
    n_tiles = len(plan_prediction(model, crop, tile=s.exact_tile, output="logits").tiles)
    log(f"      {s.exact_crop}x{s.exact_crop} crop, {_tiles(n_tiles)} of {s.exact_tile}: max |tiled - whole-image "
        f"logits| = {max_diff:.1e}, labels {'identical' if equal else 'DIFFERENT'}")

    view = slice(c0, c0 + min(s.exact_crop, 512))
    picture = panels(out / "pictures" / "big_scene.png", [(image[view, view], truth[view, view],
                                                          labels[view, view])],
                     class_names=run.class_names, palette=run.palette,
                     titles=[f"centre of the {s.big_size}² scene"])
    report.add_key_values("Exact tiled inference", {
        "scene": f"{s.big_size}×{s.big_size}", "tiles": len(plan.tiles), "tile (px)": plan.tile,
        "halo (px)": plan.halo, "computed pixels / image pixels": round(plan.overhead, 3),
        "output": target.name, "tiled inference (s)": round(clock.timings["tiled inference"][0], 1),
        "mean IU of the big scene": round(float(big["mean_iu"]), 4),
        "exactness check": f"centre {s.exact_crop}×{s.exact_crop} crop, whole-image predict vs predict_tiled with "
                           f"{_tiles(n_tiles)} of {s.exact_tile}",
        "max |tiled − whole-image logits|": f"{max_diff:.2e}", "labels identical": equal})
    report.add_image("Tiled prediction of the big scene", picture,
                     f"A {min(s.exact_crop, 512)}² window from the centre of the tiled {s.big_size}² prediction.")
    return {"max_diff": max_diff, "labels_equal": equal, "mean_iu": float(big["mean_iu"])}


def _tiles(count: int) -> str:
    return f"{count} tile{'' if count == 1 else 's'}"
