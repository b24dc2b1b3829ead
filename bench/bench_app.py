"""How long a rerun of the app takes after switching tensor or moving a threshold (AppTest timing).

    .venv/bin/python bench/bench_app.py [--model digits_resnet] [--repeat 5]

Targets (issue 4): at most 200 ms on the sample model, 500 ms on a model of several hundred tensors.
The first run (collection) is excluded: these reruns must run no inference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from quantviz.samples import SAMPLES  # noqa: E402


def _timed(at: AppTest) -> float:
    t0 = time.perf_counter()
    at.run()
    dt = time.perf_counter() - t0
    if at.exception:
        raise RuntimeError(at.exception[0].value)
    return dt


def _stats_key(at: AppTest) -> object:
    """The current statistics' key in the session's typed state (ui/state.py)."""
    from ui.state import SESSION

    work = at.session_state[SESSION].work()
    return None if work is None else work.stats_key


def bench(sample: str, repeat: int) -> dict[str, float]:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.session_state["sample_model"] = sample
    at.run()
    if sample != "digits_cnn":
        at.selectbox(key="sample_model").set_value(sample)
        at.run()
    stats_key = _stats_key(at)
    at.switch_page("pages/1_Distributions.py")
    at.run()
    names = list(at.selectbox(key="dist_tensor").options)
    results: dict[str, list[float]] = {"switch tensor (Distributions)": [], "move threshold (KL curves)": [], "switch tensor (KL curves)": []}
    for i in range(repeat):
        at.selectbox(key="dist_tensor").set_value(at.selectbox(key="dist_tensor").options[(i * 7 + 3) % len(names)].split("  ·  ")[0])
        results["switch tensor (Distributions)"].append(_timed(at))
    at.switch_page("pages/2_KL_curves.py")
    at.run()
    for i in range(repeat):
        opts = at.selectbox(key="kl_tensor").options
        at.selectbox(key="kl_tensor").set_value(opts[(i * 11 + 5) % len(opts)].split("  ·  ")[0])
        results["switch tensor (KL curves)"].append(_timed(at))
        hi = at.slider(key="kl_slider").max
        at.number_input(key="kl_typed").set_value(hi * (0.3 + 0.1 * i))
        results["move threshold (KL curves)"].append(_timed(at))
    # Layer sensitivity: the analysis itself runs once (excluded, like the collection); then switching
    # layer must run no inference
    at.switch_page("pages/3_Layer_sensitivity.py")
    at.run()
    if not at.get("plotly_chart"):
        at.button(key="sens_run").click()
        at.run()
    results["switch layer (Layer sensitivity)"] = []
    for i in range(repeat):
        opts = at.selectbox(key="sens_layer").options
        at.selectbox(key="sens_layer").set_value(opts[(i * 5 + 2) % len(opts)].split("  ·  ")[0])
        results["switch layer (Layer sensitivity)"].append(_timed(at))
    assert _stats_key(at) == stats_key, "a rerun collected again"
    return {k: statistics.median(v) * 1000 for k, v in results.items()} | {"tensors": float(len(names))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", choices=list(SAMPLES), nargs="*", default=list(SAMPLES))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    targets = {"digits_cnn": 200.0, "digits_resnet": 500.0}
    print(f"{'model':<15}{'tensors':>8}  {'rerun':<32}{'median ms':>10}{'target ms':>10}  ok")
    for sample in args.model:
        res = bench(sample, args.repeat)
        n = int(res.pop("tensors"))
        for what, ms in res.items():
            target = targets.get(sample, 500.0)
            print(f"{sample:<15}{n:>8}  {what:<32}{ms:>10.0f}{target:>10.0f}  {'yes' if ms <= target else 'NO'}")


if __name__ == "__main__":
    main()
