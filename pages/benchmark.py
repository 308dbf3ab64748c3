import json

import streamlit as st

from sis import host, store, zoo
from sis.engines.policy import KEEP_MIN_ROUNDS, MAX_MIOU_DELTA
from sis.studio import catalog, jobs, ui
from sis.vis import charts, report

ui.ensure_router(__file__)
st.title("Benchmark")
manager = ui.startup()
sid = ui.session_id()
lim = manager.limits
st.caption(f"Host: {host.summary()}")
st.caption(f"Every benchmark runs in a separate process, as fine-tuning does: {lim.max_jobs} job(s) at once on "
           f"this server (fine-tuning or benchmark), one per session, stopped at {lim.max_wall_s / 60:.0f} minutes.")

st.subheader("Step time")
st.caption("PyTorch itself (fp32, or bf16/fp16 with mixed precision), as training and the reference engine run: "
           "not the engine the pages answer on, which *Inference engines* below times.")
no_gpu = None if host.nvidia_gpu_visible() else "no NVIDIA GPU on this host"
entries = catalog.available_models()
first = catalog.default_key(entries)  # both forms start on the model the app answers with
with st.form("bench_form"):
    models = st.multiselect("Models", zoo.list_models(), key="bench_models",
                            default=[first if first in zoo.MODELS else zoo.DEFAULT_MODEL])
    c1, c2, c3, c4 = st.columns(4)
    device = c1.radio("Device", ["cpu", "cuda"], horizontal=True, key="bench_device",
                      captions=["", no_gpu or "available"])
    mode = c2.radio("Step", ["infer", "train"], horizontal=True, key="bench_mode",
                    captions=["forward pass", "forward + backward + Adam"])
    batch = c3.number_input("Batch size", 1, 32, 1, key="bench_batch")
    size = c4.selectbox("Resolution", ["360x480", "240x320", "720x960", "128x160"], key="bench_size")
    d1, d2, d3 = st.columns(3)
    warmup = d1.number_input("Warm-up steps", 0, 10, 1, key="bench_warmup")
    repeats = d2.number_input("Timed steps", 1, 50, 3, key="bench_repeats")
    amp = d3.checkbox("Mixed precision (bf16/fp16 autocast)", False)
    run = st.form_submit_button("Run benchmark", type="primary", key="bench_run")

if run:
    st.session_state.pop("bench_last", None)  # a new run's outcome (or its refusal) replaces the last one's
    if device == "cuda" and no_gpu:
        st.error(f"CUDA is unavailable: {no_gpu}.")
    elif not models:
        st.error("Pick at least one model.")
    else:
        h, w = (int(v) for v in size.split("x"))
        try:
            manager.start_bench(sid, models, mode=mode, device=device, batch=int(batch), size=(h, w),
                                warmup=int(warmup), repeats=int(repeats), amp=amp)
        except jobs.JobError as e:
            st.error(f"Not started: {e}.")


ui.follow_job("bench", "bench_last")
last, _, note = st.session_state.get("bench_last") or ([], "", "")
last = last or []
if note:
    st.error(note)
if last:
    st.subheader("This run")
    table = report.bench_table(last)
    st.dataframe(table, hide_index=True, placeholder="", width="stretch")
    if len(last) > 1:  # one model's bars say no more than its table row
        st.plotly_chart(charts.bench_bars(last), width="stretch")
    c1, c2 = st.columns(2)
    c1.download_button("Download CSV", report.csv_text(table), "benchmark.csv", "text/csv")
    c2.download_button("Download JSON", json.dumps(last, indent=1), "benchmark.json", "application/json")

st.subheader("Inference engines")
st.caption("PyTorch fp32 eager as plain smp runs it (NCHW, the reference) against every other engine available "
           "on this host, on the same image, round after round. A comparison at the model's base size over at "
           f"least {KEEP_MIN_ROUNDS} rounds is kept for this host: from then on its timings pick the engine the "
           "model runs on here.")
if entries:
    with st.form("engines_form"):
        keys = list(entries)
        e1, e2, e3 = st.columns(3)
        key = e1.selectbox("Model", keys, index=keys.index(first), key="eng_model")
        esize = e2.selectbox("Resolution", ["360x480", "240x320", "720x960"], key="eng_size")
        erepeats = e3.number_input("Timed rounds", 1, 30, 5, key="eng_rounds")
        compare = st.form_submit_button("Compare engines", type="primary", key="eng_run")
    if compare:
        st.session_state.pop("engines_last", None)  # as for the step benchmark above
        h, w = (int(v) for v in esize.split("x"))
        try:
            manager.start_engines(sid, str(entries[key].folder), (h, w), int(erepeats))
        except jobs.JobError as e:
            st.error(f"Not started: {e}.")
    ui.follow_job("engines", "engines_last")
    done, _, note = st.session_state.get("engines_last") or ([], "", "")
    done = done or []
    if note:
        st.error(note)
    if done:
        cmp = report.EngineComparison.from_result(done[0])
        st.dataframe(cmp.table(), hide_index=True, placeholder="", width="stretch")
        for n, why in cmp.unavailable.items():
            st.caption(f"{n}: unavailable here ({why})")
        if cmp.kept:
            st.success(f"Kept for this host: {cmp.model} now runs on **{cmp.default}** here "
                       f"(the fastest engine within {MAX_MIOU_DELTA:g} point of eager's val mIoU).")
        elif cmp.not_kept.kind == "busy":  # the one a user can act on now
            st.warning(f"Not kept: {cmp.not_kept.sentence}.")
        else:
            st.caption(f"Not kept: {cmp.not_kept.sentence}.")
        if cmp.channels_last_ms is not None:
            st.caption(f"Yardstick, same rounds: eager fp32 with channels_last took {cmp.channels_last_ms:.1f} ms "
                       f"({cmp.channels_last_speedup:.2f}x the reference).")
        st.plotly_chart(charts.engine_bars(cmp), width="stretch")

st.subheader("History on this host")
hist = store.list_bench()
if hist:
    st.dataframe(report.bench_history_table(hist), hide_index=True, placeholder="", width="stretch")
else:
    st.caption("No benchmarks recorded yet.")
