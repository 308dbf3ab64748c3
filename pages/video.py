from pathlib import Path

import streamlit as st

from sis import host, video, zoo
from sis.studio import catalog, jobs, ui
from sis.vis import charts, report

ui.ensure_router(__file__)
st.title("Video")
st.caption("A street clip segmented frame by frame in a worker process, as an overlay video with the pixel share "
           "of each class over time and a steadiness figure (flicker: the share of pixels whose label changes "
           "from one processed frame to the next).")
manager = ui.startup()
sid = ui.session_id()
entries = catalog.available_models()

left, right = st.columns([3, 2])  # wide enough for the pickers' labels
with right:
    entry = ui.model_picker("Model", entries, key="vid_model")
    engine = ui.engine_picker(entry, key="vid_engine") if entry else None
with left:
    source = st.radio("Clip", ["Sample clip", "Upload"], horizontal=True, key="vid_source",
                      captions=["CamVid val sequence 0016E5, 6.7 s", f"up to {ui.MAX_VIDEO_MB} MB"])
    clip = None
    if source == "Sample clip":
        clip = ui.probed_clip(video.SAMPLE_CLIP)
    else:
        up = st.file_uploader(f"A street clip ({', '.join(video.EXTENSIONS)}; up to {ui.MAX_VIDEO_MB} MB)",
                              type=list(video.EXTENSIONS), key="vid_upload", max_upload_size=ui.MAX_VIDEO_MB)
        clip = ui.stash_clip(up) if up is not None else ui.kept_clip()

c1, c2, c3 = st.columns(3)
stride = c1.number_input("Segment every N-th frame", 1, 30, 1, key="vid_stride",
                         help="2 halves the work; the overlay then plays at half the input's frame rate.")
smooth = c2.slider("Smoothing", 0.0, 0.9, video.DEFAULT_SMOOTH, 0.1, key="vid_smooth",
                   help="The weight of the past in an average of the class probabilities over frames, carried "
                        "along the picture's motion (optical flow) wherever that motion can be followed: 0 is off. "
                        "The result says how much of the picture it changed (docs/video.md).")
seconds = c3.number_input("Seconds to process", 1, int(video.MAX_SECONDS), int(video.MAX_SECONDS), key="vid_seconds",
                          help=f"At most {video.MAX_SECONDS:g} s of a clip are processed on this server.")

if clip is None or entry is None:
    st.info(f"Upload a clip ({', '.join(video.EXTENSIONS)}) or pick the sample to segment it.")
    st.stop()

path, info = clip
if source == "Upload":
    st.session_state["_last_clip"] = path  # the Correct page offers this clip's frames next, by its own name
    if up is not None:
        st.session_state["_last_clip_name"] = up.name
plan = video.plan(info, int(stride), float(seconds), ui.get_config(entry).base_size)
st.info(plan.sentence())
job = manager.for_session(sid, "video")
if st.button("Segment the clip", type="primary", key="vid_run", disabled=job is not None and job.active):
    try:
        manager.start_video(sid, path, entry.folder, int(stride), float(smooth), float(seconds), engine,
                            palette=ui.palette())
    except jobs.JobError as e:
        st.error(f"Not started: {e}.")

clip_name = "camvid-clip" if source == "Sample clip" else Path(up.name).stem if up is not None else "clip"
ui.adapt_button(entry, path, "this clip", key="vid_adapt", picker="vid_model", named=clip_name)
ui.follow_job("video", "vid_last")
done, out, note = st.session_state.get("vid_last") or (None, "", "")
if note:
    st.error(note)
if not done:
    st.stop()

res = video.VideoResult.from_dict(done)
# the model that ran and the colours it drew in, whatever is picked now
classes = zoo.read_config(done["folder"]).class_set.in_palette(done.get("palette") or ui.palette())
now = manager.for_session(sid, "video")
if now is not None and now.active:  # the last clip's result stays in view, marked, until the new one replaces it
    st.subheader("Previous result, of the clip before the one now running")
else:
    st.subheader("Result" + (f" ({res.cut})" if res.cut else ""))
ran = next((k for k, e in entries.items() if e.folder.resolve() == Path(done["folder"]).resolve()),
           Path(done["folder"]).name)
if unfamiliar := report.unfamiliarity(res.mean_confidence, zoo.read_card(done["folder"]), ran, what="clip",
                                      help_=report.advice("clip", adapted=report.adapted(done["folder"]))):
    st.warning(unfamiliar, icon=":material/travel_explore:")
shown, facts = st.columns([3, 1])
shown.video(str(Path(out) / "preview.mp4"))  # at most 480p: the server holds what it plays in memory
facts.metric("Frames segmented", res.frames, help=f"{res.seconds:.1f} s of the clip, at {res.fps_out:.3g} fps")
facts.metric("End to end", f"{res.frames_per_s:.1f} frames/s", help=f"decode, segment, encode on {done['engine']}")
facts.metric("Flicker", f"{100 * res.flicker:.2f}%",
             delta=None if res.flicker_raw is None else f"{100 * (res.flicker - res.flicker_raw):+.2f} points smoothed",
             delta_color="off", help="share of pixels whose label changes between consecutive processed frames; "
                                     "less flicker is steadier, not necessarily more right")
if res.agreement is not None:
    facts.metric("Smoothing changed", f"{100 * (1 - res.agreement):.1f}% of pixels",
                 help="share of pixels whose smoothed label differs from the frame's own answer: the smoothing's "
                      "effect on what you see, against no smoothing")
facts.download_button("Overlay (mp4)", lambda: (Path(out) / "overlay.mp4").read_bytes(), "overlay.mp4",
                      "video/mp4", key="vid_dl_mp4", icon=":material/download:")
facts.download_button("Label PNGs (zip)", lambda: (Path(out) / "labels.zip").read_bytes(), "labels.zip",
                      "application/zip", key="vid_dl_zip", icon=":material/download:")
st.plotly_chart(charts.class_share_over_time([i / res.fps_in for i in res.indices], res.share, classes),
                width="stretch")
with st.expander("Flicker per class"):
    st.dataframe([{"class": n, "flicker %": None if f is None else round(100 * f, 2)}
                  for n, f in res.flicker_per_class.items()], hide_index=True, placeholder="", height="content")
st.page_link("pages/correct.py", label="Correct the frames of this clip the model is least sure of",
             icon=":material/brush:", query_params={"open": "clip"})
host.release_memory()  # the result's transient copies go back to the OS, not to this server's heap
