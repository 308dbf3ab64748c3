"""The tables pages show, built in sis/vis/report.py: one zoo table for Home and the dashboard, benchmark rows."""
import csv
import io

from sis.vis import report


def _row(**kw) -> report.DashboardRow:
    base = dict(model="m", arch="unet", encoder="vgg11_bn", paper="VGG_U-Net", init="random", val_miou=0.7567,
                pixel_acc=0.9458, per_class_iou={}, params_m=11.84, gflops=123.45, cpu_ms=210.4, epochs=212)
    return report.DashboardRow(**(base | kw))


def test_home_shows_what_tells_models_apart_and_the_dashboard_every_figure():
    rows = [_row(), _row(model="n", paper=None, val_miou=None, dev_miou=0.3982, engine="onnxruntime-int8",
                         engine_ms=72.6)]
    home, full = report.zoo_table(rows), report.zoo_table(rows, detail=True)
    assert list(home[0]) == ["model", "paper pair", "val mIoU %", "kitti-dev %", "params (M)", "engine here",
                             "engine ms", "timed"]
    assert set(home[0]) - {"paper pair"} < set(full[0]) and "trained on" not in full[0]  # all trained on train
    assert home[0]["val mIoU %"] == 75.7 and home[0]["kitti-dev %"] is None and home[1]["paper pair"] == ""
    assert home[1]["val mIoU %"] is None and home[1]["kitti-dev %"] == 39.8 and home[1]["engine ms"] == 73
    assert full[0]["GFLOPs"] == 123.5 and full[0]["eager ms"] == 210
    assert report.zoo_table([_row(trained_on="train+val")], detail=True)[0]["trained on"] == "train+val"


def test_bench_rows_have_a_cuda_column_only_where_a_gpu_ran_and_download_as_csv():
    one = dict(model="m", mode="infer", device="cpu", batch=1, size=[360, 480], amp=False, median_ms=12.345,
               p90_ms=13.0, images_per_s=81.0, peak_rss_mb=500.2, cuda_max_allocated_mb=None)
    table = report.bench_table([one])
    assert "CUDA MB" not in table[0] and table[0]["size"] == "360x480" and table[0]["median ms"] == 12.3
    gpu = report.bench_table([one, dict(one, device="cuda", cuda_max_allocated_mb=812)])
    assert [r["CUDA MB"] for r in gpu] == [None, 812]
    back = list(csv.DictReader(io.StringIO(report.csv_text(table))))
    assert back == [{k: str(v) for k, v in table[0].items()}]


def _comparison(folder, **kw) -> dict:
    """A judged ``bench.compare_engines`` result as the worker hands it to the page."""
    timed = {"eager": dict(median_ms=100.0, p90_ms=110.0, images_per_s=10.0, speedup_vs_eager=1.0),
             "onnxruntime-int8": dict(median_ms=40.0, p90_ms=44.0, images_per_s=25.0, speedup_vs_eager=2.5)}
    return dict(model="m", folder=str(folder), size=[360, 480], reference="eager", engines=timed,
                unavailable={"torch-bf16": "no bf16 on this CPU"}, default="onnxruntime-int8",
                channels_last_fp32={"median_ms": 80.0, "speedup_vs_eager": 1.25}, kept_for_this_host=True,
                not_kept=None) | kw


def test_an_engine_comparison_reaches_the_page_as_a_record_with_the_cards_checks():
    from sis import zoo
    shipped = zoo.resolve("pspnet-resnet18")
    cmp = report.EngineComparison.from_result(_comparison(shipped))
    assert cmp.kept and cmp.not_kept is None and cmp.default == "onnxruntime-int8" and cmp.size == (360, 480)
    assert [t.name for t in cmp.engines] == ["eager", "onnxruntime-int8"] and cmp.engines[1].speedup == 2.5
    assert (cmp.channels_last_ms, cmp.channels_last_speedup) == (80.0, 1.25)
    row = cmp.table()[1]
    assert row["vs eager"] == "2.50x" and row["median ms"] == 40.0
    assert row["val mIoU delta (card)"] == round(zoo.read_card(shipped).engines["onnxruntime-int8"].miou_delta, 2)
    busy = report.EngineComparison.from_result(_comparison(
        shipped, kept_for_this_host=False, not_kept={"kind": "busy", "sentence": "other programs used 50%"}))
    assert not busy.kept and busy.not_kept.kind == "busy" and busy.not_kept.sentence == "other programs used 50%"
    untimed = report.EngineComparison.from_result(_comparison(shipped, channels_last_fp32=None))
    assert untimed.channels_last_ms is None


def test_the_hosts_benchmark_history_as_rows():
    import time
    ts = time.mktime((2026, 12, 8, 9, 30, 0, 0, 0, -1))
    row = dict(ts=ts, model="m", mode="infer:eager", device="cpu", batch=1, height=360, width=480, amp=0,
               median_ms=101.26, images_per_s=9.876, peak_rss_mb=612.6)
    assert report.bench_history_table([row]) == [
        {"when": "2026-12-08 09:30", "model": "m", "mode": "infer:eager", "device": "cpu", "batch": 1,
         "size": "360x480", "amp": False, "median ms": 101.3, "images/s": 9.88, "peak RSS MB": 613}]
