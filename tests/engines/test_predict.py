"""The one image -> probabilities -> labels path (engines.predict), the images users give (data.images) and
painting (vis.paint)."""
import io

import numpy as np
import pytest
import torch
from conftest import bomb_png
from PIL import Image

from sis.data.images import ImageError, iter_images, load_image
from sis.engines.predict import as_batch, at_work_size, batch_at_work_size, labels_and_confidence, predict, work_size
from sis.vis.paint import class_share, colorize, error_map, overlay


def _png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def test_16bit_is_scaled_not_clipped():
    arr = np.array([[0, 32896, 65535]], np.uint16)
    out = load_image(_png_bytes(Image.fromarray(arr)))  # uint16 -> mode I;16
    assert np.asarray(out.image)[0, :, 0].tolist() == [0, 128, 255]
    assert "16-bit scaled to 8-bit" in out.notes


def test_rgba_composited_on_white_or_black():
    im = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    im.putpixel((1, 0), (255, 0, 0, 255))
    white = load_image(_png_bytes(im))
    assert np.asarray(white.image).tolist() == [[[255, 255, 255], [255, 0, 0]]]
    assert "alpha composited on white" in white.notes
    black = load_image(_png_bytes(im), background="black")
    assert np.asarray(black.image)[0, 0].tolist() == [0, 0, 0]


def test_la_and_palette_and_bilevel():
    la = Image.new("LA", (1, 1), (100, 255))
    assert np.asarray(load_image(_png_bytes(la)).image)[0, 0].tolist() == [100, 100, 100]
    p = Image.new("P", (1, 1))
    p.putpalette([10, 20, 30] * 256)
    assert np.asarray(load_image(_png_bytes(p)).image)[0, 0].tolist() == [10, 20, 30]
    one = Image.new("1", (1, 1), 1)
    assert np.asarray(load_image(_png_bytes(one)).image)[0, 0].tolist() == [255, 255, 255]


def test_cmyk_jpeg():
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(buf, "JPEG", quality=100)  # pure red ink
    rgb = np.asarray(load_image(buf.getvalue()).image)
    r, g, b = rgb[4, 4].tolist()
    assert r > 200 and g < 60 and b < 60


def test_int32_and_float_modes():
    buf = io.BytesIO()
    Image.fromarray(np.array([[0, 65535]], np.int32)).save(buf, "TIFF")
    assert np.asarray(load_image(buf.getvalue()).image)[0, :, 0].tolist() == [0, 255]
    buf = io.BytesIO()
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(buf, "TIFF")
    assert np.asarray(load_image(buf.getvalue()).image)[0, :, 0].tolist() == [0, 128, 255]


def test_exif_rotation_applied():
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(buf.getvalue())
    assert out.image.size == (20, 40)
    assert np.asarray(out.image)[2, 10, 0] > 200  # the strip is now on top
    assert any("EXIF orientation 6" in n for n in out.notes)


def test_broken_exif_is_ignored():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    out = load_image(buf.getvalue())
    assert out.image.size == (4, 4)


def test_animated_uses_first_frame():
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = load_image(buf.getvalue())
    assert np.asarray(out.image)[0, 0, 0] > 200 and "first of 2 frames used" in out.notes


def test_not_an_image():
    with pytest.raises(ImageError, match="is not a picture this app can open"):
        load_image(b"hello, I am text", name="notes.png")


