"""The CUDA kernels' own sources, run on the CPU.

csrc/cuda compiled as plain C++ against a host emulation of CUDA (tests/cuda_emulation: blocks,
threads as fibers, __shared__ memory, real __syncthreads barriers) and compared bit for bit with the
CPU kernels: every output, saved state and gradient, over the agreement grid, every launch shape and
both execution orders of blocks and threads. This runs in CI without a GPU. It checks the kernels'
indexing, schedules, chain orders and dropout masks; it cannot check the device compiler or the
memory model of blocks running at once, which tests/test_cuda.py does on a real GPU.
"""

import itertools
import os
import re
import subprocess

import pytest
import torch
from torch.utils.cpp_extension import load

import detlstm  # noqa: F401  (registers the CPU operators)
from detlstm._build_config import EMULATION_CXX_FLAGS
from helpers import SMALL, Shape, assert_bitwise_equal, backward_args, forward_args

HERE = os.path.dirname(os.path.abspath(__file__))
EMULATION = os.path.join(HERE, "cuda_emulation")
BUILD_DIR = os.path.join(os.path.dirname(HERE), "build", "cuda_emulation")
ops = torch.ops.detlstm
REPO = os.path.dirname(HERE)


def _launch_shape_count():
    """The entries of csrc/cuda/launch_shapes.h's table (checked against the compiled count below)."""
    with open(os.path.join(REPO, "csrc", "cuda", "launch_shapes.h")) as f:
        table = f.read().split("kLaunchShapes[] = {", 1)[1].split("};", 1)[0]
    return len(re.findall(r"StepKernel::", table))


SHAPES = list(range(_launch_shape_count()))


@pytest.fixture(scope="module")
def emulated():
    os.makedirs(BUILD_DIR, exist_ok=True)
    sources = ["simt.cpp", "emulated_ops.cpp", "kernels_forward.cpp", "kernels_backward.cpp",
               "kernels_elementwise.cpp"]
    module = load(name="detlstm_cuda_emulated",
                  sources=[os.path.join(EMULATION, s) for s in sources],
                  extra_include_paths=[os.path.join(EMULATION, "include")],
                  extra_cflags=["-O2"] + EMULATION_CXX_FLAGS,
                  build_directory=BUILD_DIR, verbose=False)
    module.set_launch_variant(0)
    module.set_order(0)
    return module


def _call(layers, bidir, bias, proj, dropout, dtype, seed=0, **shape):
    """The operator arguments of one training-mode LSTM call with uneven lengths (helpers.SMALL
    unless sizes are given), and backward seeds."""
    size = Shape(**shape) if shape else SMALL
    return forward_args(layers, bidir, bias, proj, dtype, shape=size, dropout=dropout, train=True,
                        seed=seed, dropout_seed=1234 + seed)


def _run(forward, backward, fwd_args, grads):
    out = forward(*fwd_args)
    bwd = backward(*backward_args(fwd_args, out, grads))
    return list(out) + list(bwd[:3]) + list(bwd[3])


def _assert_same(cpu, emu, what):
    names = ["output", "h_n", "c_n", "layer_out", "gates", "cells", "grad_input", "grad_h0",
             "grad_c0"]
    assert len(cpu) == len(emu)
    for k, (a, b) in enumerate(zip(cpu, emu)):
        name = names[k] if k < len(names) else f"grad_weight[{k - len(names)}]"
        assert_bitwise_equal(a, b, f"{what}: {name}")


GRID = list(itertools.product([1, 2, 3], [False, True], [True, False], [0, 3], [0.0, 0.5]))


@pytest.mark.parametrize("layers,bidir,bias,proj,dropout", GRID)
def test_cuda_kernel_sources_give_the_cpu_bits_float32(emulated, layers, bidir, bias, proj, dropout):
    fwd_args, grads = _call(layers, bidir, bias, proj, dropout, torch.float32)
    cpu = _run(ops.lstm_forward, ops.lstm_backward, fwd_args, grads)
    emu = _run(emulated.lstm_forward, emulated.lstm_backward, fwd_args, grads)
    _assert_same(cpu, emu, "emulated CUDA vs CPU")


