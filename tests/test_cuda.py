"""GPU tests (skipped without a CUDA GPU): CPU vs CUDA bitwise equality (G4), agreement with cuDNN,
reproducibility and batch invariance on the GPU, launch shapes that must not change a bit, and the
exhaustive check of the canonical functions over all 2^32 float32 bit patterns."""

import copy
import itertools
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import detlstm
from helpers import assert_bitwise_equal, digest, forward_backward, make_pair

pytestmark = pytest.mark.cuda
HERE = os.path.dirname(os.path.abspath(__file__))
T, B, I, H = 6, 4, 5, 7
LENGTHS = [6, 2, 5, 3]


def _results(model, x, hx, form, batch_first, device, seed):
    """Forward + backward on `device`; returns every result tensor on the CPU."""
    return forward_backward(model.to(device), form, x, hx, LENGTHS, batch_first, device=device,
                            loss_seed=3, dropout_seed=seed)


CASES = list(itertools.product([1, 2, 3], [False, True], [True, False], [False, True], [False, True],
                               ["padded", "unbatched", "packed_unsorted", "lengths"], [0.0, 0.5]))


@pytest.mark.parametrize("layers,bidir,bias,batch_first,with_hx,form,dropout", CASES)
def test_cpu_and_cuda_give_identical_bits(layers, bidir, bias, batch_first, with_hx, form, dropout):
    _, model = make_pair(I, H, num_layers=layers, bias=bias, batch_first=batch_first,
                         bidirectional=bidir, dropout=dropout)
    model.train()
    g = torch.Generator().manual_seed(11)
    shape = (T, I) if form == "unbatched" else ((B, T, I) if batch_first else (T, B, I))
    x = torch.randn(shape, generator=g)
    d = layers * (2 if bidir else 1)
    sshape = (d, H) if form == "unbatched" else (d, B, H)
    hx = (torch.randn(sshape, generator=g), torch.randn(sshape, generator=g)) if with_hx else None
    cpu = _results(copy.deepcopy(model), x, hx, form, batch_first, "cpu", 1234)
    gpu = _results(copy.deepcopy(model), x, hx, form, batch_first, "cuda", 1234)
    for k, (a, b) in enumerate(zip(cpu, gpu)):
        assert_bitwise_equal(a, b, f"CPU vs CUDA, result {k}")


def _large_case(device, variant=None):
    torch.manual_seed(0)
    model = detlstm.LSTM(256, 512, num_layers=2, bidirectional=True, dropout=0.5).to(device)
    model.train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100, 64, 256, generator=g).to(device).requires_grad_()
    lengths = torch.randint(25, 101, (64,), generator=g)
    out, (h, c) = model(x, lengths=lengths, dropout_seed=99)
    loss = (out * torch.randn(out.shape, generator=g).to(device)).sum() + h.sum() + c.sum()
    grads = torch.autograd.grad(loss, [x] + list(model.parameters()))
    return [t.detach().cpu() for t in [out, h, c, *grads]]


@pytest.mark.slow
def test_large_shape_cpu_equals_cuda():
    cpu, gpu = _large_case("cpu"), _large_case("cuda")
    for k, (a, b) in enumerate(zip(cpu, gpu)):
        assert_bitwise_equal(a, b, f"large shape, result {k}")


# Every launch shape of csrc/cuda/launch_shapes.h but the default (index 0, the reference here).
OTHER_SHAPES = list(range(1, len(detlstm._ops.cuda_launch_shapes()))) or [1]


@pytest.mark.parametrize("variant", OTHER_SHAPES)
def test_launch_shapes_do_not_change_bits(variant):
    reference = _large_case("cuda")
    previous = detlstm.set_cuda_launch_variant(variant)
    try:
        forced = _large_case("cuda")
    finally:
        detlstm.set_cuda_launch_variant(previous)
    for k, (a, b) in enumerate(zip(reference, forced)):
        assert_bitwise_equal(a, b, f"launch variant {variant}, result {k}")


PERSISTENT_KERNELS = ("forward_persistent_kernel", "backward_persistent_kernel")
STEP_KERNELS = ("forward_step", "backward_step")


