"""The auto-table summary reads a pytest-benchmark JSON as intended."""

import json

from auto_table import table


def test_geometric_mean_of_time_over_fastest(tmp_path):
    def run(name, group, impl, median):
        return {"name": name, "group": group, "extra_info": {"impl": impl}, "stats": {"median": median}}

    runs = [
        run("test_adam[numba-1000]", "adam 1e3", "numba", 1.0),
        run("test_adam[cython-1000]", "adam 1e3", "cython", 4.0),
        run("test_adam[textbook-1000]", "adam 1e3", "textbook", 0.5),  # not a backend: ignored
        run("test_adam[numba-1e7]", "adam 1e7", "numba", 2.0),
        run("test_adam[cython-1e7]", "adam 1e7", "cython", 1.0),
        run("test_update_bandwidth[adam]", "adam 1e7", "bandwidth", 0.1),  # not a kernel: ignored
    ]
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"benchmarks": runs}))
    rows = table(path)["adam_update"]
    assert [impl for _, impl, _ in rows] == ["numba", "cython"]
    assert abs(rows[0][0] - 2.0**0.5) < 1e-12 and rows[0][2] == 2.0  # numba: ratios 1 and 2
    assert abs(rows[1][0] - 2.0) < 1e-12 and rows[1][2] == 4.0  # cython: ratios 4 and 1
