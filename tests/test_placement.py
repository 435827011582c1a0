"""A team's threads on CPUs of their own (fusednet.kernels._placement) for the time of a call."""

import os
import threading

import numpy as np
import pytest

import fusednet as fn
from fusednet import population as population_module
from fusednet.kernels import _placement
from fusednet.kernels import _population as engine

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux's")


def _members(team, n):
    """``n`` threads that settle on the team at the same time; per thread: the CPU settle returned, the
    CPU it ran on and its CPUs while settled, and its CPUs after release."""
    barrier = threading.Barrier(n)
    seen = [None] * n

    def member(i):
        cpu = team.settle()
        barrier.wait()  # every thread settled before any looks
        held = (cpu, _placement.current_cpu(), os.sched_getaffinity(0))
        barrier.wait()
        team.release()
        seen[i] = held + (os.sched_getaffinity(0),)

    threads = [threading.Thread(target=member, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seen


def test_each_thread_of_a_team_holds_a_cpu_of_its_own_and_gets_the_process_cpus_back():
    allowed = os.sched_getaffinity(0)
    n = 2
    seen = _members(_placement.Team(), n)
    if _placement.current_cpu() < 0:  # the system cannot say: nothing is set
        assert all(cpu == -1 and held == allowed for cpu, _, held, _ in seen)
        return
    settled = [cpu for cpu, _, _, _ in seen if cpu >= 0]
    assert len(settled) == min(n, len(allowed))  # a thread with no free CPU left keeps what it had
    assert len(set(settled)) == len(settled)
    for cpu, ran_on, held, after in seen:
        if cpu >= 0:
            assert held == {cpu} and ran_on == cpu
        else:
            assert held == allowed
        assert after == allowed


def test_a_team_holds_each_thread_on_a_cpu_of_its_own_while_it_works():
    allowed = os.sched_getaffinity(0)
    both = threading.Barrier(2, timeout=60)  # each thread holds a chunk: neither takes both
    seen = {}

    def chunk(k0, k1, w, *args):
        both.wait()
        seen[w] = (_placement.current_cpu(), os.sched_getaffinity(0))
        both.wait()

    with engine.Team(2) as team:
        team.run(np.array([0, 1, 2], np.int64), *([None] * 12), chunk=chunk)
    assert sorted(seen) == [0, 1]
    assert os.sched_getaffinity(0) == allowed
    if _placement.current_cpu() >= 0 and len(allowed) >= 2:
        (cpu0, held0), (cpu1, held1) = seen[0], seen[1]
        assert held0 == {cpu0} and held1 == {cpu1} and cpu0 != cpu1
    else:
        assert all(held == allowed for _, held in seen.values())


def test_a_population_on_the_team_gives_the_caller_its_cpus_back_and_equals_one_without_a_team(monkeypatch):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 3)), (rng.random(64) > 0.5).astype(np.int64)
    layers = [fn.layers.Dense(4, activation="relu"), fn.layers.Dense(1, activation="sigmoid")]
    cfgs = [{"lr": 0.01 * (k + 1)} for k in range(20)]
    alone = fn.Population(layers, input_dim=3, configs=cfgs, batch_size=16, epochs=2)
    alone.fit(X, y)
    monkeypatch.setattr(population_module, "PARALLEL_FLOPS", 0)  # on the team
    before = os.sched_getaffinity(0)
    team = fn.Population(layers, input_dim=3, configs=cfgs, batch_size=16, epochs=2)
    team.fit(X, y)
    assert os.sched_getaffinity(0) == before
    for a, b in zip(alone.models, team.models):
        np.testing.assert_array_equal(a._params, b._params)


def test_a_team_left_without_a_run_stops_its_threads():
    with engine.Team(3) as team:
        threads = list(team._threads)
    assert len(threads) == 2 and not any(t.is_alive() for t in threads)


def test_an_error_in_a_chunk_reaches_the_caller_after_every_thread_stopped():
    ran = []

    def chunk(k0, k1, w, *args):
        ran.append(int(k0))
        if k0 == 1:
            raise ValueError("chunk 1")

    before = os.sched_getaffinity(0)
    team = engine.Team(2)
    with pytest.raises(ValueError, match="chunk 1"):
        with team:
            team.run(np.arange(9, dtype=np.int64), *([None] * 12), chunk=chunk)
    assert not any(t.is_alive() for t in team._threads)
    assert 1 in ran and len(ran) < 8  # no chunk started after the error
    assert os.sched_getaffinity(0) == before


def test_a_team_runs_each_chunk_s_epochs_in_order_in_slices():
    info = np.zeros(32, np.int64)
    info[engine.N_EPOCHS], info[engine.N_STEPS] = 10, 3
    perm, table, out = np.arange(10)[:, None], np.arange(30)[:, None], np.arange(10)[:, None]
    args = [None, None, info, (None, None, None, perm), None, None, None, None, (table, None), None, out, None]
    ran = []
    lock = threading.Lock()

    def chunk(k0, k1, w, net, at, part, data, dev, arenas, hyp, keys, bc, work, part_out, status):
        e0, n = int(part[engine.EPOCH0]), int(part[engine.N_EPOCHS])
        assert data[3][:, 0].tolist() == part_out[:, 0].tolist() == list(range(e0, e0 + n))
        assert bc[0][:, 0].tolist() == list(range(3 * e0, 3 * (e0 + n)))
        with lock:
            ran.append((int(k0), e0, n))

    with engine.Team(2) as team:
        team.run(np.array([0, 4, 8, 9], np.int64), *args, chunk=chunk, slices=4)
    for k0 in (0, 4, 8):
        mine = [(e0, n) for k, e0, n in ran if k == k0]
        assert mine == [(0, 2), (2, 3), (5, 2), (7, 3)]  # in order, each epoch once
    assert len(ran) == 12
