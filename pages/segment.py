import hashlib
from pathlib import Path

import streamlit as st

from sis.data.dataset import read_label
from sis.studio import catalog, ui
from sis.adaptation.unlabeled import MIN_FRAMES
from sis.vis import charts, report

ui.ensure_router(__file__)
st.title("Segment")
entries = catalog.available_models()
left, right = st.columns([3, 2])  # wide enough for the pickers' labels
with right:
    entry = ui.model_picker("Model", entries, key="seg_model")
    engine = ui.engine_picker(entry, key="seg_engine") if entry else None
    mode = ui.mode_picker(entry, key="seg_mode") if entry else "Fast"
ui.open_on("seg_source", {"upload": "Upload", "camera": "Camera"})
image, truth, image_key, notes, stem, said = None, None, None, [], "photo", 0
with left:  # the source and its own widgets, beside the model column
    source = st.radio("Image source", ["Sample frames", "Upload", "Camera"], horizontal=True, key="seg_source",
                      on_change=ui.keep_uploads, args=("seg_upload",))
    if source == "Sample frames":
        gallery = catalog.samples()
        name = st.selectbox("CamVid val frame (with ground truth)", [s.name for s in gallery], key="seg_sample")
        sample = next(s for s in gallery if s.name == name)
        loaded = ui.load_image(sample.image)
        image, truth, image_key, stem = loaded.image, read_label(sample.label), f"sample:{name}", name
    elif source == "Upload":
        uploads = st.file_uploader(
            f"Street photos (jpg, png, webp; up to {ui.MAX_UPLOAD_FILES} files, {ui.MAX_UPLOAD_MB} MB and "
            f"{ui.MAX_IMAGE_MP} megapixels each)", type=["jpg", "jpeg", "png", "webp"], accept_multiple_files=True,
            key="seg_upload", max_upload_size=ui.MAX_UPLOAD_MB)
        uploads = ui.kept_uploads("seg_upload", uploads)
        if len(uploads) > ui.MAX_UPLOAD_FILES:
            st.warning(f"{len(uploads)} files uploaded; only the first {ui.MAX_UPLOAD_FILES} are used.")
            uploads = uploads[: ui.MAX_UPLOAD_FILES]
        said = len(uploads)
        uploads = ui.usable_uploads(uploads)  # a broken file says so once and is left out of the picker
        said -= len(uploads)
        if entry is not None and len(uploads) >= MIN_FRAMES:  # several photos of one street: adapt a model to them
            ui.adapt_button(entry, ui.stash_photos(uploads), f"these {len(uploads)} photos", key="seg_adapt",
                            named=f"{len(uploads)}-photos",
                            picker="seg_model")
        elif entry is not None and len(uploads) >= 2:
            st.caption(f"With {MIN_FRAMES} or more photos of one street and camera, a model can be adapted to "
                       "them here (no labels needed).")
        if uploads:
            pick = st.selectbox("Image", range(len(uploads)), format_func=lambda i: uploads[i].name, key="seg_pick") \
                if len(uploads) > 1 else 0
            up = uploads[pick]
            loaded = ui.read_upload(up)
            if loaded:
                image, notes, image_key, stem = loaded.image, loaded.notes, f"upload:{up.file_id}", Path(up.name).stem
    else:
        shot = st.camera_input("Take a photo", key="seg_camera")
        if shot is not None:
            loaded = ui.read_upload(shot)
            if loaded:
                image, notes = loaded.image, loaded.notes
                image_key = f"camera:{hashlib.sha1(shot.getvalue()).hexdigest()}"
                stem = f"camera-{image_key[7:15]}"
    if image is not None and entry is not None:  # how it is painted, under the source (the model column is as tall)
        classes = ui.shown(ui.get_config(entry).class_set)
        alpha = st.slider("Overlay opacity", 0.0, 1.0, 0.55, 0.05, key="seg_alpha")
        shown = st.multiselect("Classes to paint", list(classes.names), default=list(classes.names), key="seg_classes")

if image is None or entry is None:
    if not (source == "Upload" and said):  # an unusable upload has said why already
        st.info("Pick a sample frame, upload a photo or take one to see it segmented.")
    st.stop()

visible = [classes.names.index(n) for n in shown]
res = ui.segment_cached(entry, image_key, image, truth, engine, mode=mode)
if notes:
    st.caption("Converted: " + "; ".join(notes))
if res.note:
    st.warning(res.note)
if res.unfamiliar:
    st.warning(res.unfamiliar, icon=":material/travel_explore:")

# a very wide photo (a dashcam's 3:1) gets the page's width for each picture rather than a third of it; up to
# 2.5:1 (a phone's 2:1) three side by side keep the page short
a, b, c = st.columns(3) if res.size[1] < 2.5 * res.size[0] else (st.container(), st.container(), st.container())
a.image(res.image, caption=f"Original {res.size[1]}x{res.size[0]}", width="stretch")
b.image(report.paint(res, classes, 1.0, visible), caption="Predicted classes (the painted ones)", width="stretch")
c.image(report.paint(res, classes, alpha, visible), caption="Overlay", width="stretch")
ui.legend(classes, res.share)
st.caption(f"Inference {res.ms:.0f} ms on CPU at {res.work_size[1]}x{res.work_size[0]} "
           f"with {entry.key} on {res.engine}; mean confidence {100 * res.mean_confidence:.1f}%")

origin = catalog.adapted_from(entry, entries)
if origin is not None and st.toggle(f"Show {origin.key}, the model it was adapted from, beside it", key="seg_beside"):
    before = ui.segment_cached(origin, image_key, image, truth, slot="segment_origin", mode=mode)
    o1, o2 = st.columns(2)
    for col, r, name in ((o1, before, origin.key), (o2, res, f"{entry.key} (adapted)")):
        col.image(report.paint(r, classes, 1.0, visible), width="stretch",
                  caption=name + (f" · mIoU {100 * r.scores['miou']:.1f}%" if r.scores else ""))
    st.caption(f"Adapting changed the label of {100 * report.disagreement([before.labels, res.labels])[1]:.1f}% "
               "of this photo's pixels.")

d, e = st.columns([1, 1])
d.plotly_chart(charts.class_share_bar(res.share, classes), width="stretch")
e.image(res.confidence, caption="Confidence (max softmax): dark = unsure, yellow = sure", width="stretch")

if res.truth is not None:
    s = res.scores
    st.subheader(f"Against the ground truth: mIoU {100 * s['miou']:.1f}%, pixel accuracy {100 * s['pixel_acc']:.1f}%")
    f, g = st.columns(2)
    f.image(report.painted_truth(res, classes), caption="Ground truth", width="stretch")
    g.image(res.errors, caption="Errors: green right, red wrong, black void", width="stretch")

dl1, dl2 = st.columns(2)
dl1.download_button("Download coloured mask (PNG)", report.mask_png(res, classes), f"{stem}_mask_color.png", "image/png")
dl2.download_button("Download label map (PNG, class ids)", res.label_png, f"{stem}_labels.png", "image/png")
