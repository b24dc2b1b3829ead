"""How the Ray collection cuts and merges, without Ray: shard plans of whole batches, and which
adjacent runs merge (exactness of moving averages: see quantviz.distributed)."""

from __future__ import annotations

from typing import Any

from quantviz.distributed import _merge_adjacent, _Run, plan_shards
from quantviz.limits import BATCH_RECORD_MAX


def test_plan_shards_whole_batches() -> None:
    assert plan_shards(256, 16, 4) == [(0, 64), (64, 128), (128, 192), (192, 256)]
    assert plan_shards(100, 8, 3) == [(0, 32), (32, 64), (64, 100)]
    assert plan_shards(5, 8, 4) == [(0, 5)]
    assert plan_shards(0, 8, 4) == []
    for total, batch, n in [(1000, 7, 9), (17, 1, 40), (64, 64, 2)]:
        plan = plan_shards(total, batch, n)
        assert plan[0][0] == 0 and plan[-1][1] == total and all(a % batch == 0 for a, _ in plan)
        assert all(p[1] == q[0] for p, q in zip(plan, plan[1:], strict=False)) and len(plan) <= n


class FakeMerge:
    """Stands for the Ray merge task: records which runs it was asked to merge, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any]] = []

    def options(self, **_: Any) -> FakeMerge:
        return self

    def remote(self, left: Any, right: Any) -> Any:
        self.calls.append((left, right))
        return f"({left}+{right})"


def _runs(spec: list[tuple[int, int]], ready: bool = True) -> dict[int, _Run]:
    return {i: _Run(i, i, f"s{i}", batches, ready) for i, batches in spec}


def test_only_finished_adjacent_runs_merge_left_first() -> None:
    runs = _runs([(0, 2), (1, 2), (3, 2), (4, 2), (5, 2)])
    merging: dict[Any, int] = {}
    fake = FakeMerge()
    _merge_adjacent(runs, merging, fake)
    # 0+1 and 3+4 (2 is missing: 1 and 3 are not adjacent); 5 waits for a partner
    assert fake.calls == [("s0", "s1"), ("s3", "s4")]
    assert sorted(runs) == [0, 3, 5] and not runs[0].ready and runs[0].last == 1 and runs[3].last == 4
    assert merging == {"(s0+s1)": 0, "(s3+s4)": 3}
    _merge_adjacent(runs, merging, fake)  # nothing more while the merges run
    assert len(fake.calls) == 2


def test_runs_past_the_record_bound_merge_only_into_the_run_from_sample_0() -> None:
    half = BATCH_RECORD_MAX // 2 + 1
    runs = _runs([(1, half), (2, half)])  # 1 + 2 would drop the record the later merge needs
    fake = FakeMerge()
    _merge_adjacent(runs, {}, fake)
    assert fake.calls == []
    runs[0] = _Run(0, 0, "s0", half, True)  # the run from sample 0 takes any follower, one at a time
    _merge_adjacent(runs, {}, fake)
    assert fake.calls == [("s0", "s1")]


def test_ray_is_imported_only_when_a_cluster_is_asked_for() -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = "import sys, quantviz.cli, quantviz.distributed, quantviz.sensitivity; print('ray' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
