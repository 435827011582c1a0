"""How fusednet runs its kernels, in one place: parallel cut-offs, the "auto" choices, floating point.

Nothing here changes what a kernel computes (within rounding); it decides how
the work runs.  Every backend reads its numbers from this module: the Numba
kernels when they are compiled, the Cython extension at import
(:mod:`fusednet.kernels._cython` passes :data:`CYTHON_PARALLEL` to it), the
one-call step when a fit builds its plan, the gradient check when it picks its
evaluator.  The figures behind each number come from the benchmarks named
beside it; ``docs/PERFORMANCE.md`` keeps the measurements.

Parallel cut-offs
-----------------
A kernel runs serially up to and including its threshold (elements) and on
the team above it; below 32k elements no kernel pays an OpenMP launch.  The
Numba thresholds were chosen by timing each serial kernel against its
parallel variant on 2 threads at 2**13 .. 2**18 elements
(``benchmarks/bench_numba_scratch.py``), the Cython ones and the step's
:data:`STEP_SERIAL_FLOPS` the same way (``benchmarks/test_bench_kernels.py``,
``benchmarks/test_bench_step_threads.py``).

Floating point
--------------
No backend assumes away NaN or inf (no ``nnan``/``ninf``, no
``-ffast-math``): NaN propagates and the divergence checks see it.

* Numba element-wise kernels: :data:`FASTMATH` -- ``contract`` fuses
  multiply-adds; ``arcp``/``afn`` allow reciprocals and the kernels' own
  polynomial functions; no ``reassoc``, since with ``reassoc`` and
  ``contract`` together LLVM fuses differently in a loop's vector body and in
  its scalar remainder, so an element's bits would depend on where a thread's
  chunk starts.
* Numba loops that reduce along one row in the loss kernels:
  :data:`REDUCTION_FASTMATH`, adding ``reassoc`` so they vectorise; a row is
  never split between threads, so the result does not depend on the thread
  count.
* The softmax rows' sums (forward, and the row dot product of its backward):
  eight running sums added in a fixed order, compiled with :data:`FASTMATH`.
  With ``reassoc`` the compiler chose per calling kernel whether to vectorise
  a row's sum, and the in-place and out-of-place kernels, compiled in two
  processes and cached, gave rows one rounding apart.
* The batched gradient check (float64): :data:`GRADCHECK_FASTMATH` -- no
  approximate functions or reciprocals; each coordinate runs whole on one
  thread, so the results do not depend on the thread count either.
* The Cython extension: ``-O3 -fno-math-errno -fno-trapping-math
  -ffp-contract=off`` (``kernels/CMakeLists.txt``, the one place a C flag can
  live): no contraction, so the three instruction-set copies of the extension
  (baseline, AVX2, AVX-512) compute the same bits, FMA or not.
"""

# ---- parallel cut-offs: Numba kernels (elements) ------------------------------------

#: element-wise forward (linear, ReLU, leaky ReLU): 2 threads win 1.1x at 64k, 1.25x at 128k
ELEMENTWISE_SERIAL_THRESHOLD = 65_536
#: sigmoid, tanh and softmax forward: 2 threads win 1.2x at 16k, 1.4x at 32k
TRANSCENDENTAL_SERIAL_THRESHOLD = 32_768
#: loss forward (float64 exp and log per element), compute bound like the above
LOSS_SERIAL_THRESHOLD = 32_768
#: dropout: 2 threads win 1.2x at 8k, 1.65x at 32k
DROPOUT_SERIAL_THRESHOLD = 32_768
#: Adam and RMSProp: 2 threads lose at 16k (0.87x), win 1.6x at 32k
ADAPTIVE_SERIAL_THRESHOLD = 32_768
#: GD, momentum and the EWA step (a few flops per element): 1.14x at 64k, 1.2x at 128k
OPTIMISER_SERIAL_THRESHOLD = 65_536
#: activation/loss backward and batch norm: their row sums are split by column bands, each
#: thread walking every row; that pays only for large arrays with wide bands
REDUCTION_SERIAL_THRESHOLD = 262_144
#: ... and at least this many columns per band
REDUCTION_MIN_BAND = 256

# ---- parallel cut-offs: the Cython extension's kernels (elements) -------------------

#: passed to the extension's ``set_parallel_thresholds`` when it is imported; OpenMP launches
#: of 2.4-4.5 us there, measured per kernel family
CYTHON_PARALLEL = {
    "transcendental": 40_000,  # sigmoid, tanh, softmax, BCE/CCE
    "elementwise": 200_000,  # linear, relu, backward, loss backward, batch norm, ewa, gd
    "optimiser": 100_000,  # momentum, rmsprop, adam
    "dropout": 100_000,
}

# ---- parallel cut-off: the one-call step (floating-point operations) -----------------

#: a step of fewer floating-point operations in its products (6 x rows x the weights) runs on
#: the calling thread, with no team and no barrier (below it a team's start and barriers cost
#: more than the second core saves, and on a busy machine a team of tiny steps waits for a
#: descheduled thread at every barrier).  Measured with the AVX-512 copy of the extension, whose
#: products run 16 floats wide
STEP_SERIAL_FLOPS = 12_000_000
#: ... and the share of it for each copy of the extension (``fusednet.kernels._cython.ISA``):
#: the barriers cost the same time on any core, and a core of narrower vectors spends that time
#: on fewer flops (AVX2: 8 floats a vector; the baseline copy's sgemm: SSE, 4).  Measured on a
#: 2-core AVX2 machine, the digits step (8.9M flops) took 212-228 us on a team against 304-315 us
#: on one thread in 7 of 9 processes (327-331 us in the other two)
STEP_SERIAL_SCALE = {"x86-64-v4": 1.0, "x86-64-v3": 0.5, "x86-64": 0.25}

# ---- "auto" choices --------------------------------------------------------------------

#: kernels whose Cython build measured clearly faster than Numba (geometric mean over the
#: benchmark groups of time / fastest backend, float32, 2 threads; ``benchmarks/auto_table.py``);
#: everywhere else Numba was faster or within 3 % (a tie keeps Numba)
CYTHON_FIRST = frozenset({"batchnorm_backward", "batchnorm_forward_infer", "dropout_apply", "rmsprop_update"})

#: the gradient check runs the course's loop instead of its batched kernel when the loop would
#: take less than this (seconds): compiling the kernel on its first use takes longer
GRADCHECK_LOOP_SECONDS = 0.25
#: the loop's estimate: a forward pass costs this much per layer (seconds) ...
LOOP_SECONDS_PER_LAYER = 7e-6
#: ... plus its matrix products at this rate (floating-point operations per second)
LOOP_FLOPS_PER_SECOND = 2e10

# ---- floating point (see the module docstring) ---------------------------------------

#: Numba element-wise kernels and point functions
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn"})
#: Numba loops that reduce along one row
REDUCTION_FASTMATH = FASTMATH | {"reassoc"}
#: the batched gradient check (float64): no approximate functions or reciprocals
GRADCHECK_FASTMATH = frozenset({"nsz", "contract", "reassoc"})