@pytest.mark.parametrize("bidir,proj", [(False, 0), (True, 0), (True, 3)])
def test_cuda_kernel_sources_give_the_cpu_bits_float64(emulated, bidir, proj):
    fwd_args, grads = _call(2, bidir, True, proj, 0.5, torch.float64)
    cpu = _run(ops.lstm_forward, ops.lstm_backward, fwd_args, grads)
    emu = _run(emulated.lstm_forward, emulated.lstm_backward, fwd_args, grads)
    _assert_same(cpu, emu, "emulated CUDA vs CPU, float64")


def _two_layer_bidir_against_cpu(emulated, shape, what, proj=0, seed=0, variant=0, order=0):
    """A 2-layer bidirectional LSTM with dropout 0.5 of the given sizes, emulated under one launch
    variant and execution order, compared with the CPU bit for bit."""
    fwd_args, grads = _call(2, True, True, proj, 0.5, torch.float32, seed=seed, **shape)
    cpu = _run(ops.lstm_forward, ops.lstm_backward, fwd_args, grads)
    emulated.set_launch_variant(variant)
    emulated.set_order(order)
    try:
        emu = _run(emulated.lstm_forward, emulated.lstm_backward, fwd_args, grads)
    finally:
        emulated.set_launch_variant(0)
        emulated.set_order(0)
    _assert_same(cpu, emu, f"{what}, launch variant {variant}, order {order}")


# Sizes that are not multiples of any tile or block: hidden 19 spans partial GEMM tiles, batch 9 a
# partial row block, 37 steps more than two K-tiles of a step's chain with bidirectional inputs.
MEDIUM = dict(steps=37, batch=9, inputs=21, hidden=19, lengths=(37, 1, 20, 36, 5, 37, 12, 2, 30))


@pytest.mark.parametrize("variant", SHAPES)
@pytest.mark.parametrize("order", [0, 3])
@pytest.mark.parametrize("proj", [0, 5])
def test_launch_shapes_and_execution_order_do_not_change_bits(emulated, variant, order, proj):
    _two_layer_bidir_against_cpu(emulated, MEDIUM, "ragged sizes", proj, 7, variant, order)


# More rows than one block of the slice kernels (launch variant 0) holds: two row blocks per step.
TALL = dict(steps=5, batch=70, inputs=3, hidden=9, lengths=tuple(1 + (7 * b) % 5 for b in range(70)))


@pytest.mark.parametrize("variant", [0, 3, 8])
def test_many_rows_give_the_cpu_bits(emulated, variant):
    _two_layer_bidir_against_cpu(emulated, TALL, "70 rows", 0, 5, variant)


# Big enough for the 128x128 GEMM tiles of the default launch (float32, at least 128 rows and 128
# columns; launch shapes 6 and 7: 128x64): the input projection (131 rows x 144 gate columns), the weight gradient of W_ih (144 x
# 130) and the layer-0 input gradient (131 x 130), each with partial tiles at the edges.
WIDE = dict(steps=23, batch=9, inputs=130, hidden=36, lengths=(23, 1, 20, 22, 5, 23, 12, 2, 23))


@pytest.mark.parametrize("variant", [0, 1, 6, 7, 9])
@pytest.mark.parametrize("proj", [0, 5])
def test_wide_gemm_tiles_give_the_cpu_bits(emulated, variant, proj):
    _two_layer_bidir_against_cpu(emulated, WIDE, "wide tiles", proj, 3, variant)


@pytest.mark.parametrize("early", [False, True])
def test_gemm_tiles_by_asynchronous_copies_give_the_cpu_bits_wherever_copies_land(emulated, early):
    """Launch shape 9's GEMM tiles, whose stages are filled by asynchronous copies: with copies that
    land as late as CUDA allows (a stage read before its wait shows stale values) and with copies
    that land as they are issued (a stage refilled before every thread is done with it shows the
    new values to the threads still reading it)."""
    previous = emulated.set_async_landing(early)
    try:
        _two_layer_bidir_against_cpu(emulated, WIDE, f"copies landing early={early}", 0, 6, 9, 3)
    finally:
        emulated.set_async_landing(previous)


# 12 chunks of 64 valid rows (743 rows): the weight and bias gradients fold 12 chunk partials, and
# the persistent kernels take a row tile of 20 rows.
LONG = dict(steps=40, batch=20, inputs=3, hidden=6, lengths=tuple(40 - (b % 7) for b in range(20)))


@pytest.mark.parametrize("variant", [0, 4])
def test_long_sums_over_rows_give_the_cpu_bits(emulated, variant):
    _two_layer_bidir_against_cpu(emulated, LONG, "740 rows", 0, 8, variant)