def _kernel_launches(call, kinds):
    """{kind: launches} of the kernels whose names contain each kind, in one call of `call` (profiled)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    counts = {}
    for evt in prof.key_averages():
        for kind in kinds:
            if kind in evt.key:
                counts[kind] = counts.get(kind, 0) + evt.count
    return counts


def test_the_default_runs_the_recurrence_in_persistent_kernels():
    """At hidden 512, bidirectional, both passes' recurrences fit on an A100/H100 at once: the
    default launch shape runs each layer and pass as one persistent launch, no step kernels."""
    _large_case("cuda")  # warm-up: the build of the kernels' plans is not what is counted
    counts = _kernel_launches(lambda: _large_case("cuda"), PERSISTENT_KERNELS + STEP_KERNELS)
    # 2 layers; the backward's per-step kernel still computes dh0 once per layer (kFinal)
    assert counts.get("forward_persistent_kernel") == 2, counts
    assert counts.get("backward_persistent_kernel") == 2, counts
    assert counts.get("forward_step", 0) == 0 and counts.get("backward_step", 0) == 2, counts



def _agreement_results(model, x0, lengths, form, device):
    """Output, states and every gradient of one call of an nn.LSTM or detlstm.LSTM."""
    x = x0.clone().to(device).requires_grad_()
    if form == "packed":
        out, (h, c) = model(pack_padded_sequence(x, lengths, enforce_sorted=False))
        out, _ = pad_packed_sequence(out, total_length=x0.shape[0])
    else:
        out, (h, c) = model(x)
    gl = torch.Generator().manual_seed(4)
    loss = sum((t * torch.randn(t.shape, generator=gl).to(device, t.dtype)).sum()
               for t in (out, h, c))
    return [out, h, c, *torch.autograd.grad(loss, [x] + list(model.parameters()))]


@pytest.mark.parametrize("form", ["padded", "packed"])
@pytest.mark.parametrize("bidir,layers", [(False, 1), (True, 2), (True, 3)])
def test_agrees_with_cudnn(form, bidir, layers):
    """detlstm agrees with cuDNN (strict float32) within 1e-4 and with nn.LSTM in float64 (CPU)
    within 5e-6, each relative to the largest value of the result: a sum's rounding error scales
    with its terms, which a small result of cancelling terms does not show. (On the CPU detlstm is
    ~6e-7 off float64 here; on an H100 cuDNN was once 3e-5 off at one weight-gradient element, so the
    tight bound is the float64 one.)"""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    ref, ours = make_pair(32, 48, num_layers=layers, bidirectional=bidir)
    exact_model = copy.deepcopy(ref).double()
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(20, 8, 32, generator=g)
    lengths = torch.randint(5, 21, (8,), generator=g)
    cudnn = _agreement_results(ref.cuda(), x0, lengths, form, "cuda")
    mine = _agreement_results(ours.cuda(), x0, lengths, form, "cuda")
    exact = _agreement_results(exact_model, x0.double(), lengths, form, "cpu")
    for k, (c, m, e) in enumerate(zip(cudnn, mine, exact)):
        c, m = c.detach().cpu().double(), m.detach().cpu().double()
        scale = e.abs().max().item() or 1.0
        err_cudnn = (c - e).abs().max().item() / scale
        err_mine = (m - e).abs().max().item() / scale
        apart = (m - c).abs().max().item() / scale
        what = (f"result {k}: detlstm vs cuDNN {apart:.2e}, detlstm vs float64 {err_mine:.2e}, "
                f"cuDNN vs float64 {err_cudnn:.2e} (each relative to the largest value)")
        assert err_mine < 5e-6, what
        assert apart < 1e-4, what


def test_run_to_run_and_process_to_process_on_gpu():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE)]))
    code = ("import sys; sys.argv=['x']; import torch, test_cuda as t; "
            "from helpers import digest; print(digest(t._large_case('cuda')))")
    digests = [digest(_large_case("cuda")), digest(_large_case("cuda"))]
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                             cwd=HERE, timeout=600)
        assert run.returncode == 0, run.stderr
        digests.append(run.stdout.strip().splitlines()[-1])
    assert len(set(digests)) == 1, digests


def test_batch_invariance_on_gpu():
    _, model = make_pair(I, H, num_layers=2, bidirectional=True)
    model = model.cuda().eval()
    g = torch.Generator().manual_seed(8)
    x = torch.randn(T, B, I, generator=g).cuda()
    out, (h, c) = model(x, lengths=LENGTHS)
    for b in range(B):
        n = LENGTHS[b]
        o1, (h1, c1) = model(x[:n, b:b + 1])
        assert_bitwise_equal(o1[:, 0], out[:n, b], f"row {b} output")
        assert_bitwise_equal(h1[:, 0], h[:, b], f"row {b} h_n")
        assert_bitwise_equal(c1[:, 0], c[:, b], f"row {b} c_n")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["exp", "sigmoid", "tanh"])
def test_canonical_math_all_float32_bit_patterns(name):
    """All 2^32 inputs: the GPU's exp/sigmoid/tanh bits equal the CPU's."""
    from detlstm._ops import _C_cuda

    chunk = 1 << 27
    for first in range(0, 1 << 32, chunk):
        gpu = _C_cuda.canonical_unary_bits(name, first, chunk).cpu()
        bits = torch.arange(first, first + chunk, dtype=torch.int64).to(torch.int32)  # wraps as uint32
        cpu = detlstm.canonical_unary(bits.view(torch.float32), name)
        if not torch.equal(cpu.view(torch.int32), gpu.view(torch.int32)):
            bad = (cpu.view(torch.int32) != gpu.view(torch.int32)).nonzero()[0].item()
            raise AssertionError(f"{name}: bit pattern {first + bad:#010x}: CPU {cpu[bad].item()!r} "
                                 f"vs GPU {gpu[bad].item()!r}")


def test_opcheck_on_cuda():
    _, model = make_pair(3, 4, num_layers=2, bidirectional=True)
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(5, 3, 3, generator=g).cuda().requires_grad_(), torch.tensor([5, 2, 4]),
            torch.zeros(4, 3, 4).cuda().requires_grad_(), torch.zeros(4, 3, 4).cuda().requires_grad_(),
            [w.detach().cuda().requires_grad_() for w in model._flat_weights], True, 2, True, 0.5,
            True, torch.tensor(5), 0)
    torch.library.opcheck(torch.ops.detlstm.lstm_forward.default, args)
    plain = [a.detach() if isinstance(a, torch.Tensor) else
             [w.detach() for w in a] if isinstance(a, list) else a for a in args]
    torch.library.opcheck(torch.ops.detlstm.lstm_inference.default, tuple(plain))


@pytest.mark.parametrize("layers,proj", [(3, 0), (4, 3)])
def test_inference_on_gpu_gives_the_cpu_forwards_bits(layers, proj):
    _, model = make_pair(5, 7, num_layers=layers, bidirectional=True, proj_size=proj, dropout=0.5)
    g = torch.Generator().manual_seed(1)
    x, lengths = torch.randn(T, B, 5, generator=g), torch.tensor(LENGTHS)
    weights = [w.detach() for w in model._flat_weights]
    h0 = torch.zeros(2 * layers, B, proj or 7)
    c0 = torch.zeros(2 * layers, B, 7)
    args = (x, lengths, h0, c0, weights, True, layers, True, 0.5, True, torch.tensor(9), proj)
    cpu = torch.ops.detlstm.lstm_forward(*args)[:3]
    cuda_args = (x.cuda(), lengths, h0.cuda(), c0.cuda(), [w.cuda() for w in weights], *args[5:])
    gpu = torch.ops.detlstm.lstm_inference(*cuda_args)
    for name, a, b in zip(("output", "h_n", "c_n"), cpu, gpu):
        assert_bitwise_equal(a, b.cpu(), f"lstm_inference on the GPU: {name}")


@pytest.mark.parametrize("layers,bidir,form,dropout",
                         list(itertools.product([1, 2], [False, True], ["padded", "lengths", "packed_unsorted"],
                                                [0.0, 0.5])))
def test_cpu_and_cuda_identical_with_projections(layers, bidir, form, dropout):
    _, model = make_pair(I, H, num_layers=layers, bidirectional=bidir, dropout=dropout, proj_size=3)
    model.train()
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(12))
    cpu = _results(copy.deepcopy(model), x, None, form, False, "cpu", 77)
    gpu = _results(copy.deepcopy(model), x, None, form, False, "cuda", 77)
    for k, (a, b) in enumerate(zip(cpu, gpu)):
        assert_bitwise_equal(a, b, f"projections, CPU vs CUDA, result {k}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cpu_equals_cuda(dtype):
    _, model = make_pair(I, H, num_layers=2, bidirectional=True, dropout=0.5)
    model = model.to(dtype).train()
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(13)).to(dtype)
    cpu = _results(copy.deepcopy(model), x, None, "lengths", False, "cpu", 5)
    gpu = _results(copy.deepcopy(model), x, None, "lengths", False, "cuda", 5)
    for k, (a, b) in enumerate(zip(cpu, gpu)):
        assert_bitwise_equal(a, b, f"{dtype}, CPU vs CUDA, result {k}")


@pytest.mark.parametrize("proj", [0, 3])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_autocast_cuda_matches_cudnn_dtype(proj, packed):
    """Under CUDA autocast the results come in cuDNN's dtypes (detlstm gives all three in the
    autocast dtype there; the CPU's path-dependent dtypes are tested in test_parity), for padded and
    packed input, with and without projections."""
    from torch.nn.utils.rnn import pack_padded_sequence

    ref, ours = make_pair(I, H, num_layers=2, bidirectional=True, proj_size=proj)
    ref, ours = ref.cuda(), ours.cuda()
    x = torch.randn(T, B, I, device="cuda")
    inp = pack_padded_sequence(x, [T] + [T - 1] * (B - 1)) if packed else x
    with torch.autocast("cuda"):
        r, (rh, rc) = ref(inp)
        o, (h, c) = ours(inp)
    r, o = (r.data, o.data) if packed else (r, o)
    assert (o.dtype, h.dtype, c.dtype) == (r.dtype, rh.dtype, rc.dtype)
    torch.testing.assert_close(o.float(), r.float(), atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("state_dtype", [None, torch.float32, torch.bfloat16], ids=["no_hx", "hx_f32", "hx_bf16"])
@pytest.mark.parametrize("cudnn", [True, False], ids=["cudnn", "no_cudnn"])
@pytest.mark.parametrize("proj", [0, 3])
def test_autocast_cuda_dtypes_follow_nn_lstm_with_either_backend(proj, cudnn, state_dtype):
    """CUDA autocast with cuDNN disabled (nn.LSTM then runs ATen's own cell) and with a given (h0, c0)
    of another dtype: detlstm's results come in nn.LSTM's dtypes, or both refuse the call."""
    ref, ours = make_pair(I, H, num_layers=2, bidirectional=True, proj_size=proj)
    ref, ours = ref.cuda(), ours.cuda()
    x = torch.randn(T, B, I, device="cuda")
    hx = None
    if state_dtype is not None:
        hx = (torch.randn(4, B, proj or H, device="cuda", dtype=state_dtype),
              torch.randn(4, B, H, device="cuda", dtype=state_dtype))
    results = []
    for model in (ref, ours):
        with torch.backends.cudnn.flags(enabled=cudnn), torch.autocast("cuda"):
            try:
                out, (h, c) = model(x, hx)
                results.append((out.dtype, h.dtype, c.dtype))
            except (RuntimeError, ValueError) as error:
                results.append(type(error))
    assert results[1] == results[0], f"nn.LSTM {results[0]}, detlstm {results[1]}"


@pytest.mark.parametrize("proj", [0, 3])
def test_steps_beyond_every_length_cpu_equals_cuda(proj):
    """max(lengths) < T: the last steps have no rows and are not launched (an empty grid is an error
    on a GPU); results still match the CPU."""
    _, model = make_pair(I, H, num_layers=2, bidirectional=True, dropout=0.5, proj_size=proj)
    model.train()
    x = torch.randn(9, B, I, generator=torch.Generator().manual_seed(14))
    lengths = [4, 2, 3, 1]
    runs = []
    for device in ("cpu", "cuda"):
        m = copy.deepcopy(model).to(device)
        xd = x.to(device).requires_grad_()
        out, (h, c) = m(xd, lengths=lengths, dropout_seed=3)
        loss = (out * torch.linspace(-1, 1, out.numel()).view(out.shape).to(device)).sum() + h.sum() + c.sum()
        runs.append([t.detach().cpu() for t in [out, h, c, *torch.autograd.grad(loss, [xd, *m.parameters()])]])
    for k, (a, b) in enumerate(zip(*runs)):
        assert_bitwise_equal(a, b, f"max(lengths) < T, result {k}")


@pytest.mark.parametrize("variant", [0, 3])
def test_grid_limits_do_not_change_bits_on_gpu(variant):
    """Grids capped at 3 x 2 blocks on the real device: every kernel covers the rest by looping, as it
    must past CUDA's own limits (65,535 row blocks); the bits stay the CPU's."""
    from detlstm._ops import _C_cuda

    _, model = make_pair(21, 19, num_layers=2, bidirectional=True, dropout=0.5)
    model.train()
    x = torch.randn(37, 9, 21, generator=torch.Generator().manual_seed(15))
    lengths = [37, 1, 20, 36, 5, 37, 12, 2, 30]
    runs = []
    for device, limit in (("cpu", None), ("cuda", (3, 2))):
        previous_variant = detlstm.set_cuda_launch_variant(variant)
        previous = _C_cuda.set_grid_limit(*limit) if limit else None
        try:
            m = copy.deepcopy(model).to(device)
            xd = x.to(device).requires_grad_()
            out, (h, c) = m(xd, lengths=lengths, dropout_seed=8)
            loss = (out.square().sum() + h.sum() + c.sum())
            grads = torch.autograd.grad(loss, [xd, *m.parameters()])
            torch.cuda.synchronize()
        finally:
            if previous:
                _C_cuda.set_grid_limit(*previous)
            detlstm.set_cuda_launch_variant(previous_variant)
        runs.append([t.detach().cpu() for t in [out, h, c, *grads]])
    for k, (a, b) in enumerate(zip(*runs)):
        assert_bitwise_equal(a, b, f"grid 3 x 2, launch variant {variant}, result {k}")


@pytest.mark.parametrize("proj", [0, 3], ids=["persistent", "per_step"])
def test_cuda_graph_replay_gives_the_eager_bits(proj):
    """A forward + backward captured in a torch.cuda.CUDAGraph and replayed on new input data gives
    the bits of eager calls on that data (the step schedule reaches the device inside the graph).
    Without projections the graph holds the persistent kernels' cooperative launches and the
    memsets that zero their step counters; with them, the per-step kernels."""
    _, model = make_pair(I, H, num_layers=2, bidirectional=True, dropout=0.5, proj_size=proj)
    model = model.cuda().train()
    g = torch.Generator().manual_seed(21)
    inputs = [torch.randn(T, B, I, generator=g).cuda() for _ in range(2)]
    x = inputs[0].clone().requires_grad_()
    out_shape, state_shape = (T, B, 2 * (proj or H)), (4, B, proj or H)
    loss_weights = [torch.randn(s, generator=g).cuda() for s in (out_shape, state_shape, (4, B, H))]

    def step():
        out, (h, c) = model(x, lengths=LENGTHS, dropout_seed=31)
        loss = sum((t * w).sum() for t, w in zip((out, h, c), loss_weights))
        return [out, h, c, *torch.autograd.grad(loss, [x, *model.parameters()])]

    eager = []
    for data in inputs:
        with torch.no_grad():
            x.copy_(data)
        eager.append([t.detach().clone() for t in step()])
    # what the capture will hold: the same call's kernels, eagerly (persistent ones without projections)
    launches = sum(_kernel_launches(step, PERSISTENT_KERNELS).values())
    assert (launches > 0) == (proj == 0), f"{launches} persistent launches with proj_size={proj}"
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as graph capture of autograd asks
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    for k in (1, 0):
        for t in static:
            t.detach().fill_(float("nan"))  # what the replay does not write stays NaN
        with torch.no_grad():
            x.copy_(inputs[k])
        graph.replay()
        torch.cuda.synchronize()
        for n, (a, b) in enumerate(zip(eager[k], static)):
            assert_bitwise_equal(a.cpu(), b.detach().cpu(), f"graph replay on input {k}, result {n}")
