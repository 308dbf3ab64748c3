import streamlit as st

from sis import video
from sis.data import userdata
from sis.data.dataset import DatasetError
from sis.studio import catalog, correct, ui
from sis.vis import report

ui.ensure_router(__file__)
st.title("Correct")
st.caption("Fix the model's mask by hand where it is wrong, keep the result as a label in a dataset of your own, "
           "and teach the model with a few of them on the Fine-tune page. Photos and clip frames are ranked by "
           "how unsure the model is, so that your effort goes where it helps most.")
entries = catalog.available_models()
left, right = st.columns([3, 2])  # wide enough for the pickers' labels
with right:
    entry = ui.model_picker("Model", entries, key="cor_model")
ui.open_on("cor_source", {"clip": "Frames of a clip", "photos": "Photos"})
with left:
    source = st.radio("Image", ["Sample frames", "Photos", "Frames of a clip", "Camera"], horizontal=True,
                      key="cor_source", on_change=ui.keep_uploads, args=("cor_photos",))
if entry is None:
    st.stop()
classes = ui.get_config(entry).class_set
shown = ui.shown(classes)  # the session's colours; the saved labels are class ids

image, image_key, said = None, None, 0
if "_last_clip" in st.session_state and source == "Sample frames":
    st.caption("The clip you opened on the Video page is under *Frames of a clip*.")
if source == "Sample frames":
    gallery = catalog.samples()
    name = st.selectbox("CamVid val frame", [s.name for s in gallery], key="cor_sample")
    image, image_key = ui.load_image(next(s for s in gallery if s.name == name).image).image, f"sample:{name}"
elif source == "Camera":
    shot = st.camera_input("Take a photo", key="cor_camera")
    loaded = ui.read_upload(shot) if shot is not None else None
    if loaded:
        image, image_key = loaded.image, f"camera:{shot.file_id}"
else:
    if source == "Photos":
        ups = st.file_uploader(f"Street photos (jpg, png, webp; up to {ui.MAX_UPLOAD_FILES})", key="cor_photos",
                               type=["jpg", "jpeg", "png", "webp"], accept_multiple_files=True,
                               max_upload_size=ui.MAX_UPLOAD_MB)
        ups = ui.kept_uploads("cor_photos", ups)[: ui.MAX_UPLOAD_FILES]
        said = len(ups)
        ups = ui.usable_uploads(ups)  # a broken file says so once and is left out
        said -= len(ups)
        ranked = ui.rank_photos(entry, ups) if ups else []
    else:
        c1, c2 = st.columns([2, 1])
        last = st.session_state.get("_last_clip", video.SAMPLE_CLIP)  # the clip last opened on the Video page
        shown_as = st.session_state.get("_last_clip_name", last.name) if last != video.SAMPLE_CLIP else \
            "the CamVid sample clip"
        up = c1.file_uploader(f"A clip ({', '.join(video.EXTENSIONS)}); without one, {shown_as}", key="cor_clip",
                              type=list(video.EXTENSIONS), max_upload_size=ui.MAX_VIDEO_MB)
        stride = c2.number_input("Look at 1 frame in", 1, 300, 15, key="cor_stride")
        clip = ui.stash_clip(up) if up is not None else (last, None)
        ranked = ui.rank_clip(entry, clip[0], int(stride)) if clip else []
    if ranked:
        st.caption("Least sure first, by the mean entropy of the class probabilities (dark = unsure):")
        cols = st.columns(min(len(ranked), 4))
        for i, u in enumerate(ranked[:4]):
            cols[i].image(report.colormap(u.confidence), width="stretch",
                          caption=f"{i + 1}. {u.name}: entropy {u.mean_entropy:.3f}, "
                                  f"{100 * u.unsure_share:.0f}% of its pixels unsure")
        pick = st.selectbox("Correct", range(len(ranked)), key="cor_pick",
                            format_func=lambda i: f"{ranked[i].name} (entropy {ranked[i].mean_entropy:.3f})")
        image, image_key = ranked[pick].image, f"{source}:{ranked[pick].name}:{id(ranked[pick].image)}"

if image is None and not said:  # an unusable upload has said why already
    st.info("Pick a sample frame, upload photos or pick a clip to correct the model's answer.")
if image is None:
    st.stop()

draft, pending = ui.correction_draft(entry, image_key, image)
if pending:
    st.caption("Unsaved corrections are kept for this session on " + ", ".join(k.split(":")[1] for k in pending) +
               f": pick them again to go on (the last {ui.KEEP_DRAFTS} images are kept).")
t1, t2, t3, t4 = st.columns([2, 2, 1, 1])
tool = t1.radio("Tool", ["Brush", "Fill a region"], horizontal=True, key="cor_tool",
                help="Brush paints what you draw; Fill a region gives the whole connected region under a click "
                     "to the chosen class in one go. Each stroke and each fill is a step that Undo takes back.")
brush = t2.selectbox("Class", [*classes.names, "void", "eraser"], key="cor_brush",
                     format_func=lambda b: {"void": "not sure (void: training ignores it)",
                                            "eraser": "eraser (back to the model's answer)"}.get(b, b))
size = t3.slider("Brush size", 2, 60, 16, key="cor_size")
alpha = t4.slider("Opacity", 0.0, 1.0, 0.55, 0.05, key="cor_alpha")

display = correct.display_size(*draft.labels.shape)
nonce = st.session_state.setdefault("_cor_nonce", 0)  # a new canvas once its marks are baked in
canvas = ui.canvas(stroke_width=size, stroke_color=correct.brush_hex(shown, brush),
                   background_image=correct.canvas_background(draft, draft.labels, shown, alpha, display),
                   height=display[0], width=display[1], drawing_mode="freedraw" if tool == "Brush" else "point",
                   point_display_radius=4, return_image_data=True,
                   key=f"cor_canvas:{image_key}:{draft.version}:{nonce}")