def _launches_with_split_buffer(emulated, split_bytes):
    """Kernel launches of a LONG call compared with the CPU under launch shape 0 with the given split
    buffer (0: the default)."""
    emulated.set_split_bytes(split_bytes)
    try:
        before = emulated.counts()[0]
        _two_layer_bidir_against_cpu(emulated, LONG, f"split buffer {split_bytes}", 0, 9, 0)
        return emulated.counts()[0] - before
    finally:
        emulated.set_split_bytes(0)


@pytest.mark.parametrize("split_bytes,extra_launches", [(0, 2), (4096, 34)])
def test_weight_gradients_split_over_chunks_give_the_cpu_bits(emulated, split_bytes,
                                                               extra_launches):
    """The weight and bias gradients' few tiles and 12 chunks: per layer one GEMM group (both
    directions' dW_ih, dW_hh and bias sums), split over chunks under launch shape 0, with their
    partials folded in one pass (the default buffer: one partials and one fold launch instead of one
    GEMM launch per layer, 2 more) or, with 4 KB (1,024 values; a chunk's partials are 480 values at
    layer 0, 912 at layer 1), in passes of 2 chunks at layer 0 and 1 at layer 1 (6 and 12 passes of
    two launches: 11 + 23 more). A 1-byte buffer holds no chunk's partials: nothing is split."""
    unsplit = _launches_with_split_buffer(emulated, 1)
    assert _launches_with_split_buffer(emulated, split_bytes) - unsplit == extra_launches


# No sequence reaches the last steps (max(lengths) = 5 of T = 8): those steps have no rows, and
# launching them would be an empty grid, which a GPU rejects.
SHORT = dict(steps=8, batch=5, inputs=6, hidden=11, lengths=(5, 2, 5, 3, 1))


@pytest.mark.parametrize("variant", [0, 3])
@pytest.mark.parametrize("proj", [0, 4])
def test_steps_beyond_every_length_give_the_cpu_bits(emulated, variant, proj):
    _two_layer_bidir_against_cpu(emulated, SHORT, "max(lengths) < T", proj, 2, variant)


# Grids capped far below the work (2 blocks along x, 1 along y): every kernel must cover the blocks
# of work beyond its grid itself, as a GPU needs beyond 65,535 row blocks or 2^31 - 1 elements'
# blocks. The emulator rejects any launch over the cap, so a kernel that forgot to loop fails.
@pytest.mark.parametrize("variant", SHAPES)
@pytest.mark.parametrize("shape,proj", [(MEDIUM, 5), (WIDE, 0), (TALL, 0)])
def test_grid_limits_do_not_change_bits(emulated, variant, shape, proj):
    emulated.set_grid_limit(2, 1)
    try:
        _two_layer_bidir_against_cpu(emulated, shape, "grid capped at 2 x 1", proj, 4, variant)
    finally:
        emulated.set_grid_limit(0, 0)


def test_the_emulator_rejects_a_grid_over_its_limit(emulated):
    """What makes the test above able to fail: with only the emulator's limit lowered, a kernel that
    needs 4 blocks (1024 patterns, 256 threads each) is refused; with the kernels' limit lowered too,
    it runs in one block and gives the same bits."""
    count, first = 1 << 10, 0x3F800000
    bits = torch.arange(first, first + count, dtype=torch.int64).to(torch.int32)
    expected = detlstm.canonical_unary(bits.view(torch.float32), "exp")
    emulated.set_emulator_max_grid(1, 1)
    try:
        with pytest.raises(RuntimeError, match="unary_bits_kernel: invalid launch shape"):
            emulated.canonical_unary_bits("exp", first, count)
        emulated.set_grid_limit(1, 1)
        assert_bitwise_equal(expected, emulated.canonical_unary_bits("exp", first, count), "one block")
    finally:
        emulated.set_grid_limit(0, 0)


def test_sync_mode_synchronises_after_every_launch(emulated, monkeypatch):
    """DETLSTM_CUDA_SYNC=1: a synchronisation (and check) after every kernel; none without it."""
    fwd_args, grads = _call(2, True, True, 3, 0.5, torch.float32)
    for setting, expect_syncs in (("1", True), ("0", False)):
        monkeypatch.setenv("DETLSTM_CUDA_SYNC", setting)
        launches0, syncs0, _ = emulated.counts()
        _run(emulated.lstm_forward, emulated.lstm_backward, fwd_args, grads)
        launches1, syncs1, _ = emulated.counts()
        assert launches1 - launches0 > 50
        assert syncs1 - syncs0 == (launches1 - launches0 if expect_syncs else 0), setting


