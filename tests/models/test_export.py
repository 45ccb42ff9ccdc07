"""ONNX export of a checkpoint, int8 quantization, and the ONNX Runtime detector."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

pytest.importorskip("onnxruntime", reason="optional: pip install -e '.[onnx]' (CI installs it)")

from models.checkpoint import InputTransform, ModelCard, save_checkpoint  # noqa: E402
from models.detectors import load_detector  # noqa: E402
from models.export import card_of_onnx, export_onnx, load_onnx_detector, prune_channels, quantize_int8  # noqa: E402
from models.registry import build_model  # noqa: E402
from tasks.core.bands import BAND_NAMES  # noqa: E402
from tasks.core.errors import CheckpointError, InputError  # noqa: E402

BANDS = ["B02", "B03", "B04", "SLOPE", "DEM"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    model = build_model("unet", "mobilenet_v2", in_channels=len(BANDS))
    card = ModelCard(
        name="export-test", version="1", arch="unet", encoder="mobilenet_v2", bands=BANDS,
        input_transform=InputTransform.from_stats([1000, 1000, 1000, 20, 300], [300, 300, 300, 10, 100]),
        fill={b: "training mean" for b in BANDS}, patch_size=128, threshold=0.5,
        trained_on={"dataset": "random weights (test)", "split": "none", "file_list_sha256": "0" * 64},
        metrics={}, training={"epochs": 0, "loss": "none", "seed": 0},
        description="random weights: tests the export mechanics only", weights_sha256="",
        weights_dtype="float32")
    out = tmp_path_factory.mktemp("ckpt")
    _, card_path = save_checkpoint(model, card, out, dtype="float32")
    return card_path


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    """A small scene-layout image (random physical values) for int8 calibration."""
    d = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(1)
    image = rng.normal(1000, 300, size=(14, 160, 160)).astype(np.float32)
    profile = dict(driver="GTiff", width=160, height=160, count=14, dtype="float32",
                   crs="EPSG:32654", transform=from_origin(500000, 4700000, 10, 10))
    with rasterio.open(d / "image.tif", "w", **profile) as dst:
        dst.write(image)
        dst.descriptions = BAND_NAMES
    return d


@pytest.fixture(scope="module")
def onnx_paths(checkpoint, scene_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(checkpoint, out / "m.onnx")
    int8 = quantize_int8(fp32, out / "m.int8.onnx", scene_dir, n_patches=8)
    return fp32, int8


def _batch(n=3, seed=2):
    rng = np.random.default_rng(seed)
    x = rng.normal(1000, 300, size=(n, len(BANDS), 128, 128)).astype(np.float32)
    x[0, :, :10, :10] = np.nan  # nodata is filled with the training mean, as in the torch path
    return x, np.ones((n, 128, 128), bool)


def test_onnx_float32_matches_pytorch(checkpoint, onnx_paths):
    fp32, _ = onnx_paths
    assert card_of_onnx(fp32).name == "export-test"
    det = load_onnx_detector(fp32, threads=1)
    ref = load_detector(str(checkpoint), "cpu")
    x, ok = _batch(5)  # a batch size other than the export's: the batch axis is dynamic
    p_onnx, p_torch = det.predict(x, ok), ref.predict(x, ok)
    assert p_onnx.shape == (5, 128, 128) and p_onnx.dtype == np.float32
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-4)
    assert det.bands == tuple(BANDS) and det.ref.startswith(ref.ref)


def test_int8_is_smaller_and_close(onnx_paths):
    fp32, int8 = onnx_paths
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    x, ok = _batch()
    p8 = load_onnx_detector(int8, threads=1).predict(x, ok)
    p32 = load_onnx_detector(fp32, threads=1).predict(x, ok)
    assert np.isfinite(p8).all()
    assert 0 < np.abs(p8 - p32).mean() < 0.1  # quantized (not identical), yet close


def test_bad_onnx_inputs_are_refused(tmp_path, onnx_paths):
    import onnx

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    with pytest.raises(CheckpointError, match="not a readable ONNX"):
        card_of_onnx(junk)
    bare = onnx.load(str(onnx_paths[0]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(CheckpointError, match="model_card"):
        card_of_onnx(tmp_path / "bare.onnx")
    with pytest.raises(CheckpointError, match="does not exist"):
        card_of_onnx(tmp_path / "missing.onnx")


def test_pruning_zeroes_whole_output_channels():
    import torch

    model = build_model("unet", "mobilenet_v2", in_channels=5)
    prune_channels(model, 0.3)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels > 1]
    zero_rows = [(m.weight.detach().flatten(1).abs().sum(1) == 0).float().mean().item() for m in convs]
    assert min(zero_rows) >= 0.25 and max(zero_rows) <= 0.35
    with pytest.raises(InputError):
        prune_channels(model, 1.5)


def test_cli_export_then_scan_detector_from_the_onnx_file(checkpoint, scene_dir, tmp_path, capsys):
    from flows.cli import main

    out = tmp_path / "exp" / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--int8",
                 "--calibration-dir", str(scene_dir)]) == 0
    assert out.exists() and out.with_suffix(".int8.onnx").exists()
    det = load_detector(str(out.with_suffix(".int8.onnx")))  # what `scan --checkpoint X.onnx` loads
    assert det.describe()["kind"] == "onnx" and det.bands == tuple(BANDS)
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.pt")]) != 0
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"),
                 "--int8"]) != 0
    assert "--calibration-dir" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
