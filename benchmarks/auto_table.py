"""The "auto" backend table, from a saved kernel benchmark run.

    python -m pytest benchmarks/test_bench_kernels.py --benchmark-only --benchmark-json=kernels.json
    python benchmarks/auto_table.py kernels.json

For each kernel, every compiled backend's median time is divided by the
fastest backend's median in the same group (a size and activation), and these
ratios are summarised by their geometric mean over the groups: 1.00 means
fastest everywhere.  The backends are printed in that order, which is what
``fusednet.kernels.AUTO`` holds.
"""

import json
import math
import sys
from collections import defaultdict

#: benchmark function -> kernel it times
KERNEL_OF = {
    "test_act_forward": "bias_act_forward",
    "test_act_backward": "act_backward",
    "test_softmax_ce": "loss_forward",
    "test_softmax_ce_backward": "loss_backward",
    "test_dropout": "dropout_apply",
    "test_gd": "gd_update",
    "test_momentum": "momentum_update",
    "test_rmsprop": "rmsprop_update",
    "test_adam": "adam_update",
    "test_adam_subnormal_state": "adam_update",  # both states
    "test_ewa": "ewa_update",
    "test_batchnorm_forward": "batchnorm_forward_train",
    "test_batchnorm_forward_infer": "batchnorm_forward_infer",
    "test_batchnorm_backward": "batchnorm_backward",
}
COMPILED = ("numba", "cython")


def table(path):
    with open(path) as f:
        runs = json.load(f)["benchmarks"]
    groups = defaultdict(dict)  # (kernel, group) -> {backend: median}
    for r in runs:
        kernel = KERNEL_OF.get(r["name"].split("[")[0])
        impl = r.get("extra_info", {}).get("impl")
        if kernel and impl in COMPILED:
            groups[kernel, r["group"]][impl] = r["stats"]["median"]
    ratios = defaultdict(lambda: defaultdict(list))  # kernel -> backend -> [time / best]
    for (kernel, _), medians in groups.items():
        best = min(medians.values())
        for impl, t in medians.items():
            ratios[kernel][impl].append(t / best)
    out = {}
    for kernel, per in sorted(ratios.items()):
        out[kernel] = sorted(((math.exp(sum(map(math.log, r)) / len(r)), impl, max(r)) for impl, r in per.items()))
    return out


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__)
    print(f"{'kernel':<26}{'backend':<9}{'geo-mean':>9}{'worst':>8}   (time / fastest backend)")
    for kernel, rows in table(argv[1]).items():
        for k, (geo, impl, worst) in enumerate(rows):
            print(f"{kernel if k == 0 else '':<26}{impl:<9}{geo:>9.2f}{worst:>8.2f}")


if __name__ == "__main__":
    main(sys.argv)