# Ranges of float32 bit patterns: both zeros and subnormals, around 1 and the saturation points of
# sigmoid and tanh, exp's overflow and underflow edges, infinities and NaNs (positive and negative).
BIT_RANGES = [0x00000000, 0x007FF000, 0x3F7FF000, 0x3F800000, 0x41100000, 0x42B17000, 0x42CFF000,
              0x7F7FF000, 0x7FC00000, 0x80000000, 0xBF800000, 0xC1100000, 0xC2AEA000, 0xC2CFF000,
              0xFF7FF000, 0xFFC00000]


@pytest.mark.parametrize("name", ["exp", "sigmoid", "tanh"])
def test_canonical_functions_on_the_emulated_device_match_the_cpu(emulated, name):
    count = 1 << 13
    for first in BIT_RANGES:
        device = emulated.canonical_unary_bits(name, first, count)
        bits = torch.arange(first, first + count, dtype=torch.int64)
        x = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32).view(torch.float32)
        assert_bitwise_equal(detlstm.canonical_unary(x, name), device,
                             f"{name} on bit patterns from {first:#010x}")


def test_the_launch_shape_table_is_what_the_tests_iterate(emulated):
    assert emulated.launch_shape_count() == len(SHAPES) >= 4


def test_emulator_shows_a_missing_barrier_and_reports_a_divergent_one(emulated):
    # with the barrier, every thread reads its neighbour's value of this launch, in any order
    for order in (0, 2):
        emulated.set_order(order)
        try:
            assert emulated.neighbour_read_probe(10 + order, True, False).eq(10 + order).all()
        finally:
            emulated.set_order(0)
    # without it, threads run first to last read stale neighbours: the race is visible
    emulated.neighbour_read_probe(1, True, False)
    racy = emulated.neighbour_read_probe(2, False, False)
    assert racy[:63].eq(1).all() and racy[63] == 2
    with pytest.raises(RuntimeError, match="different barriers"):
        emulated.neighbour_read_probe(3, True, True)


def test_emulator_lands_asynchronous_copies_late_or_early_and_reports_one_left_pending(emulated):
    """A read of shared memory before the copy's wait sees the old value when copies land late (the
    default) and the new one when they land as issued; after the wait, the new one either way. A
    thread that returns with a copy in flight is an error."""
    values = torch.arange(100, 132, dtype=torch.int32)
    for early in (False, True):
        previous = emulated.set_async_landing(early)
        try:
            assert torch.equal(emulated.async_copy_probe(values, True, False), values)
            before_wait = emulated.async_copy_probe(values, False, False)
            assert torch.equal(before_wait, values if early else torch.full_like(values, -1))
        finally:
            emulated.set_async_landing(previous)
    with pytest.raises(RuntimeError, match="asynchronous copies not waited for"):
        emulated.async_copy_probe(values, False, True)


def test_emulator_runs_cooperative_blocks_apart_and_reports_a_wait_that_never_ends(emulated):
    """What lets the persistent kernels' tests fail: in a cooperative launch each block runs ahead
    of the others as far as its own waits allow, so a read of another block's data that the step
    barrier does not order sees it stale; with the barrier every order reads this launch's data; a
    barrier that can never be met is an error, not a hang."""
    slots = torch.zeros(5, dtype=torch.int32)
    expected = torch.tensor([11, 12, 13, 14, 10], dtype=torch.int32)
    for order in (0, 1, 2, 3):
        emulated.set_order(order)
        try:
            assert torch.equal(emulated.neighbour_block_probe(slots, 10, True, 0), expected), order
        finally:
            emulated.set_order(0)
    # each block runs to its end before the next starts: blocks 0-3 read the last launch's stamps
    racy = emulated.neighbour_block_probe(slots, 20, False, 0)
    assert racy.tolist() == [11, 12, 13, 14, 20]
    with pytest.raises(RuntimeError, match="wait on each other forever"):
        emulated.neighbour_block_probe(slots, 30, True, 1)
    # the emulator is usable again after the abandoned launch
    assert torch.equal(emulated.neighbour_block_probe(slots, 10, True, 0), expected)


