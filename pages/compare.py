import streamlit as st

from sis.classes import CAMVID
from sis.studio import catalog, ui
from sis.vis import charts, report

ui.ensure_router(__file__)
st.title("Compare models")
entries = catalog.available_models()
if len(entries) < 1:
    st.error("No trained models are available in weights/.")
    st.stop()

st.subheader("Side by side")
keys = list(entries)
chosen = st.multiselect("Models (2 to 4)", keys, default=keys[: min(4, len(keys))], max_selections=4,
                        key="cmp_models")
gallery = catalog.samples()
c1, c2 = st.columns(2)
upload = c2.file_uploader(f"...or your own photo (jpg, png, webp; {ui.MAX_UPLOAD_MB} MB)",
                          type=["jpg", "jpeg", "png", "webp"], key="cmp_upload",
                          max_upload_size=ui.MAX_UPLOAD_MB)
# drawn after the uploader (columns keep their places): no sample frame is named while an upload is compared
if upload is None:
    sample = c1.selectbox("Sample frame", [s.name for s in gallery], key="cmp_sample")
else:
    c1.caption(f"Comparing on your photo {upload.name}; remove it to pick a sample frame.")
image = None
if upload is not None:
    loaded = ui.read_upload(upload)
    image = loaded.image if loaded else None
else:
    image = ui.load_image(next(s for s in gallery if s.name == sample).image).image

if len(chosen) < 2:
    st.info("Pick at least two models to compare.")
elif image is not None:
    mode = st.radio("Mode", ui.MODES, horizontal=True, key="cmp_mode",
                    help="Accurate: multi-scale + flip test-time augmentation, about ten times slower.")
    res = ui.compare_models([entries[k] for k in chosen], image, mode)
    if res.note:
        st.warning(res.note)
    if res.unfamiliar:
        st.warning(res.unfamiliar, icon=":material/travel_explore:")
    answers = [(report.painted(r.labels, ui.shown(ui.get_config(entries[key]).class_set)),
                f"{r.name} · {r.ms:.0f} ms on {r.engine}") for r, key in zip(res.results, chosen)]
    tiles = [(res.image, "Image"), *answers, (res.disagreement, "Disagreement: dark = all agree, bright = all differ")]
    per_row = 2 if len(tiles) == 4 else 3  # six in a row would be thumbnails
    for start in range(0, len(tiles), per_row):
        for col, (picture, caption) in zip(st.columns(per_row), tiles[start:start + per_row]):
            col.image(picture, caption=caption, width="stretch")
    st.metric("Pixels where the models disagree", f"{100 * res.disagree_frac:.1f}%")
    ui.legend(ui.shown(CAMVID))

st.subheader("Dashboard")
rows = ui.dashboard_rows(entries)
st.dataframe(report.zoo_table(rows, detail=True), hide_index=True, placeholder="", width="stretch")
st.caption("mIoU % on CamVid val, on kitti-dev and under shift (below); eager ms: PyTorch fp32 on a 360x480 frame on the machine "
           "that shipped the model; engine ms: the engine it runs on here.")
if any(r.dev_miou is not None for r in rows):
    st.caption("kitti-dev: 22 real labelled street frames of another city and a wider car camera (KITTI, Karlsruhe), "
               "which no shipped model trained on: nearer a user's photos than CamVid val, which is the same drive as "
               "half the training frames (`python -m sis eval --data ../shared/kitti-dev`, docs/real_streets.md); "
               "blank where not measured.")
if any(r.shift_miou is not None for r in rows):
    st.caption("Under shift: the mean mIoU on val seen through 13 camera and light shifts at 3 severities "
               "(exposure, white balance, blur, noise, JPEG, dusk, another lens, frame shape, a car's bonnet; "
               "`python -m sis eval --shift all`, docs/robustness.md); blank where not measured.")
if any("val" in r.trained_on.split("+") for r in rows):
    st.caption("A model trained on train+val shows the val mIoU of its train-only run with the same recipe: "
               "its own weights have seen the val frames.")
accurate = [r for r in rows if r.accurate and r.accurate.miou is not None]
if accurate:
    st.caption("Accurate mode (multi-scale 0.75-1.5 + flip, the same engines): val mIoU and time against the fast "
               "mode, measured with tools/accuracy_modes.py on all 101 val frames.")
    st.dataframe([{"model": r.model, "fast val mIoU %": r.val_miou and round(100 * r.val_miou, 1),
                   "accurate val mIoU %": round(100 * r.accurate.miou, 1),
                   "time x fast": r.accurate.latency_x and round(r.accurate.latency_x, 1)} for r in accurate],
                 hide_index=True, placeholder="", width="stretch", key="cmp_accurate")
notes = report.ensemble_notes()
offered = [n for n in notes if n.offered]
if notes and not offered:
    best = max(notes, key=lambda n: n.miou - n.best_member_miou)
    st.caption(f"Ensembles (several models' class probabilities averaged): none of the {len(notes)} measured beat "
               f"its best member on val (closest: {best.name}, {best.mode}, {100 * best.miou:.1f}% against "
               f"{100 * best.best_member_miou:.1f}%), so the pickers offer none.")
elif offered:
    st.caption("Ensembles (class probabilities of several models averaged), val mIoU against their best member in "
               "the same mode; the pickers offer only an ensemble that beats it:")
    st.dataframe([{"ensemble": n.name, "models": " + ".join(n.members), "mode": n.mode,
                   "val mIoU %": round(100 * n.miou, 2), "best member": n.best_member,
                   "its val mIoU %": round(100 * n.best_member_miou, 2),
                   "offered": "yes" if n.offered else "no"} for n in notes],
                 hide_index=True, placeholder="", width="stretch", height="content", key="cmp_ensembles")
with_iou = [r for r in rows if r.per_class_iou]
if with_iou:
    st.plotly_chart(charts.iou_heatmap(with_iou, CAMVID), width="stretch")
with_hist = [r for r in rows if r.history]
if with_hist:
    st.plotly_chart(charts.training_curves(with_hist), width="stretch")
    st.caption("Per-epoch curves from each model's card: training loss, pixel accuracy (solid: training batches, "
               "dotted: validation) and validation mIoU. A model trained in stages breaks its lines where a later "
               "stage begins: a fine-tune's loss is another recipe's and does not continue the first's.")
