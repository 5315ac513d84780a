"""Jobs and their energy (controller/core/jobs.py): counter differences, the power integral where a
device has no counter or its counter went back, a job across nodes, a device taken by a new job
whose old one never ended, and a job that runs across a controller restart.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpuctl.controller.core import desired, jobs, model, ring

S = 1_000_000_000
T0 = 1_800_000_000  # seconds: the tests' times are after this


def store(n: int) -> ring.RingStore:
    return ring.RingStore(n_metrics=model.N_STORED, window=8, capacity=n, counters=model.COUNTERS)


def sample(st: ring.RingStore, slot: int, t_s: float, power_w: float, energy_j: float | None) -> None:
    row = np.full((1, model.N_STORED), np.nan)
    row[0, model.M["power_w"]] = power_w
    if energy_j is not None:
        row[0, model.M["energy_j"]] = energy_j
    st.append(np.array([slot]), np.array([int((T0 + t_s) * S)]), row)  # 0 ns would mean "no sample"


def same(got: tuple[float, str], joules: float, method: str) -> None:
    assert got[0] == pytest.approx(joules) and got[1] == method


def run(js: jobs.Jobs, st: ring.RingStore, readings: list[tuple[int, float, float, float | None]]) -> None:
    """Each (slot, t, power, energy) stored, then one tick."""
    for slot, t, w, e in readings:
        sample(st, slot, t, w, e)
        js.integrate(st)


def test_counter_where_there_is_one_else_the_integral() -> None:
    st, js = store(2), jobs.Jobs()
    sample(st, 0, 0, 100.0, 5000.0)
    sample(st, 1, 0, 100.0, None)  # no energy counter
    job, orphaned = js.start("42", "n1", [("a", 0, 0), ("b", 1, 1)], st, user="ana", now_ns=0)
    assert orphaned == [] and js.job_of_uuid == {"a": "42", "b": "42"}
    for t in range(1, 11):  # 10 s at 200 W, counter +150 J/s (it says what it says)
        run(js, st, [(0, t, 200.0, 5000.0 + 150 * t), (1, t, 200.0, None)])
    a, b = job.devices
    same(js.device_energy(a, st), 1500.0, jobs.COUNTER)
    # trapezoids: 100->200 in the first second, then 200 W for 9 s
    same(js.device_energy(b, st), 150.0 + 1800.0, jobs.INTEGRATED)
    ended = js.end("42", "n1", st, 11 * S)
    assert ended is job and job.ended_ns == 11 * S and not js.running and js.job_of_uuid == {}
    run(js, st, [(0, 12, 900.0, 99_999.0)])  # after the end: not counted
    assert js.device_energy(a, st)[0] == pytest.approx(1500.0)


def test_a_counter_that_went_back_falls_back_to_the_integral() -> None:
    st, js = store(1), jobs.Jobs()
    sample(st, 0, 0, 300.0, 1e6)
    job, _ = js.start("7", "n1", [("a", 0, 0)], st, user="", now_ns=0)
    run(js, st, [(0, 1, 300.0, 1e6 + 300), (0, 2, 300.0, 50.0)])  # a driver reload reset it
    same(js.device_energy(job.devices[0], st), 600.0, jobs.INTEGRATED)


def test_one_job_on_two_nodes_and_a_device_taken_over() -> None:
    st, js = store(3), jobs.Jobs()
    for slot in range(3):
        sample(st, slot, 0, 100.0, 0.0)
    js.start("1", "n1", [("a", 0, 0)], st, user="", now_ns=0)
    job, _ = js.start("1", "n2", [("b", 0, 1)], st, user="", now_ns=0)
    again, _ = js.start("1", "n2", [("b", 0, 1)], st, user="", now_ns=0)  # a prolog run twice
    assert again is job and [d.uuid for d in job.devices] == ["a", "b"]
    js.end("1", "n1", st, 5 * S)
    assert "1" in js.running and job.devices[0].end_ns == 5 * S and not job.devices[1].end_ns
    # job 1's end on n2 is never told; job 2 gets its device
    _, orphaned = js.start("2", "n2", [("b", 0, 1)], st, user="", now_ns=9 * S)
    assert orphaned == ["1"] and "1" not in js.running and js.job_of_uuid == {"b": "2"}


def test_a_job_across_a_restart_keeps_counting() -> None:
    st, js = store(1), jobs.Jobs()
    sample(st, 0, 0, 100.0, None)
    js.start("5", "n1", [("a", 0, 0)], st, user="", now_ns=0)
    run(js, st, [(0, 1, 100.0, None), (0, 2, 100.0, None)])
    saved = desired.decode(desired.encode(desired.Desired(jobs=js.saved(st))))  # as the state file does
    st2, js2 = store(1), jobs.Jobs()  # the restarted controller; the device gets slot 0 again at Hello
    js2.restore(saved.jobs)
    assert js2.unplaced == {"a"} and js2.job_of_uuid == {"a": "5"}
    sample(st2, 0, 10, 100.0, None)
    js2.adopt("a", 0, st2)
    run(js2, st2, [(0, 11, 100.0, None)])
    d = js2.running["5"].devices[0]
    same(js2.device_energy(d, st2), 300.0, jobs.INTEGRATED)  # 200 before, 100 after