def _counted_run(emulated, shape, what, proj=0, variant=0):
    """_two_layer_bidir_against_cpu, returning the cooperative launches it made."""
    before = emulated.counts()[2]
    _two_layer_bidir_against_cpu(emulated, shape, what, proj, 6, variant)
    return emulated.counts()[2] - before


def test_the_default_runs_each_layer_and_pass_as_one_persistent_launch(emulated):
    # 2 layers x (forward, backward): 4 cooperative launches; with projections the per-step kernels
    assert _counted_run(emulated, MEDIUM, "persistent") == 4
    assert _counted_run(emulated, MEDIUM, "projections: per step", proj=5) == 0


@pytest.mark.parametrize("device,shape,launches", [
    # one SM holds 7 blocks (2048 threads): 4 units per block (10 blocks) do not fit, 8 (6 blocks) do
    ((1, 228 * 1024, 227 * 1024), "MEDIUM", 4),
    ((1, 16 * 1024, 16 * 1024), "MEDIUM", 0),  # one block per SM: the per-step kernels instead
    # 43 KB on one SM: both directions at once (10 blocks of 4 units, 6 of 8) fit in neither pass at
    # any panel (the closest, the backward's 8 units with one-chunk panels, 6.3 KB + 1 KB reserved
    # per block, holds 5); one direction does (7 forward blocks of 4 units; 7 backward ones with
    # one-chunk panels), so every layer and pass is two launches, one per direction
    ((1, 43 * 1024, 43 * 1024), "MEDIUM", 8),
    # 14 KB per block: panels of one chunk, so the backward's sums span several panels
    ((132, 228 * 1024, 14 * 1024), "MEDIUM", 4),
    ((132, 228 * 1024, 14 * 1024), "WIDE", 4),
])
def test_the_persistent_plan_follows_the_device_with_the_same_bits(emulated, device, shape,
                                                                     launches):
    emulated.set_device(*device)
    try:
        assert _counted_run(emulated, globals()[shape], f"device {device}") == launches
    finally:
        emulated.set_device(132, 228 * 1024, 227 * 1024)


# Recurrent sums of several 64-term chunks in both passes (hidden 70: the forward's 70 terms are 2
# chunks, the backward's 280 are 5), where launch shape 8 pads every chunk of the persistent
# kernels' shared W_hh and staged rows by one slot: at batch 3 (one row tile) and 37 (tiles of 32
# and 5 rows), the whole sum in one panel, and in narrower panels: with 8.5 KB per block at batch 3
# the backward's 5-chunk sums in panels of 3 chunks (3 + 2), with 24 KB at batch 37 the forward's
# in panels of one chunk and the backward's in panels of 2 (NARROW_PANELS); padded in every case
# where the launch shape pads (the test checks both).
CHUNKED = dict(steps=6, batch=3, inputs=5, hidden=70, lengths=(6, 2, 5))
CHUNKED_TALL = dict(steps=4, batch=37, inputs=5, hidden=70,
                    lengths=tuple(1 + (5 * b) % 4 for b in range(37)))
NARROW_PANELS = {"CHUNKED": (128, 192), "CHUNKED_TALL": (64, 128)}  # (forward, backward) terms


@pytest.mark.parametrize("variant", [0, 8, 10])
@pytest.mark.parametrize("shape,small_block", [("CHUNKED", 8704), ("CHUNKED_TALL", 24 * 1024)])
@pytest.mark.parametrize("narrow", [False, True])
def test_sums_of_several_chunks_give_the_cpu_bits_in_the_persistent_kernels(emulated, variant,
                                                                            shape, small_block,
                                                                            narrow):
    block_bytes = small_block if narrow else 227 * 1024
    emulated.set_device(132, 228 * 1024, block_bytes)
    emulated.set_launch_variant(variant)
    try:
        batch = globals()[shape]["batch"]
        plans = [emulated.persistent_plan(k, 70, cols, 2, batch) for k, cols in ((70, 4), (280, 1))]
        assert tuple(plan[1] for plan in plans) == (NARROW_PANELS[shape] if narrow else (128, 320))
        assert [plan[2] for plan in plans] == [65 if variant in (8, 10) else 64] * 2
        assert _counted_run(emulated, globals()[shape], f"{shape}, {block_bytes} bytes per block",
                            0, variant) == 4
    finally:
        emulated.set_launch_variant(0)
        emulated.set_device(132, 228 * 1024, 227 * 1024)


