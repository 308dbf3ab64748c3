"""Benchmark (AppTest): step times and engine comparisons in a worker."""
import pytest
from apptest import _app, _run_job_from_page, _wait_for_jobs

from sis.studio import ui


@pytest.mark.slow
def test_benchmark_runs_in_a_worker_and_records(app_env):
    at = _app("pages/benchmark.py")
    at.multiselect(key="bench_models").set_value(["pspnet-resnet18"])
    at.radio(key="bench_mode").set_value("train")
    at.selectbox(key="bench_size").set_value("128x160")
    at.number_input(key="bench_warmup").set_value(0)
    at.number_input(key="bench_repeats").set_value(1)
    manager = _run_job_from_page(at, "bench_run", "bench")
    table = at.dataframe[0].value
    assert table["model"].tolist() == ["pspnet-resnet18"] and table["mode"].tolist() == ["train"]
    from sis import store
    assert store.list_bench()[0]["model"] == "pspnet-resnet18"
    manager.jobs.clear()


@pytest.mark.slow
def test_benchmark_says_when_the_servers_cap_is_reached(app_env, tiny_data):
    manager = ui.startup()
    manager.start("another-session", dict(model="pspnet-resnet18", data=str(tiny_data), max_steps=200,
                                          batch_size=2, val_every=0))
    try:
        at = _app("pages/benchmark.py")
        earlier = {"model": "unet-resnet18", "mode": "infer", "device": "cpu", "batch": 1, "size": [64, 96],
                   "amp": False, "median_ms": 10.0, "p90_ms": 11.0, "images_per_s": 100.0, "peak_rss_mb": 500,
                   "cuda_max_allocated_mb": None}
        at.session_state["bench_last"] = ([earlier], "", "")  # an earlier run's results on the page
        at.run()
        assert any(s.value == "This run" for s in at.subheader)
        at.selectbox(key="bench_size").set_value("128x160")
        at.button(key="bench_run").click().run()
        assert not at.exception
        assert any("Not started: the server already runs 1 job(s)" in e.value for e in at.error)
        assert not any(s.value == "This run" for s in at.subheader)  # not the earlier results under the error
    finally:
        for j in list(manager.jobs.values()):
            manager.stop(j.id)
        _wait_for_jobs()
        manager.jobs.clear()


def test_both_benchmarks_start_on_the_model_the_app_answers_with(app_env):
    from sis.studio import catalog
    at = _app("pages/benchmark.py")
    first = catalog.default_key(catalog.available_models())
    assert at.multiselect(key="bench_models").value == [first] == ["unet-vgg11_bn"]
    assert at.selectbox(key="eng_model").value == first


def test_benchmark_cuda_unavailable_says_why(app_env):
    from sis import host
    if host.nvidia_gpu_visible():
        pytest.skip("this host has an NVIDIA GPU")
    at = _app("pages/benchmark.py")
    at.radio(key="bench_device").set_value("cuda")
    at.button(key="bench_run").click().run()
    assert at.error[0].value == "CUDA is unavailable: no NVIDIA GPU on this host."


@pytest.mark.slow
def test_benchmark_compares_engines_in_a_worker(app_env):
    at = _app("pages/benchmark.py")
    at.selectbox(key="eng_model").set_value("run:tiny")
    at.selectbox(key="eng_size").set_value("240x320")
    at.number_input(key="eng_rounds").set_value(2)
    manager = _run_job_from_page(at, "eng_run", "engines")
    engines = at.dataframe[0].value["engine"].tolist()
    assert engines[0] == "eager" and "onnxruntime-int8" in engines
    assert any("Not kept: it was timed at 240x320, not at the model's base size" in c.value for c in at.caption)
    manager.jobs.clear()
    from sis import store
    assert any(r["mode"] == "infer:onnxruntime-int8" for r in store.list_bench())
