"""CLI subcommands for data preparation, training and evaluation.

    landslide weak-labels --out data/iburi_weak
    landslide train --data-dir data/iburi_weak --name my-model --out models/checkpoints
    landslide evaluate --data-dir data/iburi_weak/val --json
    landslide evaluate --reference inventory.gpkg --reference-layer scars --run runs/iburi --out eval
"""

from __future__ import annotations

import argparse
import json

from flows import options
from tasks.core import defaults


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    _add_weak_labels(sub)
    _add_train(sub)
    _add_train_suite(sub)
    _add_ensemble(sub)
    _add_export(sub)
    _add_evaluate(sub)
    _add_compare(sub)
    _add_card_stats(sub)


def _add_card_stats(sub: argparse._SubParsersAction) -> None:
    cs = sub.add_parser(
        "card-stats", help="add training statistics (band means and covariance) to an older card",
        description="Recompute a card's training statistics from the split it was trained on and "
                    "store them in the card (training_statistics): `landslide scan` compares every "
                    "scene with them and warns when the scene is outside the training domain. The "
                    "split is checked against the card's input transform first; the weights are "
                    "not touched. Cards trained now carry the statistics already.")
    options.add_checkpoint(cs, dest="checkpoint", metavar="NAME|PATH", required=True,
                           help="model card name in models/checkpoints or a path to a .json card")
    cs.add_argument("--data-dir", required=True, help="the card's training split")
    cs.add_argument("--layout", choices=["scene", "l4s", "chips"], default="scene")
    cs.add_argument("--split-list", help="official split list (l4s layout)")


def _add_weak_labels(sub: argparse._SubParsersAction) -> None:
    weak = sub.add_parser(
        "weak-labels", help="build the Iburi 2018 weak-label dataset (train/val strips)",
        description="Align the bundled Iburi post-event scene and DEM on the 10 m UTM grid over the "
                    "area the published reference predictions cover, and write weak labels: 1 where "
                    "the reference CNN AND the bare-soil rule say landslide, 0 where both say no, "
                    "255 (ignored) where they disagree. The southern third (by latitude) is the "
                    "validation strip. See docs/weak_labels.md.")
    weak.add_argument("--out", required=True, help="dataset folder to write (train/, val/)")
    options.add_catalog(weak)


def _add_train(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train", help="train a segmentation model on a scene-layout dataset",
        description="Train a registry model (see `landslide models`) on DIR/train and select the "
                    "checkpoint on DIR/val (validation F1). Writes NAME.safetensors + NAME.json "
                    "(model card) into --out.")
    train.add_argument("--data-dir", required=True,
                       help="scene/chips layout: folder with train/ and val/; l4s layout: the "
                            "Landslide4Sense download root (with --train-list/--val-list)")
    train.add_argument("--layout", choices=["scene", "l4s", "chips"], default="scene",
                       help="dataset layout (scene: image.tif + labels.tif; l4s: img/image_N.h5 + "
                            "mask/mask_N.h5; chips: images/*.tif + labels/*.tif)")
    train.add_argument("--train-list", help="l4s: split list of the training patches "
                       "(e.g. dataset_train.txt, relative to --data-dir)")
    train.add_argument("--val-list", help="l4s: split list of the validation patches "
                       "(e.g. dataset_valid.txt); never the training list")
    train.add_argument("--name", required=True, help="checkpoint name")
    train.add_argument("--out", default="models/checkpoints", help="output folder (models/checkpoints)")
    train.add_argument("--model", default="unet-mobilenet_v2", help="registry model (unet-mobilenet_v2)")
    train.add_argument("--seed", type=int, default=0)
    _add_config_options(train)
    train.add_argument("--run-dir", help="state/metrics/curves/TensorBoard folder "
                       "(default: OUT/NAME.run); an interrupted run there resumes")
    train.add_argument("--no-resume", action="store_true", help="start over even if --run-dir "
                       "holds an interrupted run")
    options.add_no_progress(train)


