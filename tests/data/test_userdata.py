"""User datasets built from corrected masks (sis/userdata.py), and the uncertainty ranking (sis/uncertainty.py)."""
from __future__ import annotations

import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from sis.classes import CAMVID
from sis.data import userdata
from sis.data.dataset import DatasetError, list_pairs, load_split


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SIS_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def _frame(seed=0, h=36, w=48):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), np.uint8), rng.integers(0, 11, (h, w)).astype(np.uint8)


def test_saved_frames_form_a_dataset_the_trainer_reads():
    img, lbl = _frame()
    lbl[0, 0] = CAMVID.void  # "not sure" is allowed
    stem = userdata.save_frame("my-street", img, lbl, CAMVID, source="upload photo.jpg")
    ds = userdata.get_dataset("my-street")
    assert ds.frames == (stem,) and stem.endswith("-upload-photo") and ds.classes.names == CAMVID.names
    frames = load_split(ds.root, "train")
    assert (frames.images[0].permute(1, 2, 0).numpy() == img).all() and (frames.masks[0].numpy() == lbl).all()
    back_img, back_lbl = userdata.read_frame("my-street", stem)
    assert (back_img == img).all() and (back_lbl == lbl).all()
    assert [d.name for d in userdata.list_datasets()] == ["my-street"]


@pytest.mark.parametrize("name,labels,message", [
    ("../evil", None, "cannot name a dataset"),
    ("ok", np.full((36, 48), 40, np.uint8), "class id 40, outside 0..10"),
    ("ok", np.zeros((10, 10), np.uint8), "the label is 10x10 but the image is 48x36"),
])
def test_bad_frames_say_why_and_write_nothing(data_dir, name, labels, message):
    img, lbl = _frame()
    with pytest.raises(DatasetError, match=message):
        userdata.save_frame(name, img, lbl if labels is None else labels, CAMVID)
    assert not list((data_dir / "datasets").rglob("*.png")) if (data_dir / "datasets").exists() else True