def test_a_persistent_launch_refused_at_launch_runs_the_per_step_kernels(emulated):
    """Where the device refuses a cooperative grid its occupancy query said it holds (MPS with an
    active-thread percentage), each pass falls back to the per-step kernels with the same bits,
    instead of failing the call; a refused launch leaves no error for the next check."""
    previous = emulated.set_cooperative_block_limit(1)
    try:
        assert _counted_run(emulated, MEDIUM, "cooperative launches refused") == 0
    finally:
        emulated.set_cooperative_block_limit(previous)
    assert _counted_run(emulated, MEDIUM, "after the limit is lifted") == 4


H100 = (132, 228 * 1024, 227 * 1024)  # multiprocessors, shared memory per multiprocessor and per block


@pytest.mark.parametrize("case,variant,expected", [
    # large's layers (hidden 1024, batch 64) on an H100: 4 units per block, sums in one panel of 128
    # terms, one direction per launch (256 blocks of 2 per SM). Padded chunks would need 116,544 bytes
    # per block, over the 115,712 two blocks per SM leave; they are not taken at the cost of a panel
    # half as wide (64 terms: twice the panels and barriers per step), the chunks stay unpadded.
    ("large forward", 0, (4, 128, 64, 256, 1)),
    ("large forward", 8, (4, 128, 64, 256, 1)),
    ("large backward", 8, (4, 128, 64, 256, 1)),
    # tagger's (hidden 256, batch 64): padding fits at the same panel, so shape 8 pads
    ("tagger forward", 0, (4, 256, 64, 64, 2)),
    ("tagger forward", 8, (4, 256, 65, 64, 2)),
    ("tagger backward", 8, (4, 1024, 65, 64, 2)),
])
def test_padded_chunks_never_narrow_the_panel(emulated, case, variant, expected):
    """plan_persistent on an H100: launch shape 8's padded chunks where they fit at the panel width
    the unpadded ones reach, else unpadded at that width (the sums' bits are the same either way,
    checked for both layouts by the tests above)."""
    hidden = 1024 if case.startswith("large") else 256
    sums = (hidden, hidden, 4) if case.endswith("forward") else (4 * hidden, hidden, 1)
    emulated.set_device(*H100)
    emulated.set_launch_variant(variant)
    try:
        assert emulated.persistent_plan(*sums, 2, 64) == expected
    finally:
        emulated.set_launch_variant(0)


def test_kernels_stay_inside_their_buffers_and_write_every_output():
    """sanitized_run.cpp: the kernels, no torch, under AddressSanitizer and UBSan, every buffer its
    own exact-size allocation and every output NaN before the call (see the file's head)."""
    os.makedirs(BUILD_DIR, exist_ok=True)
    exe = os.path.join(BUILD_DIR, "sanitized_run")
    sources = ["sanitized_run.cpp", "simt.cpp", "kernels_forward.cpp", "kernels_backward.cpp",
               "kernels_elementwise.cpp"]
    compiler = os.environ.get("CXX", "g++")
    subprocess.run([compiler, "-std=c++20", "-O1", "-g", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", *EMULATION_CXX_FLAGS,
                    "-I", os.path.join(EMULATION, "include"), "-o", exe,
                    *[os.path.join(EMULATION, s) for s in sources]], check=True)
    # leak checking needs ptrace, which containers often forbid; leaks are not what this looks for
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="print_stacktrace=1")
    run = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # 8 cases x every launch shape x dropout on and off x float32 and float64
    assert run.stdout.strip().splitlines()[-1] == f"ok {8 * len(SHAPES) * 4}"


# The forward nothing will differentiate (lstm_inference): one layer's gates and cells and two
# layer-output slices reused; five layers take each slice twice. Persistent (0) and per-step (4).
@pytest.mark.parametrize("layers,bidir,proj", [(3, True, 0), (5, False, 0), (4, True, 3)])
@pytest.mark.parametrize("variant", [0, 4])
def test_inference_gives_the_cpu_forwards_bits(emulated, layers, bidir, proj, variant):
    fwd_args, _ = _call(layers, bidir, True, proj, 0.5, torch.float32, seed=4)
    cpu = ops.lstm_forward(*fwd_args)[:3]
    emulated.set_launch_variant(variant)
    try:
        emu = emulated.lstm_inference(*fwd_args)
    finally:
        emulated.set_launch_variant(0)
    for name, a, b in zip(("output", "h_n", "c_n"), cpu, emu):
        assert_bitwise_equal(a, b, f"emulated lstm_inference {name}, launch variant {variant}")