def _add_train_suite(sub: argparse._SubParsersAction) -> None:
    suite = sub.add_parser(
        "train-suite", help="train several registry models x seeds and tabulate them (the paper's "
                            "comparison)",
        description="Train every --models x --seeds combination on DIR/train (selection on DIR/val) "
                    "with one training config, as OUT/PREFIX-MODEL-sSEED.{json,safetensors}; "
                    "finished ones are skipped and an interrupted one resumes, so adding seeds "
                    "later only trains those. Then writes suite.md / suite.csv / suite.png (mean "
                    "+- std over seeds, the index rule as the traditional row) into --report-dir.")
    suite.add_argument("--data-dir", required=True, help="scene-layout folder with train/ and val/ "
                       "(val_reference/ too, if present, is scored for the report)")
    suite.add_argument("--models", default="all", help="'all' (the 12 paper models) or a comma list")
    suite.add_argument("--seeds", default="0", help="comma-separated seeds (0)")
    suite.add_argument("--prefix", default="suite", help="checkpoint name prefix (suite)")
    suite.add_argument("--out", default="build/suite", help="checkpoint folder (build/suite)")
    suite.add_argument("--report-dir", help="report folder (default: OUT)")
    suite.add_argument("--title", default="Architecture comparison")
    suite.add_argument("--notes", default="", help="a paragraph for the top of suite.md")
    suite.add_argument("--no-timing", action="store_true", help="skip the ms-per-patch measurement")
    suite.add_argument("--report-only", action="store_true",
                       help="train nothing; tabulate the cards already in --out")
    options.add_no_progress(suite)
    _add_config_options(suite)


def _add_ensemble(sub: argparse._SubParsersAction) -> None:
    ens = sub.add_parser(
        "ensemble", help="write an ensemble card over member checkpoints (mean, majority, weighted)",
        description="Write OUT/NAME.json listing the member cards and the rule; with --score-dir the "
                    "ensemble is scored there and the figures go into the card. A scan with "
                    "--checkpoint NAME writes the members' disagreement as uncertainty.tif.")
    ens.add_argument("--members", nargs="+", required=True, metavar="NAME|PATH")
    ens.add_argument("--name", required=True)
    ens.add_argument("--out", default="models/checkpoints")
    ens.add_argument("--rule", choices=["mean", "weighted", "majority"], default="mean")
    ens.add_argument("--weights-from", metavar="KEY", help="rule weighted: the member-card metrics "
                     "key whose F1 is the weight (e.g. val_weak_labels)")
    # not options.add_threshold: this is the threshold written into the new card (the one a scan
    # or evaluate then uses by default), not an override of a card's threshold
    ens.add_argument("--threshold", type=float, default=0.5,
                     help="probability threshold recorded in the card, used when a scan or "
                          "evaluate gives no --threshold (%(default)s)")
    ens.add_argument("--score-dir", action="append", default=[], metavar="KEY=DIR",
                     help="score the ensemble on a labelled scene-layout folder, stored as "
                          "metrics[KEY] (repeatable)")
    ens.add_argument("--description", default="")


