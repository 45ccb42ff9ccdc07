"""CLI: the detector on one Landslide4Sense ``.h5`` patch (no georeference, no scan).

    landslide predict-patch ../shared/data/l4s_test_patches/img/image_31.h5 --out runs/patches
"""

from __future__ import annotations

import argparse
import json

from flows import options


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    patch = sub.add_parser(
        "predict-patch", help="predict one Landslide4Sense .h5 patch -> probability .npy/.png, mask .png",
        description="Read one Landslide4Sense image patch (HDF5, key 'img', 128 x 128 x 14 in L4S "
                    "units), give the detector its bands with the same input transform a scan uses, "
                    "and write into --out: STEM_probability.npy (float32 H x W, 0..1), "
                    "STEM_probability.png (8-bit greyscale, round(p x 255)) and STEM_mask.png (255 "
                    "where p >= the card's threshold, else 0). L4S patches have no georeference: "
                    "these are arrays, not maps.",
        epilog="Example: landslide predict-patch image_31.h5 --out runs/patches")
    patch.add_argument("patch", metavar="FILE.h5", help="a Landslide4Sense image patch")
    patch.add_argument("--out", required=True, metavar="DIR", help="folder for the three files")
    options.add_checkpoint(patch)
    options.add_device(patch)
    patch.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_predict_patch(args: argparse.Namespace) -> int:
    from tasks.predict.patch import predict_patch

    result = predict_patch(args.patch, args.out, args.detector, args.device)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"{result.patch}: max probability {result.max_prob:.3f}, {result.mask_px} of "
              f"{result.height_px * result.width_px} px >= {result.threshold:g} ({result.detector}) -> "
              f"{result.probability_npy}, {result.probability_png}, {result.mask_png}")
    return 0


HANDLERS = {"predict-patch": cmd_predict_patch}
