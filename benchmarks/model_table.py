"""The README's model table: every registered model at its default width, with its geometry.

Parameters are counted on the meta device (nothing is allocated); geometry comes from ``fcnkit.analyze``.

    python benchmarks/model_table.py
"""

from __future__ import annotations

import torch

import fcnkit


def main() -> None:
    print("| model | output | parameters | receptive field | input multiple | halo | local |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name in fcnkit.list_models():
        with torch.device("meta"):
            model = fcnkit.build_model(name, num_classes=21).eval()
        params = sum(p.numel() for p in model.parameters())
        geometry = fcnkit.analyze(model)
        local = "yes" if geometry.local else "no (" + geometry.nonlocal_reason.split(" at ")[0] + ")"
        stride = f", stride {geometry.output_stride}" if geometry.output_stride > 1 else ""
        print(f"| `{name}` | {model.output_kind}{stride} | {params / 1e6:.2f} M | {geometry.receptive_field} | "
              f"{geometry.input_multiple} | {geometry.halo} | {local} |")


if __name__ == "__main__":
    main()
