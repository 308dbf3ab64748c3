import time
from pathlib import Path

import streamlit as st

from sis import store, zoo
from sis.engines import choose_engine
from sis.data.dataset import DatasetError, list_pairs, validation_plan
from sis.studio import catalog, jobs, ui
from sis.evaluation import before_after
from sis.training.config import config_for
from sis.vis import charts

DEFAULT_SHARE = "the model's default"
ui.ensure_router(__file__)
st.title("Fine-tune")
manager = ui.startup()
lim = manager.limits
sid = ui.session_id()
entries = catalog.available_models()

st.caption(f"Runs in a separate process on a copy of the model. Limits on this server: {lim.max_jobs} job(s) at "
           f"once, one per session, {lim.max_epochs} epochs or {lim.max_steps} steps, "
           f"{lim.max_train_frames} training frames, {lim.max_wall_s / 60:.0f} minutes.")
if note := jobs.fine_tune_memory_note():
    st.warning(note, icon=":material/memory:")

with st.form("ft_form"):
    c1, c2 = st.columns(2)
    names = list(entries) or list(zoo.PAPER_MODELS)
    key = c1.selectbox("Model", names, index=names.index(catalog.default_key(entries)) if entries else 0,
                       key="ft_model")
    init = c2.radio("Start from", ["shipped weights", "ImageNet encoder (needs internet)", "random"],
                    horizontal=True, index=0 if entries else 2)
    d1, d2 = st.columns(2)
    camvid = catalog.camvid_dir()
    sources = ui.training_sources(camvid)
    saved = st.session_state.get("_adapt_on")  # the dataset this session last saved into on Correct
    mine = [label for label in sources if saved and label.startswith(f"{saved} (") and "Correct page" in label]
    picked = d1.selectbox("Dataset", list(sources), index=list(sources).index(mine[0]) if mine else 0, key="ft_dataset",
                          help="CamVid when it is on this server, the datasets you saved on the Correct page, "
                               "and the zips uploaded in this session.")
    zipped = d2.file_uploader(f"...or upload a zip in the SegNet layout: train/, trainannot/, optional val/ "
                              f"({ui.MAX_UPLOAD_MB} MB; used instead of the list when attached)", type=["zip"],
                              key="ft_zip", max_upload_size=ui.MAX_UPLOAD_MB)
    folder = d1.text_input("Folder on this server (SegNet layout)", "", key="ft_folder",
                           placeholder="/path/to/dataset", help="Used when the list says so.") \
        if ui.access().server_paths else ""
    r1, r2 = st.columns([2, 1])
    replay = r1.checkbox("Replay CamVid in every batch", camvid is not None, disabled=camvid is None, key="ft_replay",
                         help="Mixes CamVid's train frames into every batch, so that a few frames of your own teach "
                              "the model without it forgetting the rest. Not offered when CamVid is not on the "
                              "server; not used when the dataset is CamVid itself.")
    if camvid is None:
        r1.caption(catalog.camvid_missing())
    ratio = r2.selectbox("Share of each batch from CamVid", [DEFAULT_SHARE] + [f"{10 * i}%" for i in range(1, 10)],
                         key="ft_ratio", help="The model's default is half, or what its card measured forgets less "
                                              "of other streets (three quarters for pspnet-resnet18).")
    e1, e2, e3, e4 = st.columns(4)
    unit = e1.radio("Length in", ["steps", "epochs"], horizontal=True)
    length = e2.number_input("How many", 1, lim.max_steps, min(before_after.STEPS, lim.max_steps), key="ft_length")
    batch = e3.number_input("Batch size", 1, 16, 4)
    lr = e4.number_input("Learning rate", 1e-6, 1e-1, 2e-4, format="%.0e")
    f1, f2, f3, f4 = st.columns(4)
    as_trained = "as the model was trained"
    flips = f1.selectbox("Flips", [as_trained, "horizontal", "horizontal + vertical", "none"], key="ft_flips",
                         help="As trained: the flips, crops, scale range, class weights and colour augmentation of the "
                              "model's own recipe (its card), so that fine-tuning does not change what it learned, "
                              "less what its card measured a few frames learn better without; from random or "
                              "ImageNet: the paper's flips on full frames.")
    encoder = f2.selectbox("Encoder", ["the model's default", "fine-tune it", "freeze it"], key="ft_encoder",
                           help="The default fine-tunes the whole model, except where the model's card measured "
                                "that a frozen encoder forgets less of other streets (unet-resnet18).")
    frames = f3.number_input("Training frames, at most", 2, lim.max_train_frames, 48,
                             help="At most this many of the dataset's train frames, in name order; a dataset with "
                                  f"fewer trains on all of them. This server allows {lim.max_train_frames}.")
    crop = f4.selectbox("Crop", [as_trained, "352x480", "192x256", "256x320", "full frames"], key="ft_crop")
    run_as = st.text_input("Name of the new model", "", key="ft_name", placeholder="e.g. my-street (default: the "
                           "model, -ft- and the time)", help="How it appears in every model picker.")
    started = st.form_submit_button("Start", type="primary", key="ft_start")

