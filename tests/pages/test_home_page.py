"""Home (AppTest): the models, a segmented sample, the default model and why."""
import json
import re

from apptest import _app


def test_home_lists_models(app_env):
    at = _app()
    assert at.title[0].value == "SIS Studio"
    names = [row for df in at.dataframe for row in df.value["model"].tolist()]
    assert "run:tiny" in names


def test_home_shows_a_segmented_sample_first(app_env):
    """Home shows before it tells: a sample frame and its overlay from the default model, then the
    paper's four pairs with their val scores."""
    from sis import zoo
    at = _app()
    res = at.session_state["_seg_last:home"][1]
    assert res.image.shape[:2] == res.labels.shape == (360, 480) and res.engine == "onnxruntime-int8"
    assert res.scores is None and 0 < res.mean_confidence <= 1 and abs(res.share.sum() - 1) < 1e-6
    shipped = zoo.shipped_models()
    for m in at.metric:
        model = next(n for n in shipped if zoo.MODELS[n].paper == m.label)
        assert m.value == f"{100 * zoo.read_card(shipped[model]).val_miou:.1f}% mIoU"
    assert sorted(m.label for m in at.metric) == sorted(zoo.MODELS[n].paper for n in shipped if zoo.MODELS[n].paper)


def test_zoo_table_shows_this_hosts_engine(app_env):
    from sis import engines, host, store
    from sis.engines.cache import file_key
    folder = app_env / "models" / "tiny"
    c = json.loads((folder / "card.json").read_text())
    c["fast_path"] = {"default": "onnxruntime-int8",
                      "backends": {"onnxruntime-int8": {"miou_delta": -0.1, "speedup_vs_eager": 3.0, "median_ms": 30.0}}}
    (folder / "card.json").write_text(json.dumps(c))
    at = _app()
    row = at.dataframe[0].value.set_index("model").loc["run:tiny"]
    assert row["engine here"] == "onnxruntime-int8" and row["engine ms"] == 30 and row["timed"] == "when shipped"
    here = {n: {"speedup_vs_eager": 0.5, "median_ms": 200.0, "miou_delta": None}
            for n, why in engines.available().items() if why is None}
    here["eager"] = {"speedup_vs_eager": 1.0, "median_ms": 100.0, "miou_delta": 0.0}
    store.put_engines(host.host_key(), file_key(folder), "pspnet-resnet18", here)
    at = _app()
    row = at.dataframe[0].value.set_index("model").loc["run:tiny"]
    assert row["engine here"] == "eager" and row["engine ms"] == 100 and row["timed"] == "this host"


def test_model_picker_labels_carry_val_miou(app_env):
    """The picker names each model's val mIoU from its card, so the most accurate is easy to find."""
    from sis import zoo
    at = _app("pages/segment.py")
    labels = at.selectbox(key="seg_model").options
    for name, folder in zoo.shipped_models().items():
        miou = zoo.read_card(folder).val_miou
        assert any(o.startswith(name) and f"val mIoU {100 * miou:.1f}" in o for o in labels), (name, labels)
    assert any(re.fullmatch(r"tiny · val mIoU [\d.]+ \(fine-tuned here\)", o) for o in labels), labels


def test_default_model_is_the_most_accurate_that_answers_in_time(app_env):
    """The rule in catalog.default_choice: the most accurate shipped model whose engine answers a frame
    within INTERACTIVE_MS here. The cards' timings make it unet-vgg11_bn; a comparison kept on this host
    that times it slower than the bound moves the default to the next most accurate, unet-resnet18."""
    from sis import engines, host, store, zoo
    from sis.engines.cache import file_key
    from sis.studio import catalog
    entries = catalog.available_models()
    choice = catalog.default_choice(entries)
    cards = {k: zoo.read_card(e.folder) for k, e in entries.items() if e.shipped}
    fast_enough = [k for k in cards if engines.choose_engine(entries[k].folder).figure.median_ms
                   <= catalog.INTERACTIVE_MS]
    assert choice.key == max(fast_enough, key=lambda k: cards[k].val_miou) == "unet-vgg11_bn"
    assert "within 150 ms" in choice.reason
    folder = entries["unet-vgg11_bn"].folder
    slow = {n: {"speedup_vs_eager": 1.0 + i, "median_ms": 1000.0 / (1.0 + i), "miou_delta": None}
            for i, (n, why) in enumerate(engines.available().items()) if why is None}
    store.put_engines(host.host_key(), file_key(folder), "unet-vgg11_bn", slow)
    assert engines.choose_engine(folder).figure.median_ms > catalog.INTERACTIVE_MS
    assert catalog.default_key(catalog.available_models()) == "unet-resnet18"
    at = _app()
    assert any("Default model: unet-resnet18: the most accurate shipped model" in c.value for c in at.caption)


def test_default_model_does_not_flip_on_a_timing_near_the_line(app_env):
    """A kept comparison that times the default's engine a little over INTERACTIVE_MS (159 ms: one taken
    on a slightly busy machine did) keeps the card's verdict; only one clearly beyond the margin moves it."""
    from sis import engines, host, store
    from sis.engines.cache import file_key
    from sis.studio import catalog
    assert catalog.interactive(72.7, None) and not catalog.interactive(193.8, None)
    assert catalog.interactive(72.7, 159.0) and catalog.interactive(72.7, 187.0) and not catalog.interactive(72.7, 190.0)
    assert not catalog.interactive(160.0, 140.0) and catalog.interactive(160.0, 110.0)
    entries = catalog.available_models()
    folder = entries["unet-vgg11_bn"].folder

    def keep(ms):
        here = {n: {"speedup_vs_eager": 300.0 / ms if n != "eager" else 1.0, "median_ms": ms if n != "eager" else 300.0,
                    "miou_delta": 0.0} for n, why in engines.available().items() if why is None}
        store.put_engines(host.host_key(), file_key(folder), "unet-vgg11_bn", here)
    keep(159.0)
    assert catalog.default_key(catalog.available_models()) == "unet-vgg11_bn"
    keep(200.0)
    assert catalog.default_key(catalog.available_models()) == "unet-resnet18"