ui.legend(shown)
if note := st.session_state.pop("_cor_note", None):
    st.info(note)
applied = correct.apply_canvas(draft, tool, brush, canvas.image_data, canvas.json_data, display, shown)
if applied.restart:
    st.session_state["_cor_nonce"] = nonce + 1  # each stroke or fill is a step: the canvas starts over it
    st.session_state["_cor_note"] = applied.note
    st.rerun()
if tool != "Brush" and brush == "eraser":
    st.caption("Fill a region gives a region a class: pick a class (or void), or paint with the eraser.")

b1, b2, b3, b4 = st.columns([1, 1, 1, 3])
steps = [("Undo", "cor_undo", draft.undo, not draft.history, "Take back the last stroke or fill"),
         ("Redo", "cor_redo", draft.redo, not draft.undone, "Put back what Undo took"),
         ("Start over", "cor_reset", draft.start_over, (draft.labels == draft.prediction).all(),
          "Back to the model's answer (Undo brings the corrections back)")]
for col, (label, key, act, off, tip) in zip((b1, b2, b3), steps):
    if col.button(label, key=key, disabled=bool(off), help=tip, width="stretch"):
        act()
        st.rerun()
labels = draft.labels
b4.caption(f"{100 * correct.changed_share(labels, draft.prediction):.1f}% of the pixels changed from the "
           f"model's answer; the label is kept at {labels.shape[1]}x{labels.shape[0]}, the model's working size.")

st.subheader("Save to my dataset")
home = ui.datasets_home()
sets = [d.name for d in userdata.list_datasets(home)]
s1, s2 = st.columns([2, 1])
name = s1.text_input("Dataset name", sets[0] if sets else "my-street", key="cor_dataset",
                     help="Letters, digits, '-', '_' and '.'; a new name makes a new dataset")
if s2.button("Save to my dataset", type="primary", key="cor_save"):
    try:
        if (frame := draft.saved_in(name)) and frame in userdata.get_dataset(name, home).frames:
            st.info(f"Already saved as {frame} in '{name}' with this mask; change the mask to save another version.")
        else:
            frame = userdata.save_frame(name, draft.image, labels, classes, source=image_key.split(":")[1], home=home)
            draft.saved, draft.saved_as = labels, (name, frame)
            st.session_state["_adapt_on"] = name  # Fine-tune offers it first
            st.success(f"Saved as {frame} in '{name}' ({len(userdata.get_dataset(name, home).frames)} frames), at "
                       f"{labels.shape[1]}x{labels.shape[0]}, the size the model works at.")
            if draft.untouched:
                st.warning("This is the model's own answer, unchanged: fine-tuning on it teaches the model nothing "
                           "new. Paint what it got wrong, then save again.")
    except DatasetError as e:
        st.error(str(e))

if st.session_state.get("_adapt_on"):
    st.page_link("pages/finetune.py", label=f"Teach a model with '{st.session_state['_adapt_on']}' on the Fine-tune "
                 "page", icon=":material/model_training:")

with st.expander("My datasets", key="cor_datasets", on_change="rerun"):  # stays open across reruns
    for ds in userdata.list_datasets(home):
        d1, d2 = st.columns([3, 1])
        d1.markdown(f"**{ds.name}**: {len(ds.frames)} frames" + ("" if ui.access().shared else f", `{ds.root}`"))
        d2.download_button("Download (zip)", lambda n=ds.name: userdata.to_zip(n, home), f"{ds.name}.zip",
                           "application/zip", key=f"cor_zip:{ds.name}")
        if ds.frames:
            r1, r2 = st.columns([3, 1])
            gone = r1.selectbox("Frame", ds.frames, key=f"cor_frames:{ds.name}", label_visibility="collapsed")
            asked = st.session_state.get("_cor_rm_ask") == (ds.name, gone)
            if r2.button("Remove frame", key=f"cor_rm:{ds.name}", disabled=asked):
                st.session_state["_cor_rm_ask"] = (ds.name, gone)  # asked once more before anything is deleted
                st.rerun()
            if asked:
                c1, c2, c3 = st.columns([3, 1, 1])
                c1.warning(f"Remove {gone} from '{ds.name}'? Its photo and mask are deleted.")
                if c2.button("Yes, remove", key=f"cor_rm_yes:{ds.name}", type="primary"):
                    st.session_state.pop("_cor_rm_ask", None)
                    try:
                        userdata.remove_frame(ds.name, gone, home)
                    except DatasetError as e:  # removed meanwhile by another session
                        st.session_state["_cor_rm_said"] = str(e)
                    st.rerun()
                if c3.button("Keep it", key=f"cor_rm_no:{ds.name}"):
                    st.session_state.pop("_cor_rm_ask", None)
                    st.rerun()
    if said := st.session_state.pop("_cor_rm_said", None):
        st.error(said)
    z1, z2 = st.columns([3, 1])
    back = z1.file_uploader("Add the frames of a zip (SegNet layout: train/, trainannot/)", type=["zip"],
                            key="cor_import", max_upload_size=ui.MAX_UPLOAD_MB)
    if back is not None and z2.button("Add to the dataset above", key="cor_import_go"):
        try:
            st.success(f"'{name}' now has {len(userdata.import_zip(back.getvalue(), name, home).frames)} frames.")
        except DatasetError as e:
            st.error(str(e))
