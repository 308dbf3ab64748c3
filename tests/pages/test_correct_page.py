"""Correct (AppTest): ranking, painting, saving."""
import numpy as np
import pytest
from apptest import _app, _draft, _png


def test_correct_page_saves_the_models_answer_and_a_fill_then_undo(app_env):
    """The page's logic without a browser (the canvas draws nothing here): a sample frame's draft at the
    model's working size, a saved label equal to the model's answer, datasets listed, and Undo."""
    from sis.data import userdata
    at = _app("pages/correct.py")
    at.selectbox(key="cor_model").set_value("run:tiny").run()
    assert not at.exception, at.exception
    draft = _draft(at)
    assert draft.image.shape[:2] == draft.prediction.shape == (360, 480) and not draft.history
    assert any("0.0% of the pixels changed" in c.value for c in at.caption)
    at.text_input(key="cor_dataset").set_value("mine").run()
    at.button(key="cor_save").click().run()
    assert not at.exception and "in 'mine' (1 frames), at 480x360, the size the model works at" in at.success[0].value
    assert at.warning[-1].value.startswith("This is the model's own answer, unchanged")
    at.button(key="cor_save").click().run()  # saved twice as it stands: said, not added again
    (frame,) = userdata.get_dataset("mine").frames
    assert at.info[-1].value == f"Already saved as {frame} in 'mine' with this mask; change the mask to save " \
                                "another version."
    # a frame is removed only once asked again, and Keep it keeps it
    at.button(key="cor_rm:mine").click().run()
    assert any(w.value == f"Remove {frame} from 'mine'? Its photo and mask are deleted." for w in at.warning)
    at.button(key="cor_rm_no:mine").click().run()
    assert list(userdata.get_dataset("mine").frames) == [frame] and not at.exception
    assert [e.proto.label for e in at.get("page_link")] == ["Teach a model with 'mine' on the Fine-tune page"]
    at.switch_page("pages/finetune.py").run()  # the dataset just saved into comes first there
    assert at.selectbox(key="ft_dataset").value == "mine (1 frames, from the Correct page)"
    at.switch_page("pages/correct.py").run()
    at.selectbox(key="cor_model").set_value("run:tiny").run()  # widgets start afresh on a page switch
    assert _draft(at) is draft  # the session kept the draft
    img, lbl = userdata.read_frame("mine", frame)
    assert (lbl == draft.prediction).all() and (img == draft.image).all()
    # a region filled (as a click on the canvas does), then undone
    import numpy as np

    from sis.studio.correct import fill_region
    draft.commit(fill_region(draft.labels, (10, 10), (360, 480), 8))
    at.run()
    assert draft.version == 1 and not any("0.0% of the pixels changed" in c.value for c in at.caption)
    at.button(key="cor_undo").click().run()
    assert draft.version == 0 and (draft.labels == draft.prediction).all() and np.all(lbl == draft.labels)
    at.text_input(key="cor_dataset").set_value("../bad").run()
    at.button(key="cor_save").click().run()
    assert "cannot name a dataset" in at.error[0].value
    at.button(key="cor_rm:mine").click().run()
    at.button(key="cor_rm_yes:mine").click().run()
    assert not userdata.get_dataset("mine").frames and not at.exception


def test_correct_page_keeps_the_corrections_of_an_image_left_for_another(app_env):
    from sis.studio.correct import fill_region
    at = _app("pages/correct.py")
    at.selectbox(key="cor_model").set_value("run:tiny").run()
    first = at.selectbox(key="cor_sample").value
    draft = _draft(at)
    draft.commit(fill_region(draft.labels, (10, 10), (360, 480), 8))
    second = next(o for o in at.selectbox(key="cor_sample").options if o != first)
    at.selectbox(key="cor_sample").set_value(second).run()
    assert not at.exception and _draft(at) is not draft and not _draft(at).history
    assert any(c.value.startswith(f"Unsaved corrections are kept for this session on {first}") for c in at.caption)
    at.selectbox(key="cor_sample").set_value(first).run()  # back: the fill is still there
    assert _draft(at) is draft and draft.version == 1


def test_correct_page_ranks_uploaded_photos_least_sure_first(app_env):
    at = _app("pages/correct.py")
    at.selectbox(key="cor_model").set_value("run:tiny").run()
    at.radio(key="cor_source").set_value("Photos").run()
    rng = np.random.default_rng(0)
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        at.file_uploader(key="cor_photos").upload(name, _png(rng.integers(0, 255, (48 + 8 * i, 64, 3), np.uint8)),
                                                  "image/png")
    at.run()
    assert not at.exception, at.exception
    ranked = at.session_state["_ranked"][1]
    assert sorted(u.name for u in ranked) == ["a.png", "b.png", "c.png"]
    assert [u.mean_entropy for u in ranked] == sorted((u.mean_entropy for u in ranked), reverse=True)
    assert at.selectbox(key="cor_pick").value == 0 and _draft(at).image.shape[2] == 3


@pytest.mark.slow
def test_correct_page_ranks_the_frames_of_a_clip(app_env):
    at = _app("pages/correct.py")
    at.selectbox(key="cor_model").set_value("run:tiny").run()
    at.radio(key="cor_source").set_value("Frames of a clip").run()
    at.number_input(key="cor_stride").set_value(25).run()
    assert not at.exception, at.exception
    ranked = at.session_state["_ranked"][1]
    assert sorted(u.index for u in ranked) == [0, 25, 50, 75, 100] and ranked[0].image.shape == (360, 480, 3)
    assert _draft(at).prediction.shape == (360, 480)


def test_a_clip_uploaded_on_video_is_offered_on_correct(app_env, tmp_path):
    from conftest import clip_frames, write_clip
    clip = write_clip(tmp_path / "drive.mp4", clip_frames(6, 48, 64))
    at = _app("pages/video.py")
    at.radio(key="vid_source").set_value("Upload").run()
    at.file_uploader(key="vid_upload").upload("drive.mp4", clip.read_bytes(), "video/mp4").run()
    assert not at.exception and at.info[0].value.startswith("64x48 at 10 fps"), [i.value for i in at.info]
    at.switch_page("pages/correct.py").run()
    at.selectbox(key="cor_model").set_value("run:tiny").run()
    assert any("opened on the Video page" in c.value for c in at.caption)
    at.radio(key="cor_source").set_value("Frames of a clip").run()
    at.number_input(key="cor_stride").set_value(2).run()
    assert not at.exception, at.exception
    assert sorted(u.index for u in at.session_state["_ranked"][1]) == [0, 2, 4]