def test_empty_file(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    for source in (b"", tmp_path / "zero.jpg"):
        with pytest.raises(ImageError, match=r"is empty \(0 bytes\)"):
            load_image(source, name="zero.jpg")


def test_truncated_jpeg():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    with pytest.raises(ImageError, match="cut short or damaged"):
        load_image(buf.getvalue()[: len(buf.getvalue()) // 2], name="cut.jpg")


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(ImageError, match="8000x8000 = 64 MP, above the 40 MP limit"):
        load_image(bomb_png(8000, 8000), name="big.png")
    # Pillow's own guard (> 89 MP) fires inside open(): same sentence shape, no decoding
    with pytest.raises(ImageError, match="bomb.png is too large to open safely"):
        load_image(bomb_png(20000, 20000), name="bomb.png")


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "nope.png")


def test_work_size_keeps_aspect_and_area():
    assert work_size(360, 480, (360, 480)) == (360, 480)
    assert work_size(4032, 3024, (360, 480)) == (480, 360)
    assert work_size(1, 1, (360, 480)) == (416, 416)


@pytest.fixture(scope="module")
def model(tiny_model):
    from sis.zoo.models import load_for_inference
    return load_for_inference(tiny_model)


@pytest.fixture(scope="module")
def eager(tiny_model):
    from sis import engines
    return engines.load_engine(tiny_model, "eager")


@pytest.mark.parametrize("size", [(1, 1), (37, 51), (360, 480), (600, 300)])
def test_predict_returns_original_size(eager, size):
    img = Image.new("RGB", (size[1], size[0]), (120, 60, 200))
    pred = predict(eager, img)
    assert pred.labels.shape == size and pred.confidence.shape == size and pred.labels.dtype == np.uint8
    assert pred.labels.max() < 11 and 0 < pred.confidence.min() <= pred.confidence.max() <= 1.0 + 1e-6


def test_predict_matches_full_res_forward(model, eager):
    """At the working size no resize happens: labels equal the argmax of a plain forward of the photo."""
    from sis.zoo.preprocess import forward_logits
    m, cfg = model
    img = np.random.default_rng(0).integers(0, 255, (360, 480, 3), np.uint8)
    pred = predict(eager, img)
    with torch.inference_mode():
        ref = forward_logits(m, cfg, torch.from_numpy(img.transpose(2, 0, 1)).unsqueeze(0), amp=False)
    assert (pred.labels == ref.argmax(1)[0].numpy()).mean() == 1.0
    soft = (ref / eager.temperature).softmax(1).max(1).values[0].numpy()  # calibrated: the card's temperature
    np.testing.assert_allclose(pred.confidence, soft, rtol=1e-5, atol=1e-6)


def test_evaluation_and_the_before_after_pictures_answer_a_frame_as_predict_does(model, eager):
    """evaluate and a fine-tune's before/after pictures take a frame of another size through the work size too:
    their answer is predict's but where predict's nearest resize of the labels and their bilinear resize of
    the logits disagree, on edges."""
    from sis.evaluation.evaluate import frame_logits
    m, cfg = model
    rng = np.random.default_rng(1)
    img = np.repeat(np.repeat(rng.integers(0, 255, (25, 62, 3), np.uint8), 15, 0), 20, 1)  # 375x1240, blocks
    with torch.inference_mode():
        logits = frame_logits(m, cfg, torch.from_numpy(img.transpose(2, 0, 1))[None], torch.device("cpu"), amp=False)
    pred = predict(eager, img)
    assert pred.work_size != img.shape[:2] and logits.shape[-2:] == img.shape[:2]
    assert (logits.argmax(1)[0].numpy() == pred.labels).mean() > 0.95


@pytest.mark.parametrize("size", [(64, 96), (375, 1242), (360, 480)])
def test_a_batch_goes_to_the_work_size_as_each_of_its_frames_does(size):
    """Evaluation sizes its batches through the same rule as predict sizes one frame."""
    frames = np.random.default_rng(0).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    batch = batch_at_work_size(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)), (360, 480))
    assert batch.shape[-2:] == work_size(*size, (360, 480))
    for i, rgb in enumerate(frames):
        assert np.array_equal(batch[i], as_batch(at_work_size(rgb, (360, 480)))[0])


def test_labels_and_confidence_by_hand():
    logits = np.array([[[0.0, 2.0]], [[0.0, 0.0]], [[np.log(2.0), -1.0]]], np.float32)  # (3 classes, 1, 2)
    labels, conf = labels_and_confidence(logits)
    assert labels.tolist() == [[2, 0]]
    # pixel 0: exp(0, 0, ln2) = (1, 1, 2) -> 2/4; pixel 1: exp(2, 0, -1)
    np.testing.assert_allclose(conf[0], [0.5, np.exp(2) / (np.exp(2) + 1 + np.exp(-1))], rtol=1e-6)


def test_model_is_read_only(model):
    m, _ = model
    assert not m.training and not any(p.requires_grad for p in m.parameters())


def test_colorize_overlay_share():
    pal = np.zeros((256, 3), np.uint8)
    pal[1] = (200, 0, 0)
    labels = np.array([[0, 1], [1, 1]], np.uint8)
    img = np.full((2, 2, 3), 100, np.uint8)
    assert colorize(labels, pal)[0, 1].tolist() == [200, 0, 0]
    ov = overlay(img, labels, pal, alpha=0.5)
    assert ov[0, 1].tolist() == [150, 50, 50] and ov[0, 0].tolist() == [50, 50, 50]
    only1 = overlay(img, labels, pal, alpha=0.5, visible=[1])
    assert only1[0, 0].tolist() == [100, 100, 100]  # class 0 hidden: image untouched
    assert class_share(labels, 3).tolist() == [0.25, 0.75, 0.0]
    with pytest.raises(ValueError, match="opacity"):
        overlay(img, labels, pal, alpha=1.5)


def test_error_map():
    em = error_map(np.array([[0, 1, 2]]), np.array([[0, 2, 11]]), void=11)
    assert em[0].tolist() == [[40, 170, 60], [220, 40, 40], [0, 0, 0]]


def test_iter_images(tmp_path):
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in iter_images([tmp_path])] == ["a.jpg", "b.png"]
