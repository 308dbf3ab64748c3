import csv
import io
import json
import time

import streamlit as st

from sis import app, catalog, charts, store, zoo
from sis.bench import KEEP_MIN_ROUNDS, bench, compare_backends, record_engines
from sis.runtime import cuda_unavailable_reason, host_info

app.ensure_router(__file__)
st.title("Benchmark")
host = host_info()
gpu = host["gpu"]["name"] if host["gpu"] else "none"
st.caption(f"Host: {host['cpu']} · {host['cores_physical']} cores / {host['cores_logical']} threads · "
           f"{host['ram_gb']} GB RAM · GPU: {gpu} · torch {host['torch']} ({host['torch_threads']} threads)")

why_no_cuda = cuda_unavailable_reason()
with st.form("bench_form"):
    models = st.multiselect("Models", zoo.list_models(), default=[zoo.DEFAULT_MODEL])
    c1, c2, c3, c4 = st.columns(4)
    device = c1.radio("Device", ["cpu", "cuda"], horizontal=True,
                      captions=["", why_no_cuda or "available"])
    mode = c2.radio("Step", ["infer", "train"], horizontal=True,
                    captions=["forward pass", "forward + backward + Adam"])
    batch = c3.number_input("Batch size", 1, 32, 1)
    size = c4.selectbox("Resolution", ["360x480", "240x320", "720x960", "128x160"])
    d1, d2, d3 = st.columns(3)
    warmup = d1.number_input("Warm-up steps", 0, 10, 1)
    repeats = d2.number_input("Timed steps", 1, 50, 3)
    amp = d3.checkbox("Mixed precision (bf16/fp16 autocast)", False)
    run = st.form_submit_button("Run benchmark", type="primary")

if run:
    if device == "cuda" and why_no_cuda:
        st.error(f"CUDA is unavailable: {why_no_cuda}.")
    elif not models:
        st.error("Pick at least one model.")
    else:
        h, w = (int(v) for v in size.split("x"))
        bar = st.progress(0.0, text="warming up...")
        results = []
        total = len(models) * (warmup + repeats)
        for k, name in enumerate(models):
            def tick(i, n, k=k, name=name):
                bar.progress((k * n + i) / total, text=f"{name}: step {i}/{n}" + (" (warm-up)" if i <= warmup else ""))
            res = bench(name, mode, device, int(batch), (h, w), int(warmup), int(repeats), amp=amp, progress=tick)
            store.add_bench(res)
            results.append(res)
        bar.progress(1.0, text="done")
        st.session_state["bench_last"] = [{k: v for k, v in r.items() if k != "host"} for r in results]

last = st.session_state.get("bench_last")
if last:
    st.subheader("This run")
    table = [{"model": r["model"], "mode": r["mode"], "device": r["device"], "batch": r["batch"],
              "size": f"{r['size'][0]}x{r['size'][1]}", "amp": r["amp"], "median ms": round(r["median_ms"], 1),
              "p90 ms": round(r["p90_ms"], 1), "images/s": round(r["images_per_s"], 2),
              "peak RSS MB": round(r["peak_rss_mb"]), "CUDA MB": r["cuda_max_allocated_mb"]} for r in last]
    st.dataframe(table, hide_index=True, width="stretch")
    st.plotly_chart(charts.bench_bars(last), width="stretch")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    c1, c2 = st.columns(2)
    c1.download_button("Download CSV", buf.getvalue(), "benchmark.csv", "text/csv")
    c2.download_button("Download JSON", json.dumps([dict(r, host=host) for r in last], indent=1), "benchmark.json",
                       "application/json")

st.subheader("Inference engines")
st.caption("PyTorch fp32 eager as plain smp runs it (NCHW, the reference) against every fast path available "
           "on this host, on the same image, round after round. Accuracy: each model's card records the val "
           "mIoU of every engine.")
entries = catalog.available_models()
if entries:
    with st.form("engines_form"):
        keys = list(entries)
        e1, e2, e3 = st.columns(3)
        key = e1.selectbox("Model", keys, index=keys.index(catalog.default_key(entries)))
        esize = e2.selectbox("Resolution", ["360x480", "240x320", "720x960"], key="eng_size")
        erepeats = e3.number_input("Timed rounds", 1, 30, 5)
        compare = st.form_submit_button("Compare engines", type="primary")
    if compare:
        h, w = (int(v) for v in esize.split("x"))
        bar = st.progress(0.0, text="building engines (once per model and size)...")
        res = compare_backends(str(entries[key].folder), size=(h, w), warmup=1, repeats=int(erepeats),
                               progress=lambda phase, i, n: bar.progress(min(i / n, 1.0), text=f"{phase} {i}/{n}"))
        bar.progress(1.0, text="done")
        res["kept_for_this_host"] = record_engines(res)
        for name, r in res["backends"].items():
            store.add_bench({"model": res["model"], "mode": f"infer:{name}", "device": "cpu", "batch": 1,
                             "size": res["size"], "amp": name == "torch-bf16", "median_ms": r["median_ms"],
                             "p90_ms": r["p90_ms"], "images_per_s": r["images_per_s"], "peak_rss_mb": res["peak_rss_mb"],
                             "host": res["host"], "engine": r})
        st.session_state["engines_last"] = (key, {k: v for k, v in res.items() if k != "host"})
    last_e = st.session_state.get("engines_last")
    if last_e:
        key, res = last_e
        checks = zoo.read_card(entries[key].folder).get("fast_path", {}).get("backends", {}) if key in entries else {}
        st.dataframe([{"engine": n, "median ms": round(r["median_ms"], 1), "p90 ms": round(r["p90_ms"], 1),
                       "images/s": round(r["images_per_s"], 2), "vs eager": f"{r['speedup_vs_eager']:.2f}x",
                       "val mIoU delta (card)": None if (checks.get(n) or {}).get("miou_delta") is None
                       else round(checks[n]["miou_delta"], 2)} for n, r in res["backends"].items()],
                     hide_index=True, width="stretch")
        for n, why in res["unavailable"].items():
            st.caption(f"{n}: unavailable here ({why})")
        if res.get("kept_for_this_host"):
            st.success(f"Kept for this host: {res['model']} now runs on **{res['default']}** by default here "
                       "(the fastest engine within 0.5 point of eager's val mIoU on its card).")
        else:
            st.caption(f"Not kept: only a comparison at the model's base size (360x480 for the shipped models) "
                       f"over at least {KEEP_MIN_ROUNDS} rounds picks this host's default engine.")
        cl = res.get("channels_last_fp32")
        if cl:
            st.caption(f"Yardstick, same rounds: eager fp32 with channels_last took {cl['median_ms']:.1f} ms "
                       f"({cl['speedup_vs_eager']:.2f}x the reference).")
        st.plotly_chart(charts.engine_bars(res), width="stretch")

st.subheader("History on this host")
hist = store.list_bench()
if hist:
    st.dataframe([{"when": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["ts"])), "model": r["model"],
                   "mode": r["mode"], "device": r["device"], "batch": r["batch"], "size": f"{r['height']}x{r['width']}",
                   "amp": bool(r["amp"]), "median ms": round(r["median_ms"], 1),
                   "images/s": round(r["images_per_s"], 2), "peak RSS MB": round(r["peak_rss_mb"])} for r in hist],
                 hide_index=True, width="stretch")
else:
    st.caption("No benchmarks recorded yet.")