def _add_export(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser(
        "export", help="export a checkpoint to ONNX (float32, optionally static int8) for CPU scans",
        description="Write an ONNX model carrying its card; `landslide scan --checkpoint FILE.onnx` "
                    "runs it with ONNX Runtime. --int8 also writes FILE.int8.onnx, quantized with "
                    "activations calibrated on --calibration-dir (a training split, never the data "
                    "you score it on). Needs the optional packages: pip install -e '.[onnx]'.")
    # a model card only: neither the index rule nor an ensemble nor an .onnx is exported
    options.add_checkpoint(exp, dest="checkpoint", metavar="NAME|PATH",
                           help="model card name in models/checkpoints or a path to a .json card "
                                "(default: the shipped model)")
    exp.add_argument("--out", required=True, help="output .onnx path")
    exp.add_argument("--int8", action="store_true", help="also write the static int8 model")
    exp.add_argument("--calibration-dir", help="scene-layout folder for int8 calibration")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "evaluate", help="precision/recall/F1/IoU/AUC of a checkpoint on a labelled dataset, or of "
                         "a finished run against a landslide inventory",
        description="Two modes. --data-dir DIR: predict a scene-layout dataset (DIR/image.tif) the "
                    "way a scan does (tiled, blended) and score it against DIR/labels.tif over "
                    "labelled pixels (255 ignored). --reference FILE --run RUN_DIR: score a finished "
                    "scan's mask, probability and polygons against the polygons of a reference "
                    "inventory, pixel by pixel and landslide by landslide, inside the mapped area "
                    "and the run's footprint (see docs/evaluation.md).")
    ev.add_argument("--data-dir", help="dataset mode: folder with image.tif and labels.tif")
    options.add_checkpoint(ev, dest="checkpoint")
    options.add_threshold(ev)
    options.add_device(ev)
    ev.add_argument("--compare-redness", action="store_true",
                    help="also score the redness index (R-B)/(R+B) thresholded to mark the same "
                         "fraction of labelled pixels as the detector (needs B02 and B04)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    inv = ev.add_argument_group("inventory mode (--reference with --run)")
    inv.add_argument("--reference", metavar="FILE", help="reference inventory: a vector file "
                     "(GeoPackage, shapefile, GeoJSON; any CRS) of landslide polygons")
    inv.add_argument("--run", metavar="RUN_DIR", help="the --out folder of a finished `landslide "
                     "scan` (probability.tif, mask.tif, landslides.gpkg)")
    inv.add_argument("--reference-layer", dest="reference_layers", action="extend", nargs="+",
                     metavar="LAYER", help="landslide layer(s) of --reference; landslide = a polygon "
                     "of any of them; polygons of later layers join the first layer's landslide "
                     "they overlap (e.g. collapse_scars deposits). Default: the file's only layer")
    inv.add_argument("--mapped-area", metavar="LAYER|FILE", help="where the reference was mapped: "
                     "a layer of --reference, a vector file or FILE:LAYER; scoring stays inside it "
                     "(default: the run's whole footprint)")
    # default None so dataset mode can refuse it; the value used is
    # tasks.inventory.accuracy.DEFAULT_MIN_OVERLAP (tests check the help names it)
    inv.add_argument("--min-overlap-fraction", type=float, metavar="F",
                     help="a reference landslide is detected when detections cover at least this "
                          "share of its area (default: 0.1)")
    inv.add_argument("--out", metavar="DIR", help="write evaluation.json, evaluation.md and "
                     "evaluation.png (hits, misses, false alarms on the run's RGB) into DIR")


def _add_compare(sub: argparse._SubParsersAction) -> None:
    cmp_ = sub.add_parser(
        "compare", help="a comparison table of several checkpoints on one labelled dataset",
        description="Score checkpoints (and the index rule) on a scene-layout dataset: precision, "
                    "recall, F1, IoU, Dice, AUC, ms per patch and parameter count, as "
                    "compare.md / compare.csv / compare.png in --out.")
    cmp_.add_argument("--data-dir", required=True, help="labelled dataset (image.tif + labels.tif)")
    cmp_.add_argument("--checkpoints", nargs="*", default=[], metavar="NAME|PATH",
                      help="model cards to compare")
    cmp_.add_argument("--index", action="store_true", help="add the index rule (traditional method)")
    cmp_.add_argument("--calibrate-dir", help="choose each detector's threshold for the best F1 on "
                      "this (validation) dataset instead of using the card's")
    cmp_.add_argument("--out", default="reports/compare", help="report folder (reports/compare)")
    cmp_.add_argument("--title", default="Detector comparison")


def _add_config_options(p: argparse.ArgumentParser) -> None:
    """Training options shared by `train` and `train-suite`."""
    p.add_argument("--bands", default="B02,B03,B04,SLOPE,DEM",
                       help="input channels in contract order (B02,B03,B04,SLOPE,DEM)")
    p.add_argument("--loss", default="bce+dice",
                       help="loss spec: terms bce, dice, focal, tversky, focal_tversky, lovasz, "
                            "lovasz_batch with optional weights, e.g. '0.5*bce+dice' (bce+dice); "
                            "bce is weighted by the training split's class balance")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    # not options.add_batch_size: a training batch (patches per optimizer step, default 8) is
    # another quantity than a scan's patches per forward pass, with its own default
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="training patches per optimizer step (%(default)s)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                       help="weights dtype on disk (metrics are measured with it)")
    p.add_argument("--scale-range", metavar="MIN,MAX",
                   help="zoom augmentation, e.g. 0.8,1.25 (log-uniform; default: off)")
    p.add_argument("--rotate-deg", type=float, default=0.0,
                   help="arbitrary-rotation augmentation +- this angle (default: 0, off)")
    p.add_argument("--noise-std", type=float, default=0.03,
                   help="Gaussian-noise augmentation, normalized units (0.03)")
    p.add_argument("--spectral-jitter", type=float, default=0.0,
                   help="per-band gain 1 +- J on the spectral bands (default: 0, off)")
    p.add_argument("--pca", type=int, metavar="K", help="replace the spectral bands by their first K "
                   "principal components (whitened, fitted on the training split only, stored in "
                   "the card; default: off)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    options.add_device(p, help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N; on CUDA "
                               "with mixed precision (bfloat16 autocast where supported, else "
                               "float16 with a gradient scaler), on the CPU float32 as before "
                               f"(default: {defaults.DEVICE})")
    p.add_argument("--patience", type=int, help="early stop after N epochs without a better "
                       "validation F1 (default: run all epochs)")


def _config_from_args(args: argparse.Namespace) -> dict:
    """A TrainConfig dict from the shared options; bad values fail here, before Prefect starts."""
    from models.training.augment import AugmentConfig
    from models.training.losses import build_loss
    from tasks.core.bands import validate_bands
    from tasks.core.errors import InputError

    bands = tuple(b.strip() for b in args.bands.split(","))
    if validate_bands(bands) != tuple(b.upper() for b in bands):
        raise InputError(f"--bands must be in contract order: {','.join(validate_bands(bands))}")
    build_loss(args.loss)
    scale_range = None
    if args.scale_range:
        try:
            scale_range = tuple(float(v) for v in args.scale_range.split(","))
        except ValueError:
            scale_range = ()
        if len(scale_range) != 2:
            raise InputError(f"--scale-range wants MIN,MAX (e.g. 0.8,1.25), got {args.scale_range!r}")
    AugmentConfig(scale_range=scale_range, rotate_deg=args.rotate_deg, noise_std=args.noise_std,
                  spectral_jitter=args.spectral_jitter, spectral_bands=(0,))
    if args.pca is not None:
        from tasks.core.bands import SPECTRAL_BAND_NAMES

        n_spectral = sum(b in SPECTRAL_BAND_NAMES for b in validate_bands(bands))
        if not 1 <= args.pca <= n_spectral or n_spectral < 2:
            raise InputError(f"--pca {args.pca}: the bands hold {n_spectral} spectral band(s); "
                             f"choose 1..{n_spectral} components (PCA needs at least 2)")
        if args.spectral_jitter:
            raise InputError("--spectral-jitter does not apply with --pca (the spectral bands "
                             "become principal components)")
    return {"bands": validate_bands(bands), "epochs": args.epochs,
            "steps_per_epoch": args.steps_per_epoch, "batch_size": args.batch_size,
            "lr": args.lr, "save_dtype": args.dtype, "patience": args.patience,
            "loss": args.loss, "scale_range": scale_range, "rotate_deg": args.rotate_deg,
            "noise_std": args.noise_std, "spectral_jitter": args.spectral_jitter,
            "threads": args.threads, "pca_components": args.pca, "device": args.device}


def cmd_train_suite(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flows.train import train_suite_flow
    from models.training.suite import parse_models, parse_seeds
    from tasks.core.errors import InputError

    data = Path(args.data_dir)
    for split in ("train", "val"):
        if not (data / split / "labels.tif").exists():
            raise InputError(f"{data}/{split}/labels.tif not found; --data-dir needs train/ and val/ "
                             "in the scene layout (e.g. from `landslide weak-labels`)")
    models, seeds = parse_models(args.models), parse_seeds(args.seeds)
    config = _config_from_args(args)
    result = train_suite_flow(str(data), args.out, args.prefix, models, seeds, config,
                              args.report_dir or args.out, args.title, args.notes,
                              not args.no_progress, not args.no_timing, args.report_only)
    print(Path(result["paths"]["md"]).read_text())
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from models.data.datasets import load_scene_dataset
    from models.ensemble import build_ensemble
    from models.evaluate import score_ensemble
    from tasks.core.errors import InputError

    score_dirs = {}
    for item in args.score_dir:
        key, sep, folder = item.partition("=")
        if not sep or not key or not folder:
            raise InputError(f"--score-dir wants KEY=DIR, got {item!r}")
        load_scene_dataset(folder)  # bad folders fail before any card is written
        score_dirs[key] = folder
    path = build_ensemble(args.members, args.name, args.out, args.rule, args.weights_from,
                          args.threshold, args.description)
    if score_dirs:
        path = score_ensemble(path, score_dirs)
    print(path.read_text())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from models.detectors import DEFAULT_CHECKPOINT
    from models.export import export_onnx, quantize_int8
    from tasks.core.errors import InputError

    out = Path(args.out)
    if out.suffix != ".onnx":
        raise InputError(f"--out must end in .onnx, got {out}")
    if args.int8 and not args.calibration_dir:
        raise InputError("--int8 needs --calibration-dir (e.g. build/iburi_weak/train)")
    if args.calibration_dir:
        from models.data.datasets import load_scene_dataset

        load_scene_dataset(args.calibration_dir, require_labels=False)
    path = export_onnx(args.checkpoint or DEFAULT_CHECKPOINT, out)
    print(f"onnx: {path}")
    if args.int8:
        print(f"int8: {quantize_int8(path, out.with_suffix('.int8.onnx'), args.calibration_dir)}")
    return 0


def cmd_card_stats(args: argparse.Namespace) -> int:
    from models.training.train import add_training_statistics

    path = add_training_statistics(args.checkpoint, args.data_dir, args.layout, args.split_list)
    print(f"training statistics added to {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from flows.evaluate import compare_flow
    from models.data.datasets import load_scene_dataset

    load_scene_dataset(args.data_dir)  # bad folders fail before Prefect starts
    if args.calibrate_dir:
        load_scene_dataset(args.calibrate_dir)
    specs = list(args.checkpoints) + (["index"] if args.index else [])
    if not specs:
        from tasks.core.errors import InputError

        raise InputError("name at least one --checkpoints entry or pass --index")
    from models.detectors import load_detector

    for spec in specs:
        load_detector(spec, "cpu")  # unknown / broken checkpoints fail early, by name
    result = compare_flow(specs, args.data_dir, args.out, args.calibrate_dir, args.title)
    print((__import__("pathlib").Path(result["paths"]["md"])).read_text())
    return 0


def cmd_weak_labels(args: argparse.Namespace) -> int:
    from tasks.datasets.weak_labels import build_iburi_weak_dataset

    summary = build_iburi_weak_dataset(args.out, args.catalog)
    for split in ("train", "val"):
        c = summary[split]
        print(f"{split}: {c['landslide_px']} landslide px, {c['background_px']} background px, "
              f"{c['ignored_px']} ignored px")
    print(f"-> {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from flows.train import train_flow
    from tasks.core.errors import InputError

    data = Path(args.data_dir)
    if args.layout == "l4s":
        if not (args.train_list and args.val_list):
            raise InputError("--layout l4s needs --train-list and --val-list (the official "
                             "dataset_train.txt / dataset_valid.txt)")
        if Path(args.train_list).resolve() == Path(args.val_list).resolve():
            raise InputError("--val-list is the training list: checkpoints are selected on a "
                             "validation split, never on the training list")
        train_dir = val_dir = str(data)
    else:
        for split in ("train", "val"):
            marker = "labels.tif" if args.layout == "scene" else "labels"
            if not (data / split / marker).exists():
                raise InputError(f"{data}/{split}/{marker} not found; --data-dir needs train/ and "
                                 f"val/ in the {args.layout} layout (scene datasets come from "
                                 "`landslide weak-labels`)")
        train_dir, val_dir = str(data / "train"), str(data / "val")
    from models.registry import parse_model_name

    parse_model_name(args.model)  # unknown names fail before Prefect starts
    config = {**_config_from_args(args), "model": args.model, "seed": args.seed}
    reports = ({"val_reference_predictions": str(data / "val_reference")}
               if (data / "val_reference" / "labels.tif").exists() else None)
    card = train_flow(train_dir, val_dir, args.out, args.name, config,
                      progress=not args.no_progress, report_dirs=reports, run_dir=args.run_dir,
                      resume=not args.no_resume, layout=args.layout, train_list=args.train_list,
                      val_list=args.val_list)
    print(f"checkpoint: {card}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tasks.core.errors import InputError

    inventory = [flag for flag, value in (
        ("--reference", args.reference), ("--run", args.run),
        ("--reference-layer", args.reference_layers), ("--mapped-area", args.mapped_area),
        ("--min-overlap-fraction", args.min_overlap_fraction), ("--out", args.out)) if value is not None]
    if args.data_dir is not None and inventory:
        raise InputError(f"--data-dir (a checkpoint on a labelled dataset) and {', '.join(inventory)} "
                         "(a finished run against an inventory) are two modes of evaluate; give one")
    if args.data_dir is None:
        if not inventory:
            raise InputError("evaluate needs --data-dir DIR (a checkpoint on a labelled dataset) or "
                             "--reference FILE --run RUN_DIR (a finished run against an inventory)")
        return _evaluate_run(args)
    from models.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.data_dir, args.checkpoint, args.threshold, args.device,
                                 args.compare_redness)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['checkpoint']} on {result['data_dir']} (threshold {result['threshold']}):")
        for k in ("precision", "recall", "f1", "iou", "auc"):
            v = result[k]
            print(f"  {k:9s} {v:.4f}" if v is not None else f"  {k:9s} n/a")
        if "redness_at_same_fraction" in result:
            r = result["redness_at_same_fraction"]
            print(f"  redness (R-B)/(R+B) marking the same fraction ({r['fraction_marked']:.3f}): "
                  f"f1 {r['f1']:.4f} iou {r['iou']:.4f}")
        print(f"  labels: {result['labels']}")
    return 0


def _evaluate_run(args: argparse.Namespace) -> int:
    """``evaluate --reference FILE --run RUN_DIR``: tasks.inventory.accuracy."""
    from tasks.core.errors import InputError

    dataset_only = [flag for flag, given in (
        ("--checkpoint", args.checkpoint is not None), ("--threshold", args.threshold is not None),
        ("--compare-redness", args.compare_redness)) if given]
    if dataset_only:
        raise InputError(f"{', '.join(dataset_only)} apply to --data-dir only; a run is scored as it "
                         "was scanned (its mask.tif and probability.tif)")
    if not (args.reference and args.run):
        raise InputError("scoring a run needs both --reference FILE (the inventory) and --run "
                         "RUN_DIR (the scan's --out folder)")
    from tasks.inventory.accuracy import DEFAULT_MIN_OVERLAP, evaluate_run, to_markdown, write_report

    frac = DEFAULT_MIN_OVERLAP if args.min_overlap_fraction is None else args.min_overlap_fraction
    ev = evaluate_run(args.run, args.reference, args.reference_layers, args.mapped_area, frac)
    if args.out:
        write_report(args.out, ev)
    if args.json:
        print(json.dumps(ev.result))
    else:
        print(to_markdown(ev.result), end="")
        if args.out:
            print(f"\n-> {ev.result['outputs']['md']}, evaluation.json, evaluation.png")
    return 0


HANDLERS = {"weak-labels": cmd_weak_labels, "train": cmd_train, "train-suite": cmd_train_suite,
            "ensemble": cmd_ensemble, "export": cmd_export,
            "evaluate": cmd_evaluate, "compare": cmd_compare, "card-stats": cmd_card_stats}