if started:
    try:
        entry = entries.get(key)
        name = zoo.read_config(entry.folder).name if entry else key
        if init.startswith("shipped"):
            if entry is None:
                raise jobs.JobError("there are no shipped weights to start from; choose random")
            init_value = str(entry.folder)
        elif init.startswith("ImageNet"):
            if not zoo.hub_reachable():
                raise jobs.JobError("ImageNet weights need the internet, which this server cannot reach; "
                                    "start from shipped weights or random")
            init_value = "imagenet"
        else:
            init_value = "random"
        if zipped is not None:
            root = ui.stash_dataset_zip(zipped)
        elif sources.get(picked) is not None:
            root = sources[picked]
        elif not folder.strip():
            raise DatasetError("type the dataset's folder on this server, or pick a dataset from the list")
        else:
            root = Path(folder.strip())
        n = len(list_pairs(root, "train")[: int(frames)])
        asked = dict(init=init_value, batch_size=int(batch), lr=float(lr), train_limit=int(frames), val_limit=20,
                     val_every=1)  # what the form sets; the rest as `sis train` would take it (config_for)
        if encoder != "the model's default":
            asked["freeze_encoder"] = encoder == "freeze it"
        if flips != as_trained:
            asked["flips"] = {"horizontal": "h", "horizontal + vertical": "hv", "none": ""}[flips]
        if crop != as_trained:
            asked["crop"] = "full" if crop == "full frames" else tuple(int(v) for v in crop.split("x"))
        if replay and camvid is not None and root.resolve() != camvid.resolve():
            asked.update(replay=str(camvid),
                         replay_ratio=None if ratio == DEFAULT_SHARE else int(ratio.rstrip("%")) / 100)
        cfg = config_for(root, name, **asked).to_dict()
        # scored before and after, also on CamVid val when present
        compare_on = str(camvid or "") if init_value == str(entry and entry.folder) else None
        if unit == "steps":
            cfg["max_steps"] = int(length)
        else:
            cfg["epochs"] = int(length)
        job = manager.start(sid, cfg, name=catalog.run_name(run_as, f"{name}-ft-{time.strftime('%m%d-%H%M%S')}"),
                            before_after=compare_on)
        st.toast(f"Started job {job.id}")
        plan = st.session_state.setdefault("_ft_plans", {})[job.id] = validation_plan(root, n)
        replayed = (f" Replay: {100 * cfg['replay_ratio']:.0f}% of each batch from CamVid's train frames."
                    if cfg.get("replay") else "")
        kept = (f" Saved with {100 * cfg['init_share']:.0f}% of the starting model's weights averaged in, so "
                f"that it forgets less (the model's measured default)." if cfg.get("init_share") else "")
        st.info(f"Validation: {plan}.{replayed}{kept}")
    except (jobs.JobError, DatasetError, catalog.CatalogError) as e:
        st.error(str(e))

job = manager.for_session(sid, "train")
b1, b2 = st.columns([1, 5])
if b1.button("Stop", disabled=job is None, key="ft_stop"):
    if job is not None and manager.stop(job.id):
        st.toast("Stopping after the current batch...")
    else:
        st.info("No job is running.")


