"""Shared test configuration: the kernel-backend fixtures and the slow tier.

``pytest -m "not slow"`` is the quick tier for the edit-test loop; CI runs
everything.  Tests are slow here when they compile many Numba variants, start
subprocesses or sweep thread counts; they are listed by node name so that the
list is in one place.
"""

import pytest

from fusednet import kernels


@pytest.fixture
def backend(request):
    """The global kernel backend set to ``request.param`` for one test, then restored.

    Parametrise indirectly: ``@pytest.mark.parametrize("backend", kernels.available(), indirect=True)``
    (a test that parametrises ``backend`` directly gets the plain value instead).
    """
    before = kernels.get_backend()
    kernels.set_backend(request.param)
    yield request.param
    kernels.set_backend(before)


@pytest.fixture
def restore_backend():
    """Whatever a test does to the global kernel backend is undone after it."""
    before = kernels.get_backend()
    yield
    kernels.set_backend(before)

#: (file, test-name prefix) of the slow tests
SLOW = (
    ("test_no_allocation.py", "test_no_allocation_per_call"),
    ("test_numba_specific.py", "test_parallel_kernels_any_chunking"),
    ("test_numba_specific.py", "test_bits_do_not_depend_on_thread_count"),
    ("test_cli.py", "test_gradcheck_command"),
    ("test_cli.py", "test_bench_command"),
    ("test_model.py", "test_gradients_match_torch_autograd"),
    ("test_tune.py", "test_a_worker_that_dies"),
    ("test_tune.py", "test_same_params_and_scores_for_any_executor"),
    ("test_reliability.py", "test_threads_sharing_a_model"),
    ("test_cli.py", "test_cold_numba_cache"),
    ("test_warmup.py", "test_warmup_in_worker_processes"),
    ("test_transcendental_range.py", "test_loss_output_error_in_ulp_over_whole_range"),
    ("test_transcendental_range.py", "test_softmax_error_in_ulp_over_whole_range"),
    ("test_transcendental_range.py", "test_activation_error_in_ulp_over_whole_range"),
    ("test_transcendental_range.py", "test_loss_cost_relative_error_over_whole_range"),
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.fspath.basename
        if any(name == f and item.name.startswith(prefix) for f, prefix in SLOW):
            item.add_marker(pytest.mark.slow)