def test_two_sessions_saving_into_one_dataset_lose_nothing():
    errors = []

    def save(k):
        try:
            for i in range(5):
                userdata.save_frame("shared", *_frame(10 * k + i), CAMVID, source=f"s{k}")
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)
    threads = [threading.Thread(target=save, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ds = userdata.get_dataset("shared")
    assert not errors and len(ds.frames) == 20 and len(list_pairs(ds.root, "train")) == 20
    assert not list(ds.root.rglob("*.tmp"))


def test_zip_round_trip_remove_and_delete():
    stems = [userdata.save_frame("a", *_frame(i), CAMVID) for i in range(3)]
    data = userdata.to_zip("a")
    with zipfile.ZipFile(__import__("io").BytesIO(data)) as z:
        assert sorted(z.namelist()) == sorted([f"a/train/{s}.png" for s in stems] +
                                              [f"a/trainannot/{s}.png" for s in stems] + ["a/classes.json"])
    b = userdata.import_zip(data, "b")
    assert len(b.frames) == 3
    userdata.remove_frame("a", stems[1])
    assert userdata.get_dataset("a").frames == (stems[0], stems[2])
    with pytest.raises(DatasetError, match="has no frame"):
        userdata.remove_frame("a", stems[1])
    userdata.delete_dataset("a")
    assert [d.name for d in userdata.list_datasets()] == ["b"]
    with pytest.raises(DatasetError, match="the upload is not a valid zip file"):
        userdata.import_zip(b"not a zip", "c")


def test_entropy_and_scores_by_hand():
    from sis.studio.uncertainty import entropy, score
    sure = np.zeros((4, 2, 2), np.float32)
    sure[0] = 1.0
    even = np.full((4, 2, 2), 0.25, np.float32)
    assert np.allclose(entropy(sure), 0, atol=1e-6) and np.allclose(entropy(even), 1.0)
    mixed = np.concatenate([sure[:, :1], even[:, :1]], axis=1)  # top row sure, bottom row uniform
    s = score(mixed)
    assert s.mean_entropy == pytest.approx(0.5, abs=1e-5) and s.unsure_share == 0.5
    assert s.confidence.tolist() == [[1.0, 1.0], [0.25, 0.25]]


class Peaked:
    """An engine whose answer is sure on bright images and unsure on dark ones."""
    name = "peaked"
    temperature = 1.0

    def __init__(self):
        from sis import zoo
        self.cfg = zoo.make_config("pspnet-resnet18")

    def prepare(self, size):
        pass

    def __call__(self, x):
        sharp = x.astype(np.float32).mean(axis=(1, 2, 3)) / 255 * 20  # brightness -> logit margin
        out = np.zeros((len(x), 11, *x.shape[-2:]), np.float32)
        out[:, 0] = sharp[:, None, None]
        return out


def test_rank_puts_the_least_sure_first_and_keeps_only_the_top():
    from sis.studio.uncertainty import rank
    images = [(f"img{v}", np.full((36, 48, 3), v, np.uint8)) for v in (250, 10, 120, 60)]
    got = rank(Peaked(), images, top=2)
    assert [u.name for u in got] == ["img10", "img60"] and got[0].mean_entropy > got[1].mean_entropy
    assert got[0].image.shape == (36, 48, 3) and got[0].confidence.shape == (360, 480)
    assert [u.name for u in rank(Peaked(), images)] == ["img10", "img60", "img120", "img250"]


def test_access_policy_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SIS_DATA_DIR", str(tmp_path))
    for shared, paths, want in [("", "", (False, True)), ("1", "", (True, False)), ("1", "1", (True, True)),
                                ("0", "0", (False, False))]:
        monkeypatch.setenv("SIS_SHARED", shared)
        monkeypatch.setenv("SIS_SERVER_PATHS", paths)
        access = userdata.Access.from_env()
        assert (access.shared, access.server_paths) == want
    assert userdata.Access(False, True).home("abc") == userdata.datasets_dir()
    shared = userdata.Access(True, False)
    homes = {s: shared.home(s) for s in ("abc", "test session id", "../x", "a/b", "x" * 500)}
    assert len(set(homes.values())) == 5 and shared.home("abc") == homes["abc"]  # one folder per session
    assert all(h.parent.parent == tmp_path / "sessions" and h.name == "datasets" for h in homes.values())


def _with_label(zipped: bytes, name: str, label: np.ndarray) -> bytes:
    """``zipped`` with the label PNG ``name`` replaced by ``label``."""
    import io
    with zipfile.ZipFile(io.BytesIO(zipped)) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    png = io.BytesIO()
    Image.fromarray(label, "L").save(png, "PNG")
    parts[name] = png.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for n, b in parts.items():
            z.writestr(n, b)
    return out.getvalue()


def test_a_bad_zip_adds_nothing_and_a_removed_dataset_is_made_anew(data_dir):
    img, lbl = _frame(0)
    stems = [userdata.save_frame("a", *_frame(i), CAMVID) for i in range(2)]
    good, second = userdata.to_zip("a"), f"a/trainannot/{stems[1]}.png"
    with pytest.raises(DatasetError, match="class id 40, outside 0..10"):
        userdata.import_zip(_with_label(good, second, np.full(lbl.shape, 40, np.uint8)), "b")
    with pytest.raises(DatasetError, match="the label is 12x10 but the image is 48x36"):
        userdata.import_zip(_with_label(good, second, np.zeros((10, 12), np.uint8)), "b")
    assert [d.name for d in userdata.list_datasets()] == ["a"]
    userdata.delete_dataset("a")  # another session removed it: a save makes it anew, nothing lost
    stem = userdata.save_frame("a", img, lbl, CAMVID)
    assert userdata.get_dataset("a").frames == (stem,)


def test_a_png_bomb_in_a_dataset_zip_is_refused_before_it_is_decoded(data_dir):
    import io

    from conftest import bomb_png
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("d/train/a.png", bomb_png(7000, 7000))
        z.writestr("d/trainannot/a.png", bomb_png(7000, 7000))
        z.writestr("d/train/b.png", bomb_png(20000, 20000))  # beyond Pillow's own bomb limit
        z.writestr("d/trainannot/b.png", bomb_png(20000, 20000))
    with pytest.raises(DatasetError, match="image a.png is 7000x7000, above the 40 MP a dataset frame may have"):
        userdata.import_zip(buf.getvalue(), "b")
    with pytest.raises(DatasetError, match="image b.png is far above the 40 MP"):
        userdata.import_zip(buf.getvalue().replace(b"a.png", b"c.png"), "b")  # b first now
    assert userdata.list_datasets() == []