@st.fragment(run_every=1.0 if job is not None and job.active else None)  # a page left open on an ended run polls nothing
def live():
    job = manager.for_session(sid, "train")
    if job is None:
        st.info("No fine-tuning job in this session yet.")
        return
    snap = manager.poll(job.id)
    last = snap.last
    status = snap.status
    if last and last.phase == "compare":
        st.progress(min(1.0, last.step / max(last.total_steps, 1)),
                    text=f"{status}: trained; scored the model before and after" if status == "done" else
                    f"{status}: trained; scoring the model before and after, {last.step}/{last.total_steps} frames")
    elif last and last.phase == "finish":
        st.progress(min(1.0, last.step / max(last.total_steps, 1)),
                    text=f"{status}: steps done; finishing, {last.step + 1}/{last.total_steps}: {last.stage}")
    elif last:
        frac = min(1.0, last.step / max(last.total_steps, 1))
        eta = f", about {snap.eta_s:.0f} s left" if status == "running" and snap.eta_s else ""
        # a run measured in steps says steps only: its epochs (passes over a few frames) can outnumber the cap
        epochs = "" if job.cfg.get("max_steps") or last.epoch is None else f", epoch {last.epoch}/{last.epochs}"
        st.progress(frac, text=f"{status}: step {last.step}/{last.total_steps}{epochs}{eta}")
    else:
        st.progress(0.0, text=f"{status}: loading data and model...")
    if snap.steps:
        plan = st.session_state.get("_ft_plans", {}).get(job.id)
        validates = bool(snap.val) or plan is None or plan.frames > 0
        st.plotly_chart(charts.live_curves(snap, validates), width="stretch", key="live_curves")
    if status == "failed":
        st.error(snap.message)
    elif status in ("done", "stopped"):
        val = snap.history[-1].get("val_miou") if snap.history else None
        kept = (Path(snap.out) / "config.json").is_file()
        st.success(f"Run {status} after {len(snap.steps)} steps in {snap.elapsed_s:.0f} s"
                   + (f", val mIoU {100 * val:.1f}%" if val is not None else "")
                   + (f". Saved as run:{Path(snap.out).name}: pick it on the other pages." if kept else
                      f". Its model, run:{Path(snap.out).name}, has been removed since."))
        if (Path(snap.out) / "config.json").is_file():  # a fine-tune brings its start's checked graphs
            st.caption(f"It runs here on {choose_engine(Path(snap.out)).reason()}.")
        if snap.message:
            st.caption(snap.message)
    if status in ("done", "stopped", "failed") and st.session_state.get("_ft_end_seen") != job.id:
        st.session_state["_ft_end_seen"] = job.id
        st.rerun()  # once, the whole page: the runs table below shows how the run ended


live()

if job is not None and not job.active and (compared := before_after.BeforeAfter.load(Path(job.out))) is not None:
    st.subheader("Before and after")
    for sc in compared.scores:
        st.markdown(f"**{sc.name}** ({sc.frames} frames): mIoU {100 * sc.before['miou']:.1f}% before, "
                    f"{100 * sc.after['miou']:.1f}% after ({100 * sc.gain:+.1f} points)")
    if compared.scores:
        st.dataframe(compared.table(), hide_index=True, placeholder="", width="stretch", height="content")
    else:
        st.caption("No frames to score: the dataset is too small to hold any out, and CamVid is not on this server.")
    st.caption("Training frames: your label, the model before, the model after.")
    for pair in compared.masks:
        cols = st.columns(3)
        for col, (what, png) in zip(cols, (("label", pair.truth), ("before", pair.before), ("after", pair.after))):
            col.image(str(Path(job.out) / before_after.FOLDER / png), caption=f"{pair.title}: {what}", width="stretch")

mine = {k: e for k, e in entries.items() if not e.shipped}
removed = st.session_state.pop("_ft_removed", None)  # said after the rerun that drops it from the lists
if mine or removed:
    st.subheader("Models fine-tuned or adapted here")
if removed:
    st.success(removed)
if mine:
    g1, g2, g3, g4 = st.columns([3, 2, 1, 1], vertical_alignment="bottom")
    gone = g1.selectbox("Fine-tuned model", list(mine), key="ft_remove_pick", format_func=lambda k: ui.describe(k, mine[k]))
    wanted = g2.text_input("New name", key="ft_rename_to", placeholder=gone[4:],
                           help="Letters, digits, '-', '_' and '.'; every picker shows the new name.")
    busy = job is not None and job.active and Path(job.out).resolve() == mine[gone].folder.resolve()

    def rename(entry=mine[gone], old=gone[4:]) -> None:  # a callback: it may empty the name box
        try:
            if busy:
                raise catalog.CatalogError("that model is still being trained; stop the run first")
            st.session_state["_ft_removed"] = f"Renamed {old} to {catalog.rename_model(entry, wanted)}"
            st.session_state["ft_rename_to"] = ""
        except catalog.CatalogError as e:
            st.session_state["_ft_rename_error"] = str(e)
    g3.button("Rename", key="ft_rename", disabled=not wanted.strip(), on_click=rename)
    g1.caption(f"{catalog.size_on_disk(mine[gone]) / 2**20:.0f} MB on this server's disk (weights and graphs); "
               "Remove gives it back.")
    if said := st.session_state.pop("_ft_rename_error", None):
        st.error(said)
    if g4.button("Remove it", key="ft_remove", help="Deletes its files; its row below stays, marked removed. "
                                                    "Shipped models stay."):
        if busy:
            st.error("That model is still being trained; stop the run first.")
        else:
            catalog.remove_model(mine[gone])
            st.session_state["_ft_removed"] = f"Removed {gone[4:]}"
            st.rerun()

st.subheader("Runs on this host")
runs = store.list_runs()
if runs:
    st.dataframe(catalog.runs_table(runs, entries), hide_index=True, placeholder="", width="stretch")
else:
    st.caption("No runs yet.")
