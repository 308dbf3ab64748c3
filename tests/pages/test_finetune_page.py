"""Fine-tune (AppTest): starting, stopping, datasets, and the models it makes."""
import io
import os
import shutil
from pathlib import Path

import pytest
from apptest import _app, _select_run, _wait_for_jobs

from sis.studio import ui


@pytest.mark.slow
def test_finetune_start_twice_and_stop_twice(app_env, tiny_data):
    at = _app("pages/finetune.py")
    at.selectbox(key="ft_model").set_value("run:tiny")
    at.selectbox(key="ft_dataset").set_value(ui.SERVER_FOLDER)
    at.text_input(key="ft_folder").set_value(str(tiny_data))
    at.number_input(key="ft_length").set_value(2)
    at.selectbox(key="ft_crop").set_value("192x256")
    at.button(key="ft_start").click().run()  # Start
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.text_input(key="ft_folder").set_value(str(tiny_data))
    at.button(key="ft_start").click().run()  # Start again while running
    assert any("already has a fine-tuning job running" in e.value for e in at.error)
    at.button(key="ft_stop").click().run()  # Stop
    at.button(key="ft_stop").click().run()  # Stop again
    assert not at.exception
    manager = _wait_for_jobs()
    job = next(iter(manager.jobs.values()))
    assert job.status in ("stopped", "done"), job.message
    manager.jobs.clear()


def test_finetune_on_a_shared_server_lists_only_this_sessions_datasets(app_env, tiny_data, monkeypatch):
    """SIS_SHARED=1: no typed server folder, and a visitor's list holds CamVid (when present) and the
    datasets made in their own session, never another session's."""
    from sis.data import userdata
    from sis.data.dataset import list_pairs, read_label, read_rgb
    monkeypatch.setenv("SIS_SHARED", "1")
    at = _app("pages/finetune.py")
    access = userdata.Access.from_env()
    assert access.shared and not access.server_paths
    (img, lbl), classes = list_pairs(tiny_data, "train")[0], userdata.load_classes(tiny_data)
    userdata.save_frame("mine", read_rgb(img), read_label(lbl), classes, home=access.home(at.session_state["sid"]))
    userdata.save_frame("theirs", read_rgb(img), read_label(lbl), classes, home=access.home("another-session"))
    userdata.save_frame("server-wide", read_rgb(img), read_label(lbl), classes)
    at.run()
    options = at.selectbox(key="ft_dataset").options
    assert "mine (1 frames, from the Correct page)" in options
    assert not any(o.startswith(("theirs", "server-wide")) for o in options) and ui.SERVER_FOLDER not in options
    assert not [t for t in at.text_input if t.key == "ft_folder"]  # no typed path on a shared server
    monkeypatch.setenv("SIS_SHARED", "0")
    at.run()  # a local server: every dataset, and a typed folder
    options = at.selectbox(key="ft_dataset").options
    assert any(o.startswith("server-wide") for o in options) and ui.SERVER_FOLDER in options


def test_finetune_says_where_it_looked_for_camvid_and_how_to_get_it(app_env, tiny_data, tmp_path, monkeypatch):
    """A fresh clone with no CamVid beside it: replay is off and greyed out, and the page says why and what
    to do; with CamVid at $SIS_CAMVID it is offered and replayed by default, and the sentence is gone."""
    from sis.studio import catalog
    monkeypatch.delenv("SIS_CAMVID", raising=False)
    monkeypatch.setattr(catalog, "SAMPLES_DIR", tmp_path / "elsewhere" / "assets" / "samples")  # no ../shared
    at = _app("pages/finetune.py")
    replay = at.checkbox(key="ft_replay")
    assert replay.disabled and not replay.value
    said = [c.value for c in at.caption if c.value.startswith("CamVid is not on this server")]
    assert len(said) == 1 and str(app_env / "camvid") in said[0] and "python -m sis download" in said[0]
    monkeypatch.setenv("SIS_CAMVID", str(tiny_data))
    at = _app("pages/finetune.py")
    replay = at.checkbox(key="ft_replay")
    assert not replay.disabled and replay.value
    assert not [c for c in at.caption if c.value.startswith("CamVid is not on this server")]
    assert any(o.startswith("CamVid") for o in at.selectbox(key="ft_dataset").options)


