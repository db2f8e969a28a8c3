"""The CPU block cache (csrc/cpu/block_cache.h): the large buffers a call frees are handed to the next
call instead of fresh memory. It must change no bit: the outputs taken from it are written whole by
the kernels (padding included) and the kernels' scratch is value-initialised, so blocks poisoned
with NaN before their reuse give the bits of the uncached run. And it must keep to its limit."""

import pytest
import torch

import detlstm
from detlstm import _ops
from helpers import assert_results_equal, forward_backward, make_pair

MIB = 1 << 20


@pytest.fixture
def cache():
    """The cache emptied, unpoisoned, at its default limit; the process's settings restored after."""
    limit = detlstm.set_cpu_cache_limit()
    detlstm.empty_cpu_cache()
    _ops.set_cpu_cache_poison(False)
    yield
    _ops.set_cpu_cache_poison(False)
    detlstm.set_cpu_cache_limit(limit)
    detlstm.empty_cpu_cache()


# 64 steps x 33 rows, uneven lengths so that padding rows exist: every output the binding takes from
# the cache (output, layer_out, gates, cells, the input gradient) is 64 KiB or more, most of them in
# its huge class (2 MiB and more), the rest, the packed weights and much scratch in its small class.
STEPS, BATCH, INPUTS = 64, 33, 256
LENGTHS = [64] * 20 + [63, 50, 40, 33, 20, 17, 9, 8, 5, 3, 2, 1, 1]


def _model(hidden, bidirectional, proj, dtype):
    _, m = make_pair(INPUTS, hidden, num_layers=2, bidirectional=bidirectional, dropout=0.25,
                     proj_size=proj, dtype=dtype)
    m.train()
    return m


def _results(model, x):
    trained = forward_backward(model, "lengths", x, None, LENGTHS, loss_seed=3, dropout_seed=5)
    with torch.no_grad():
        out, (h, c) = model(x, lengths=torch.tensor(LENGTHS), dropout_seed=5)
    return trained + [out, h, c]


@pytest.mark.parametrize("hidden,bidirectional,proj,dtype", [
    (136, True, 0, torch.float32), (72, True, 24, torch.float32), (136, False, 0, torch.float64)])
def test_poisoned_cached_blocks_give_the_bits_of_fresh_memory(cache, hidden, bidirectional, proj, dtype):
    x = torch.randn(STEPS, BATCH, INPUTS, generator=torch.Generator().manual_seed(11), dtype=dtype)
    model = _model(hidden, bidirectional, proj, dtype)
    detlstm.set_cpu_cache_limit(0)
    fresh = _results(model, x)
    detlstm.set_cpu_cache_limit(1 << 30)
    _ops.set_cpu_cache_poison(True)
    # fills the cache with blocks, each poisoned as it is returned; twice, because a request may
    # take a larger block than its own (its tail unmapped) and leave the next run one miss
    _results(model, x)
    _results(model, x)
    before = detlstm.cpu_cache_info()
    reused = _results(model, x)
    after = detlstm.cpu_cache_info()
    # every buffer of 64 KiB or more, outputs included, came from the (poisoned) cache
    assert after["misses"] == before["misses"], "the measured run took some buffers fresh"
    assert after["hits"] - before["hits"] >= 8
    assert_results_equal(reused, fresh, "poisoned cached blocks vs fresh memory")


def test_a_repeated_call_takes_its_large_buffers_from_the_cache(cache):
    model = _model(136, True, 0, torch.float32)
    x = torch.randn(STEPS, BATCH, INPUTS)
    before = detlstm.cpu_cache_info()  # hits and misses count from the process's start
    with torch.no_grad():
        model(x)
        first = detlstm.cpu_cache_info()
        model(x)
    second = detlstm.cpu_cache_info()
    requests = first["hits"] + first["misses"] - before["hits"] - before["misses"]
    assert first["misses"] > before["misses"]
    assert first["cached_bytes"] >= first["cached_blocks"] * 64 * 1024 > 0
    assert second["misses"] == first["misses"], "the second call mapped fresh memory"
    assert second["hits"] - first["hits"] == requests
    assert second["cached_bytes"] == first["cached_bytes"]
    detlstm.empty_cpu_cache()
    assert detlstm.cpu_cache_info()["cached_bytes"] == detlstm.cpu_cache_info()["cached_blocks"] == 0


def test_outputs_hold_cache_blocks_while_alive(cache):
    model = _model(136, True, 0, torch.float32)
    x = torch.randn(STEPS, BATCH, INPUTS)
    with torch.no_grad():
        model(x)
        idle = detlstm.cpu_cache_info()["cached_bytes"]
        out, _ = model(x)
        held = idle - detlstm.cpu_cache_info()["cached_bytes"]
    # the layer output (T, B, 2H) is a block of its own, out of the cache while the tensor lives
    assert held >= out.numel() * out.element_size()
    del out
    assert detlstm.cpu_cache_info()["cached_bytes"] == idle


def test_the_cache_keeps_to_its_limit(cache):
    model = _model(136, True, 0, torch.float32)
    x = torch.randn(STEPS, BATCH, INPUTS)
    assert detlstm.set_cpu_cache_limit(0) == 1 << 30  # the default
    with torch.no_grad():
        model(x)
        info = detlstm.cpu_cache_info()
        assert info["cached_bytes"] == 0 and info["limit_bytes"] == 0
        model(x)
        assert detlstm.cpu_cache_info()["hits"] == info["hits"]
        assert detlstm.set_cpu_cache_limit(6 * MIB) == 0
        model(x)
        kept = detlstm.cpu_cache_info()
        assert 0 < kept["cached_bytes"] <= 6 * MIB
    detlstm.set_cpu_cache_limit(1 << 30)
    with torch.no_grad():
        model(x)
    assert detlstm.cpu_cache_info()["cached_bytes"] > 6 * MIB
    assert detlstm.set_cpu_cache_limit(2 * MIB) == 1 << 30  # lowering it evicts at once
    assert detlstm.cpu_cache_info()["cached_bytes"] <= 2 * MIB
    assert detlstm.set_cpu_cache_limit(-1) == 2 * MIB  # a negative limit only asks
    with pytest.raises(TypeError, match="limit_bytes must be an int"):
        detlstm.set_cpu_cache_limit(1.5)


def test_a_forked_child_uses_its_copy_of_the_cache(cache):
    """A child forked with blocks in the cache takes them for its own calls and gets the parent's
    bits (one thread in the child: GNU OpenMP's pool does not survive fork, docs/TROUBLESHOOTING.md)."""
    import os
    import select
    import signal

    from helpers import digest

    model = _model(136, True, 0, torch.float32)
    x = torch.randn(STEPS, BATCH, INPUTS)
    def run():
        with torch.no_grad():
            out, (h, c) = model(x, dropout_seed=5)
        return digest([out, h, c])

    run()  # fills the cache
    expected = run()
    assert detlstm.cpu_cache_info()["cached_bytes"] > 0
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its digest and its cache misses, then leave at once
        try:
            torch.set_num_threads(1)
            misses = detlstm.cpu_cache_info()["misses"]
            got = run()
            os.write(write_end, f"{got} {detlstm.cpu_cache_info()['misses'] - misses}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 120)
        assert ready, "the forked child did not answer within 120 s"
        got, misses = os.read(read_end, 4096).decode().split()
    finally:
        os.close(read_end)
        if not os.waitpid(pid, os.WNOHANG)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert got == expected
    assert misses == "0", "the child mapped fresh memory where its copy of the cache had blocks"
