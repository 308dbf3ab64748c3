import streamlit as st

from sis.classes import CAMVID
from sis.studio import catalog, ui
from sis.vis import report

ui.ensure_router(__file__)
st.title("SIS Studio")
st.markdown(
    "Semantic segmentation of street scenes, after *Semantic Image Segmentation Using Convolutional Neural "
    "Networks* (Tahir, Xiao, Shaker): ImageNet-style encoders (**VGG**, **ResNet**) paired with segmentation "
    "decoders (**U-Net**, **PSPNet**), trained on **CamVid** (11 classes + void).")

c1, c2, c3 = st.columns(3)
c4, c5, c6 = st.columns(3)
c1.page_link("pages/segment.py", label="Segment your photos", icon=":material/image_search:",
             query_params={"open": "upload"})
c2.page_link("pages/video.py", label="Segment a clip", icon=":material/movie:")
c3.page_link("pages/correct.py", label="Correct the model", icon=":material/brush:")
c4.page_link("pages/compare.py", label="Compare models", icon=":material/compare:")
c5.page_link("pages/finetune.py", label="Fine-tune live", icon=":material/model_training:")
c6.page_link("pages/benchmark.py", label="Benchmark this host", icon=":material/speed:")

entries = catalog.available_models()
gallery = catalog.samples()
default = catalog.default_choice(entries)
key = default.key
if key and gallery:
    entry, sample = entries[key], gallery[0]
    res = ui.segment_cached(entry, f"sample:{sample.name}", ui.load_image(sample.image).image, slot="home")
    shown = ui.shown(CAMVID)  # the session's colours
    a, b = st.columns(2)
    a.image(res.image, caption="A CamVid val frame", width="stretch")
    b.image(report.paint(res, shown, 0.55), width="stretch",
            caption=f"{key}, the default model, on {res.engine}: {res.ms:.0f} ms for this one frame on this host "
                    "(a server's first answers are the slowest)")
    ui.legend(shown, res.share)
    st.caption(f"Default model: {default.reason}. Those times are medians of timed rounds on the model's engine; "
               "one answer, as above, can take longer.")

rows = ui.dashboard_rows(entries)
paper = [r for r in rows if r.paper and entries[r.model].shipped]
if paper:
    st.subheader("The paper's four pairs")
    for col, r in zip(st.columns(len(paper)), paper):
        col.metric(r.paper, "-" if r.val_miou is None else f"{100 * r.val_miou:.1f}% mIoU",
                   help=f"{r.model}: CamVid val, 101 frames, void ignored")
        col.caption(f"{r.model} · {r.engine}" + (f" {r.engine_ms:.0f} ms" if r.engine_ms else ""))

st.subheader("Model zoo")
if rows:
    st.dataframe(report.zoo_table(rows), hide_index=True, placeholder="", width="stretch")
    st.caption("Validation figures on CamVid val (101 frames, void ignored). The test split is held out; "
               "expect test mIoU several points lower. kitti-dev: 22 real frames of another city and camera, "
               "nearer your photos. 'engine here' is the engine this host runs each model on: the fastest that "
               "kept val mIoU within 0.5 point of PyTorch fp32. Every figure: the Compare page's dashboard.")
else:
    st.warning("No trained models found in weights/.")

st.subheader("Classes")
ui.legend(ui.shown(CAMVID))
