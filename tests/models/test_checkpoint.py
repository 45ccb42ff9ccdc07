"""Checkpoints: safetensors + model card round trips, and every refusal names the file and the fix."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from models import cards, checkpoint  # noqa: E402
from models.checkpoint import (  # noqa: E402
    InputTransform,
    ModelCard,
    list_checkpoints,
    load_checkpoint,
    read_card,
    resolve_checkpoint,
    save_checkpoint,
    sha256_file,
)
from models.registry import build_model  # noqa: E402
from tasks.core.errors import CheckpointError, InputError  # noqa: E402

BANDS = ["B02", "B03", "B04"]


def make_card(**overrides) -> ModelCard:
    fields = dict(
        name="test-unet-mobilenet_v2",
        version="0.1.0",
        arch="Unet",
        encoder="mobilenet_v2",
        bands=BANDS,
        input_transform=InputTransform(scale=[1.0, 1.0, 1.0], offset=[0.0, -1000.0, 0.0],
                                       mean=[1200.0, 1100.0, 1000.0], std=[300.0, 350.0, 400.0]),
        fill={"B02": "mean"},
        patch_size=128,
        threshold=0.4,
        trained_on={"dataset": "synthetic", "split": "train", "file_list_sha256": "ab" * 32,
                    "labels": "random noise, for tests only"},
        metrics={"val": {"precision": 0.5, "recall": 0.25, "f1": 1 / 3, "iou": 0.2, "dice": 1 / 3}},
        training={"epochs": 3, "loss": "dice+bce", "augmentation": ["flip", "rot90"], "seed": 7,
                  "lr": 1e-3},
        created="2024-05-01T12:00:00+00:00",
        description="tiny test model",
    )
    fields.update(overrides)
    return ModelCard(**fields)


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("Unet", "mobilenet_v2", in_channels=len(BANDS))
    with torch.no_grad():  # move the BatchNorm running statistics away from their defaults
        model.train()(torch.randn(2, len(BANDS), 64, 64) * 3 + 1)
    return model.eval()


@pytest.fixture(scope="module")
def sample() -> torch.Tensor:
    return torch.randn(2, len(BANDS), 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def saved(tmp_path, small_model):
    weights, card = save_checkpoint(small_model, make_card(), tmp_path)
    return weights, card


def _edit_card(card_path, **changes) -> None:
    data = json.loads(card_path.read_text())
    data.update(changes)
    card_path.write_text(json.dumps(data, indent=2))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(tmp_path, small_model, sample, dtype):
    card = make_card()
    weights_path, card_path = save_checkpoint(small_model, card, tmp_path / "out", dtype=dtype)
    assert weights_path == tmp_path / "out" / "test-unet-mobilenet_v2.safetensors"
    assert card_path == tmp_path / "out" / "test-unet-mobilenet_v2.json"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [card_path.name, weights_path.name]

    model, loaded = load_checkpoint(card_path)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert loaded.weights_sha256 == sha256_file(weights_path)
    assert loaded.weights_dtype == dtype
    assert loaded.model_ref == f"test-unet-mobilenet_v2@{loaded.weights_sha256[:12]}"
    assert card.weights_sha256 == ""  # the caller's card is not modified
    expected = card.model_dump()
    expected.update(weights_sha256=loaded.weights_sha256, weights_dtype=dtype)
    assert loaded.model_dump() == expected
    assert loaded.training.model_extra == {"lr": 1e-3}

    from safetensors import safe_open

    with safe_open(str(weights_path), framework="pt") as f:
        stored = {f.get_tensor(k).dtype for k in f.keys()}
        assert json.loads(f.metadata()["landslide_pipeline"])["encoder"] == "mobilenet_v2"
    assert (torch.float16 in stored) == (dtype == "float16")
    assert torch.int64 in stored  # BatchNorm counters keep their integer type

    with torch.inference_mode():
        want, got = small_model(sample), model(sample)
    if dtype == "float32":
        assert torch.equal(want, got)
    else:
        torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)


def test_load_by_weights_path_and_by_name(saved, monkeypatch):
    weights_path, card_path = saved
    assert resolve_checkpoint(weights_path) == card_path
    assert resolve_checkpoint(str(card_path.with_suffix(""))) == card_path
    monkeypatch.setattr(checkpoint, "CHECKPOINT_DIR", card_path.parent)
    monkeypatch.setattr(cards, "CHECKPOINT_DIR", card_path.parent)  # where list_checkpoints and resolve_checkpoint look
    assert list_checkpoints() == ["test-unet-mobilenet_v2"]
    assert resolve_checkpoint("test-unet-mobilenet_v2") == card_path
    _, card = load_checkpoint("test-unet-mobilenet_v2")
    assert card.name == "test-unet-mobilenet_v2"
    with pytest.raises(CheckpointError, match="test-unet-mobilenet_v2"):  # lists what exists
        resolve_checkpoint("no-such-model")


def test_pickle_under_safetensors_name_refused(saved, small_model):
    weights_path, card_path = saved
    torch.save(small_model.state_dict(), weights_path)
    with pytest.raises(CheckpointError, match="not a safetensors file") as info:
        load_checkpoint(card_path)
    assert str(weights_path) in str(info.value) and "pickle" in str(info.value)
    weights_path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(card_path)


def test_modified_weights_fail_the_sha256_check(saved):
    weights_path, card_path = saved
    data = bytearray(weights_path.read_bytes())
    data[-5] ^= 0xFF  # a byte of tensor data, the header stays valid
    weights_path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch") as info:
        load_checkpoint(card_path)
    assert str(weights_path) in str(info.value)


def test_card_encoder_disagreeing_with_weights_names_keys(saved):
    weights_path, card_path = saved
    _edit_card(card_path, encoder="resnet34", weights_sha256=sha256_file(weights_path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(card_path)
    msg = str(info.value)
    assert "do not fit" in msg and "resnet34" in msg and str(weights_path) in msg
    assert "missing from the weights, e.g. encoder." in msg
    assert "unexpected key(s), e.g. encoder.features" in msg


def test_card_band_count_disagreeing_with_weights_names_shapes(saved):
    weights_path, card_path = saved
    _edit_card(card_path, bands=["B02", "B03", "B04", "B08"],
               input_transform=InputTransform.from_stats([0.0] * 4, [1.0] * 4).model_dump())
    with pytest.raises(CheckpointError, match=r"shape mismatch.*\(32, 3, 3, 3\) vs \(32, 4, 3, 3\)"):
        load_checkpoint(card_path)


def test_card_problems(saved):
    weights_path, card_path = saved
    _edit_card(card_path, learning_rate=0.1)
    with pytest.raises(CheckpointError, match="learning_rate: unknown field") as info:
        load_checkpoint(card_path)
    assert str(card_path) in str(info.value) and "\n" not in str(info.value)

    card_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(card_path)

    card_path.unlink()
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(card_path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(weights_path)  # its card is gone


def test_missing_weights(saved):
    weights_path, card_path = saved
    weights_path.unlink()
    with pytest.raises(CheckpointError, match="weights .* not found"):
        load_checkpoint(card_path)


def test_bands_must_be_in_contract_order(saved):
    with pytest.raises(InputError, match="contract order"):
        make_card(bands=["B04", "B03", "B02"])
    with pytest.raises(InputError, match="listed twice"):
        make_card(bands=["B02", "B02", "B04"])
    assert make_card(bands=["b2", "B3", "b4"]).bands == BANDS  # aliases are canonicalized
    _, card_path = saved
    _edit_card(card_path, bands=["B04", "B03", "B02"])
    with pytest.raises(CheckpointError, match="bands: .*contract order"):
        read_card(card_path)


def test_card_validation():
    with pytest.raises(InputError, match="unknown encoder"):
        make_card(encoder="resnet35")
    with pytest.raises(InputError, match="input_transform has 1 value"):
        make_card(input_transform=InputTransform.from_stats([0.0], [1.0]))
    with pytest.raises(InputError, match="fill names 'B08'"):
        make_card(fill={"B08": "mean"})
    with pytest.raises(InputError, match="threshold"):
        make_card(threshold=1.5)
    with pytest.raises(InputError, match="multiple of 16"):
        make_card(arch="deeplabv3plus", encoder="resnet34", patch_size=120)
    assert make_card(arch="unet").arch == "Unet"


def test_save_refuses_a_model_that_does_not_fit_the_card(tmp_path, small_model):
    card = make_card(bands=["B02", "B03", "B04", "B08"],
                     input_transform=InputTransform.from_stats([0.0] * 4, [1.0] * 4))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        save_checkpoint(small_model, card, tmp_path)
    with pytest.raises(InputError, match="dtype"):
        save_checkpoint(small_model, make_card(), tmp_path, dtype="bfloat16")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_no_final_file(tmp_path, small_model, monkeypatch):
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(small_model, make_card(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_input_transform_apply():
    t = InputTransform(scale=[0.5, 2.0], offset=[1.0, 0.0], mean=[2.0, 4.0], std=[2.0, 0.5])
    x = np.array([[[2.0, 4.0]], [[1.0, 3.0]]], dtype=np.float32)  # (C=2, H=1, W=2)
    # band 0: ((x * 0.5 + 1) - 2) / 2; band 1: ((x * 2 + 0) - 4) / 0.5
    want = np.array([[[0.0, 0.5]], [[-4.0, 4.0]]], dtype=np.float32)
    out = t.apply(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, want, rtol=1e-6)
    batch = np.stack([x, x * 2])
    out_b = t.apply(batch)
    assert out_b.shape == (2, 2, 1, 2)
    np.testing.assert_allclose(out_b[0], want, rtol=1e-6)
    np.testing.assert_allclose(out_b[1], t.apply(x * 2), rtol=1e-6)
    np.testing.assert_array_equal(x, [[[2.0, 4.0]], [[1.0, 3.0]]])  # input untouched

    stats = InputTransform.from_stats([10.0, 20.0], [5.0, 10.0])
    assert stats.scale == [1.0, 1.0] and stats.offset == [0.0, 0.0]
    np.testing.assert_allclose(stats.apply(np.full((2, 1, 1), 20.0)).ravel(), [2.0, 0.0])

    with pytest.raises(InputError, match="2 band"):
        t.apply(np.zeros((3, 4, 4), dtype=np.float32))
    with pytest.raises(InputError, match=r"\(C, H, W\)"):
        t.apply(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(InputError, match="std"):
        InputTransform.from_stats([0.0], [0.0])
    with pytest.raises(InputError, match="one value per band"):
        InputTransform(scale=[1.0], offset=[0.0, 0.0], mean=[0.0], std=[1.0])


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 3 * 16 * 16 * 4, 2**30])
def test_apply_filled_in_place_and_channels_last_give_the_bits_of_the_plain_formula(monkeypatch,
                                                                                   chunk_bytes):
    """The in-place transform written into a channels-last buffer equals, bit for bit, the
    out-of-place formula on the NaN-filled input, and leaves its input as it was: whatever the
    chunks it runs in (one patch, 3 patches with a short last chunk, the whole batch)."""
    import models.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "FILL_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(7)
    t = InputTransform(scale=[0.5, 2.0, 1.0], offset=[1.0, 0.0, -3.0], mean=[900.0, 1.5, 0.2],
                       std=[300.0, 0.7, 1.1])
    x = rng.normal(1000, 400, (4, 3, 16, 16)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    before = x.copy()
    col = [np.asarray(v, np.float32).reshape(-1, 1, 1) for v in (t.scale, t.offset, t.mean, t.std)]
    filled = np.where(np.isfinite(x), x, t.fill_values().reshape(-1, 1, 1))
    want = ((filled * col[0] + col[1]) - col[2]) / col[3]
    nhwc = np.empty((4, 16, 16, 3), np.float32).transpose(0, 3, 1, 2)
    got = t.apply_filled(x, out=nhwc)
    assert got is nhwc and got.strides == nhwc.strides
    for out in (got, t.apply_filled(x)):
        assert out.dtype == np.float32 and np.ascontiguousarray(out).tobytes() == want.tobytes()
    assert t.apply_filled(x[1]).tobytes() == want[1].tobytes()  # one patch (C, H, W)
    assert before.tobytes() == x.tobytes()


def test_header_length_with_low_byte_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    """A genuine safetensors file whose header length ends in 0x80 must load (1 in 32 files)."""
    import json as _json
    import struct

    import torch
    from safetensors.torch import save_file

    from models.checkpoint import _check_safetensors_header

    path = tmp_path / "w.safetensors"
    for pad in range(64):
        save_file({"w": torch.zeros(2)}, str(path), metadata={"pad": "x" * pad})
        n = struct.unpack("<Q", path.read_bytes()[:8])[0]
        if n & 0xFF == 0x80:
            break
    else:
        raise AssertionError("could not produce a header length ending in 0x80")
    assert path.read_bytes()[:1] == b"\x80"
    _check_safetensors_header(path)  # must not raise
    assert _json.loads(path.read_bytes()[8:8 + n])["w"]["shape"] == [2]