def test_finetune_on_a_small_host_says_a_run_will_likely_run_out_of_memory(app_env, monkeypatch):
    monkeypatch.setenv("SIS_MEMORY_LIMIT_MB", "1024")  # a hosted instance
    at = _app("pages/finetune.py")
    (said,) = [w.value for w in at.warning if "stopped for memory" in w.value]
    assert said.startswith("This server has 1.0 GB of memory") and str(app_env / "models") in said
    monkeypatch.setenv("SIS_MEMORY_LIMIT_MB", "8192")
    at = _app("pages/finetune.py")
    assert not [w for w in at.warning if "stopped for memory" in w.value]


def test_finetune_missing_folder(app_env, tmp_path):
    from sis.evaluation import before_after
    at = _app("pages/finetune.py")
    assert at.number_input(key="ft_length").value == before_after.STEPS == 60  # the measured default (docs/correct.md)
    at.selectbox(key="ft_dataset").set_value(ui.SERVER_FOLDER)
    at.text_input(key="ft_folder").set_value(str(tmp_path / "nowhere"))
    at.button(key="ft_start").click().run()
    assert not at.exception and "does not exist" in at.error[0].value


def test_finetune_zip_without_labels_says_so(app_env, tiny_data):
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted((tiny_data / "train").iterdir()):
            z.write(p, f"train/{p.name}")
    at = _app("pages/finetune.py")
    at.file_uploader(key="ft_zip").upload("street.zip", buf.getvalue(), "application/zip")
    at.button(key="ft_start").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "no labels (no trainannot/ folder)" in at.error[0].value
    at.file_uploader(key="ft_zip").upload("notes.zip", b"not a zip", "application/zip")
    at.button(key="ft_start").click().run()
    assert "not a valid zip file" in at.error[0].value


@pytest.mark.slow
def test_finetune_on_my_dataset_with_replay(app_env, tiny_data, monkeypatch):
    """Five saved frames and no val/: the page says there is no validation, mixes in the base set's frames
    (CamVid's place taken by the tiny dataset here), and the run ends with a model."""
    from sis.data import userdata
    from sis.data.dataset import list_pairs, read_label, read_rgb
    from sis.studio import catalog
    for img, lbl in list_pairs(tiny_data, "train")[:5]:
        userdata.save_frame("mine", read_rgb(img), read_label(lbl), userdata.load_classes(tiny_data))
    monkeypatch.setattr(catalog, "camvid_dir", lambda: tiny_data)
    from sis import zoo  # its card measured that three replayed frames in four forget less (as pspnet-resnet18's)
    measured = {"replay_ratio": 0.75, "init_share": 0.25}  # and that a quarter of its weights kept forgets less
    zoo.update_card(Path(os.environ["SIS_DATA_DIR"]) / "models" / "tiny", adaptation=measured)
    at = _app("pages/finetune.py")
    at.selectbox(key="ft_model").set_value("run:tiny")
    at.selectbox(key="ft_dataset").set_value("mine (5 frames, from the Correct page)")
    at.number_input(key="ft_length").set_value(2)
    assert at.selectbox(key="ft_ratio").value == "the model's default"
    at.button(key="ft_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Validation: none: the dataset has no val/ split and 5 frames" in i.value and
               "Replay: 75% of each batch" in i.value and "25% of the starting model's weights averaged in" in i.value
               for i in at.info), [i.value for i in at.info]
    manager = _wait_for_jobs()
    (job,) = manager.jobs.values()
    assert job.status == "done", job.message
    assert job.cfg["replay"] == str(tiny_data) and job.cfg["data"].endswith("datasets/mine")
    assert job.cfg["replay_ratio"] == 0.75 and job.cfg["init_share"] == 0.25
    at.run()  # the run ended: before and after, on the base set's val frames (no frame of 5 is held out)
    assert not at.exception
    assert any(c.value.startswith("It runs here on eager") for c in at.caption), [c.value for c in at.caption]
    assert any(m.value.startswith("**camvid_tiny0 val (what the model may forget)** (3 frames): mIoU")
               for m in at.markdown), [m.value for m in at.markdown]
    assert len(at.dataframe[0].value) == 12 and len(at.get("image")) == 12  # 11 classes + the mean; label, before, after of 4 frames
    manager.jobs.clear()


