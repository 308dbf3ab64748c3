import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sis.classes import CAMVID, ClassSet
from sis.data.augment import SegDataset, build_augment, build_photometric
from sis.data.dataset import DatasetError, class_weights, list_pairs, load_classes, load_split, spread


def test_loads_split(tiny_data):
    frames = load_split(tiny_data, "train")
    assert len(frames) == 6 and frames.images[0].shape == (3, 64, 96) and frames.images[0].dtype == torch.uint8
    assert frames.masks[0].shape == (64, 96) and frames.classes == CAMVID


def test_masks_are_held_as_bytes_and_handed_to_the_loss_as_int64(tiny_data):
    frames = load_split(tiny_data, "train")
    assert all(m.dtype == torch.uint8 for m in frames.masks)
    _, mask = SegDataset(frames, build_augment("h", (32, 32)))[0]
    assert mask.dtype == torch.int64 and set(mask.unique().tolist()) <= set(frames.masks[0].unique().tolist())


def test_spread_takes_the_first_and_the_last_and_evenly_between():
    assert spread(367, 4) == [0, 122, 244, 366]
    assert spread(5, 9) == [0, 1, 2, 3, 4] and spread(5, 1) == [0] and spread(5, 0) == []


def test_a_limited_split_reads_only_the_frames_it_keeps(data_copy):
    """Spread evenly (the replay and calibration sets) or the first ones: a frame left out is never opened,
    so a broken one there costs nothing, and a base dataset's 367 frames are not all decoded for 120."""
    (data_copy / "train" / "f001.png").write_bytes(b"not a png")
    frames = load_split(data_copy, "train", 2, evenly=True)
    assert frames.names == ["f000", "f002"]
    assert load_split(data_copy, "train", 1).names == ["f000"]
    with pytest.raises(DatasetError, match="f001"):
        load_split(data_copy, "train", 2)


