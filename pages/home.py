import streamlit as st

from sis import app, catalog
from sis.classes import CAMVID

app.ensure_router(__file__)
st.title("SIS Studio")
st.markdown(
    "Semantic segmentation of street scenes, after *Semantic Image Segmentation Using Convolutional Neural "
    "Networks* (Tahir, Xiao, Shaker): ImageNet-style encoders (**VGG**, **ResNet**) paired with segmentation "
    "decoders (**U-Net**, **PSPNet**), trained on **CamVid** (11 classes + void).")

c1, c2, c3, c4 = st.columns(4)
c1.page_link("pages/segment.py", label="Segment your photos", icon=":material/image_search:")
c2.page_link("pages/compare.py", label="Compare models", icon=":material/compare:")
c3.page_link("pages/finetune.py", label="Fine-tune live", icon=":material/model_training:")
c4.page_link("pages/benchmark.py", label="Benchmark this host", icon=":material/speed:")

st.subheader("Model zoo")
rows = app.dashboard_rows(catalog.available_models())
if rows:
    st.dataframe(
        [{"model": r["model"], "paper pair": r["paper"] or "", "val mIoU %": None if r["val_miou"] is None
          else round(100 * r["val_miou"], 1), "pixel acc %": None if r["pixel_acc"] is None
          else round(100 * r["pixel_acc"], 1), "params (M)": round(r["params_m"], 1),
          "GFLOPs @360x480": round(r["gflops"], 1),
          "CPU ms (fast path)": None if r["fast_ms"] is None else round(r["fast_ms"]),
          "fast path": r["fast_backend"], "timed": r["fast_timed"], "epochs": r["epochs"],
          "encoder init": r["init"]}
         for r in rows], hide_index=True, width="stretch")
    st.caption("Validation figures on CamVid val (101 frames, void ignored). The test split is held out; "
               "expect test mIoU several points lower.")
else:
    st.warning("No trained models found in weights/.")

st.subheader("Classes")
app.legend(CAMVID)