def test_a_model_made_here_can_be_renamed_and_its_run_follows(app_env):
    """Rename on Fine-tune: every picker then offers the new name, the runs table's row follows the folder,
    a taken name or a shipped model is refused in one sentence."""
    from sis import store
    from sis.studio import catalog
    store.upsert_run("r1", model="pspnet-resnet18", init="random", data="data", status="done", steps=2,
                     out_dir=str(app_env / "models" / "tiny"))
    at = _app("pages/finetune.py")
    at.selectbox(key="ft_remove_pick").set_value("run:tiny")
    at.text_input(key="ft_rename_to").input("my street").run()
    at.button(key="ft_rename").click().run()
    assert not at.exception and any(s.value == "Renamed tiny to my-street" for s in at.success)
    assert "run:my-street" in catalog.available_models() and "run:tiny" not in catalog.available_models()
    assert at.text_input(key="ft_rename_to").value == ""
    weights = (app_env / "models" / "my-street" / "model.safetensors").stat().st_size
    assert any(c.value == f"{catalog.size_on_disk(catalog.available_models()['run:my-street']) / 2**20:.0f} MB on "
               "this server's disk (weights and graphs); Remove gives it back." for c in at.caption)
    assert catalog.size_on_disk(catalog.available_models()["run:my-street"]) > weights
    assert [r["out_dir"] for r in store.list_runs()] == [str(app_env / "models" / "my-street")]
    shutil.copytree(app_env / "models" / "my-street", app_env / "models" / "other")
    at.run()
    at.selectbox(key="ft_remove_pick").set_value("run:other")
    at.text_input(key="ft_rename_to").input("my-street").run()
    at.button(key="ft_rename").click().run()
    assert [e.value for e in at.error] == ["a model named 'my-street' is here already; choose another name"]
    with pytest.raises(catalog.CatalogError, match="shipped model"):
        catalog.rename_model(catalog.available_models()["unet-vgg11_bn"], "mine")


def test_a_fine_tuned_model_shows_its_verdict_and_can_be_named_and_removed(app_env):
    """A run that lost 7.4 points on CamVid val is flagged in the pickers and warned about when picked;
    Fine-tune removes it (its files; its row in the runs table stays, marked removed), and refuses a name that
    is taken or not a name."""
    from sis import store, zoo
    from sis.evaluation.before_after import FOLDER, BeforeAfter, Scores
    from sis.studio import catalog
    folder = app_env / "models" / "tiny"
    store.upsert_run("r1", model="pspnet-resnet18", status="done", out_dir=str(folder),
                     init=str(zoo.shipped_models()["pspnet-resnet18"]))
    store.upsert_run("r2", model="pspnet-resnet18", status="done", out_dir=str(app_env / "models" / "gone"),
                     init=str(folder))  # a fine-tune of the fine-tuned model
    (folder / FOLDER).mkdir()
    BeforeAfter("camvid", ("Sky",), (Scores("your held-out frames", 2, {"miou": 0.50}, {"miou": 0.561}),
                                     Scores("camvid val (what the model may forget)", 20, {"miou": 0.70},
                                            {"miou": 0.626})), ()).save(folder)
    assert (folder / FOLDER / "summary.json").is_file()
    at = _app("pages/segment.py")
    assert "tiny · +6.1 on your frames, -7.4 on camvid — forgot (fine-tuned here)" in at.selectbox(key="seg_model").options
    _select_run(at)
    assert any("tiny lost 7.4 points of mIoU on camvid val" in w.value for w in at.warning)
    with pytest.raises(catalog.CatalogError, match="is here already"):
        catalog.run_name("tiny", "x")
    with pytest.raises(catalog.CatalogError, match="cannot name a model"):
        catalog.run_name("../evil", "x")
    assert catalog.run_name("  my street ", "x") == "my-street" and catalog.run_name("", "x-1") == "x-1"
    at = _app("pages/finetune.py")
    assert not any("None" in str(v) for v in at.dataframe[-1].value.to_numpy().ravel())
    # the runs table says what each run started from, as the pickers name it
    assert sorted(at.dataframe[-1].value["from"]) == ["pspnet-resnet18", "run:tiny"]
    at.selectbox(key="ft_remove_pick").set_value("run:tiny")
    at.button(key="ft_remove").click().run()
    assert catalog.started_from(str(folder), catalog.available_models()) == "tiny"  # removed: its folder's name
    assert [catalog.started_from(i, {}) for i in ("random", "imagenet", None)] == ["random", "ImageNet encoder", ""]
    assert not folder.exists() and "run:tiny" not in catalog.available_models()
    # the run's row stays, as its record, and says its model was removed
    at = _app("pages/finetune.py")
    assert "tiny (removed)" in list(at.dataframe[-1].value["saved as"])
    with pytest.raises(catalog.CatalogError, match="shipped model"):
        catalog.remove_model(catalog.available_models()["unet-vgg11_bn"])