def test_the_high_contrast_palette_keeps_street_classes_apart_and_others_as_they_are():
    contrast = CAMVID.in_palette("contrast")
    assert contrast.names == CAMVID.names and contrast.void == CAMVID.void and CAMVID.in_palette("dataset") is CAMVID

    def lab(cs):  # sRGB (D65) to CIELAB, where distance is roughly how different two colours look
        c = np.asarray(cs.colors, float) / 255
        c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
        xyz = c @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
        f = np.where((t := xyz / [0.9505, 1.0, 1.089]) > 0.008856, np.cbrt(t), 7.787 * t + 16 / 116)
        return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)

    def nearest(cs):  # the two colours of the set that look most alike: their distance
        c = lab(cs)
        return np.linalg.norm(c[:, None] - c[None], axis=-1)[np.triu_indices(len(c), 1)].min()
    road, car = CAMVID.names.index("Road"), CAMVID.names.index("Car")
    assert np.linalg.norm(lab(contrast)[road] - lab(contrast)[car]) > 2 * np.linalg.norm(lab(CAMVID)[road] -
                                                                                         lab(CAMVID)[car])
    assert nearest(contrast) > 40 > 25 > nearest(CAMVID)
    own = ClassSet(("road", "lane marking"), ((1, 2, 3), (4, 5, 6)))
    assert own.in_palette().colors == (contrast.colors[CAMVID.names.index("Road")], (4, 5, 6))
    with pytest.raises(ValueError, match="unknown palette 'neon'; choose contrast or dataset"):
        CAMVID.in_palette("neon")


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        list_pairs(tmp_path / "nope", "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="no 'trainannot/' folder"):
        list_pairs(tmp_path, "train")


def test_image_without_label(data_copy):
    (data_copy / "trainannot" / "f001.png").unlink()
    with pytest.raises(DatasetError, match=r"train/f001.png has no label trainannot/f001.png"):
        load_split(data_copy, "train")


def test_label_out_of_range(data_copy):
    lbl = np.zeros((64, 96), np.uint8)
    lbl[5, 5] = 17
    Image.fromarray(lbl, "L").save(data_copy / "trainannot" / "f002.png")
    with pytest.raises(DatasetError, match=r"f002.png has class id 17 outside 0..10 \(void is 11\)"):
        load_split(data_copy, "train")


def test_size_mismatch(data_copy):
    Image.fromarray(np.zeros((10, 12), np.uint8), "L").save(data_copy / "valannot" / "f000.png")
    with pytest.raises(DatasetError, match=r"size mismatch: val/f000.png is 96x64 but its label is 12x10"):
        load_split(data_copy, "val")


def test_own_class_list(data_copy):
    (data_copy / "classes.json").write_text(json.dumps(
        {"names": [f"c{i}" for i in range(12)], "colors": [[i, i, i] for i in range(12)], "void": 255}))
    frames = load_split(data_copy, "train")
    assert frames.classes.num_classes == 12 and frames.classes.void == 255
    (data_copy / "classes.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_classes(data_copy)
    (data_copy / "classes.json").write_text(json.dumps({"names": ["a"], "colors": [[1, 2]]}))
    with pytest.raises(DatasetError, match="not an RGB triple"):
        load_classes(data_copy)


def test_void_must_not_collide():
    with pytest.raises(ValueError, match="collides"):
        ClassSet(("a", "b"), ((0, 0, 0), (1, 1, 1)), void=1)


def _coded_frames():
    """An image whose red channel equals its label: any misalignment shows."""
    from sis.data.dataset import Frames
    # 4x4 blocks of one label, so resizing changes values only at block edges
    lbl = (torch.arange(6 * 8).reshape(6, 8) % 11).repeat_interleave(4, 0).repeat_interleave(4, 1)
    img = torch.stack([lbl.to(torch.uint8), torch.zeros_like(lbl, dtype=torch.uint8),
                       torch.zeros_like(lbl, dtype=torch.uint8)])
    return Frames(["a"], [img], [lbl], CAMVID)


@pytest.mark.parametrize("flips,crop,scale", [("hv", None, (1.0, 1.0)), ("h", (16, 20), (1.0, 1.0)),
                                              ("v", (30, 40), (1.0, 1.0)), ("hv", (16, 16), (1.5, 2.0))])
def test_augment_keeps_image_and_mask_aligned(flips, crop, scale):
    torch.manual_seed(0)
    ds = SegDataset(_coded_frames(), build_augment(flips, crop, scale, fill_label=11))
    flipped = 0
    for _ in range(12):
        img, mask = ds[0]
        if crop:
            assert tuple(mask.shape) == crop
        def agree(m):
            ok = m != 11
            return float((img[0][ok].long() == m[ok]).float().mean())
        if scale == (1.0, 1.0):
            assert agree(mask) == 1.0
        else:  # bilinear (image) vs nearest (mask) differ at block edges, far less than a misalignment
            assert agree(mask) > max(agree(mask.flip(0)), agree(mask.flip(1))) + 0.2
        flipped += int(not torch.equal(mask[:1, :5], torch.tensor([[0, 0, 0, 0, 1]])))
    assert flipped > 0  # random transforms actually did something


@pytest.mark.parametrize("level,lo,hi", [("camera", 170, 200), ("camera-half", 70, 130)])
def test_photometric_augmentation_changes_the_image_alone_on_its_share_of_the_frames(level, lo, hi):
    """camera draws most frames through some op (each op has its own chance); camera-half leaves about
    half of them as they were; the mask is never touched."""
    torch.manual_seed(0)
    frames = _coded_frames()
    ds = SegDataset(frames, build_augment("", None), photometric=build_photometric(level))
    changed = 0
    for _ in range(200):
        img, mask = ds[0]
        assert torch.equal(mask, frames.masks[0]) and img.dtype == torch.uint8 and img.shape == frames.images[0].shape
        changed += int(not torch.equal(img, frames.images[0]))
    assert lo <= changed <= hi, changed


@pytest.mark.parametrize("g", [0.5, 2.0])
def test_the_gamma_op_darkens_or_lifts_the_midtones_by_its_exponent(g):
    from torchvision import tv_tensors

    from sis.data.augment import _Gamma
    img = tv_tensors.Image(torch.arange(256, dtype=torch.uint8).expand(3, 4, -1).clone())
    out = _Gamma((g, g))(img)
    expected = 255 * (torch.arange(256) / 255) ** g
    assert isinstance(out, tv_tensors.Image) and out.dtype == torch.uint8
    assert (out[0, 0].float() - expected).abs().max() <= 1  # within one 8-bit level
    assert out[0, 0, 0] == 0 and out[0, 0, 255] == 255


def test_an_unknown_photometric_level_is_one_sentence():
    assert build_photometric("none") is None
    with pytest.raises(ValueError, match="unknown photometric augmentation 'sepia'; choose none, camera, camera-half"):
        build_photometric("sepia")


def test_median_frequency_weights(data_copy):
    frames = load_split(data_copy, "train")
    w = class_weights(frames, "median")
    from sis.data.dataset import class_frequencies
    f = class_frequencies(frames)
    present = f > 0
    # weight * frequency is the same constant (the median frequency) for present classes
    prod = (w[present].double() * f[present] / f.sum())
    assert torch.allclose(prod, prod[0].expand_as(prod), rtol=1e-5)
    assert torch.allclose(class_weights(frames, "sqrt-median"), w.sqrt())
    with pytest.raises(ValueError, match="unknown class weighting"):
        class_weights(frames, "bogus")


def _zip(files: dict) -> bytes:
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_zip_dataset(tmp_path, tiny_data):
    from sis.data.dataset import extract_dataset_zip
    files = {f"mydata/{p.relative_to(tiny_data)}": p.read_bytes() for p in tiny_data.rglob("*.png")}
    root = extract_dataset_zip(_zip(files), tmp_path / "a")
    assert root.name == "mydata" and len(load_split(root, "train")) == 6
    no_labels = {k: v for k, v in files.items() if "annot" not in k}
    with pytest.raises(DatasetError, match="has images in train/ but no labels"):
        extract_dataset_zip(_zip(no_labels), tmp_path / "b")
    with pytest.raises(DatasetError, match="points outside the archive"):
        extract_dataset_zip(_zip({"../evil.txt": b"x"}), tmp_path / "c")
    with pytest.raises(DatasetError, match="not a valid zip"):
        extract_dataset_zip(b"PK-not-really", tmp_path / "d")
    with pytest.raises(DatasetError, match="unpacks to .* above"):
        extract_dataset_zip(_zip({"train/a.png": b"0" * 5000}), tmp_path / "e", max_bytes=1000)


def test_a_zip_whose_headers_lie_is_one_sentence_and_leaves_nothing(tmp_path, tiny_data):
    """Entries whose data do not match their headers (a flipped byte, a smaller size declared, data
    cut short), and a zip that is refused after unpacking (no labels), end in DatasetError with no
    folder left behind."""
    import struct
    import zipfile

    from sis.data.dataset import extract_dataset_zip
    files = {f"mydata/{p.relative_to(tiny_data)}": p.read_bytes() for p in tiny_data.rglob("*.png")}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    good = buf.getvalue()
    first = files[next(iter(files))]
    at = good.index(first[:64])
    flipped = good[:at + 40] + bytes([good[at + 40] ^ 0xFF]) + good[at + 41:]  # the CRC no longer matches
    cd = good.rindex(b"PK\x01\x02")  # the last entry's central header: declare a smaller size than it holds
    smaller = bytearray(good)
    size = struct.unpack_from("<I", smaller, cd + 24)[0]
    struct.pack_into("<I", smaller, cd + 24, size // 2)
    cut = good[:at + len(first) // 2] + good[at + len(first):]  # data missing in the middle
    for k, data in enumerate([flipped, bytes(smaller), cut]):
        dest = tmp_path / f"bad{k}"
        with pytest.raises(DatasetError, match="^the zip"):
            extract_dataset_zip(data, dest)
        assert not dest.exists()
    no_labels = {k: v for k, v in files.items() if "annot" not in k}
    with pytest.raises(DatasetError, match="no labels"):
        extract_dataset_zip(_zip(no_labels), tmp_path / "nolabels")
    assert not (tmp_path / "nolabels").exists()
