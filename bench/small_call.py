"""One small forward + backward of detlstm on the GPU in every launch variant, for compute-sanitizer
(bench/gpu_session.sh runs it under memcheck and racecheck): 2 bidirectional layers with dropout,
with and without projections, lengths that stop short of T (steps with no rows), and a layer wide
enough for the 128x128 GEMM tiles. Prints "ok" and exits 0 when every call returned finite results.

    python bench/small_call.py
"""

import torch

import detlstm

SHAPES = [  # (T, B, I, H, proj, lengths)
    (6, 4, 5, 7, 0, [5, 2, 5, 3]),
    (6, 4, 5, 7, 3, [6, 1, 4, 3]),
    (23, 9, 130, 36, 0, [23, 1, 20, 22, 5, 23, 12, 2, 23]),
]


def one_call(T, B, I, H, proj, lengths):
    torch.manual_seed(0)
    model = detlstm.LSTM(I, H, num_layers=2, bidirectional=True, dropout=0.5, proj_size=proj).cuda()
    x = torch.randn(T, B, I, device="cuda", requires_grad=True)
    out, (h, c) = model(x, lengths=lengths, dropout_seed=7)
    (out.square().sum() + h.sum() + c.sum()).backward()
    results = [out, h, c, x.grad] + [p.grad for p in model.parameters()]
    assert all(torch.isfinite(t).all() for t in results)


def variant_order():
    """Every launch variant, the kernels no GPU has run yet first (persistent recurrence, split and
    pipelined GEMMs), so a sanitizer run that hits its time limit has checked them."""
    count = len(detlstm._ops.cuda_launch_shapes())
    first = [v for v in (0, 9, 8, 5, 7, 6) if v < count]
    return first + [v for v in range(count) if v not in first]


def main():
    for variant in variant_order():
        previous = detlstm.set_cuda_launch_variant(variant)
        try:
            for shape in SHAPES:
                one_call(*shape)
        finally:
            detlstm.set_cuda_launch_variant(previous)
        torch.cuda.synchronize()
        print(f"variant {variant} ok", flush=True)
    print("ok")


if __name__ == "__main__":
    main()
