// The phases of an LSTM call, with the order of every sum in each (ARITHMETIC.md), written once for
// both backends. The CPU drivers (csrc/cpu/lstm_cpu_forward.h, lstm_cpu_backward.h) and the CUDA
// drivers (csrc/cuda/forward.cu, backward.cu) each have one function per phase, under these names,
// so the two can be read side by side; docs/KERNELS.md shows them next to each other.
//
// Notation: layer l, direction d, row b, time t, gate row n (PyTorch's order i, f, g, o; 4H rows),
// hidden unit j, RH the width of h (proj_size with projections, else H). "Sum" means the chunked sum
// of ARITHMETIC.md rule 3 (chunked_sum.h): the terms in ascending index order, cut into chunks of
// 64, each chunk one chain from +0, the partials left-folded. Every "+" below is one rounded add.
//
// Forward, per layer from the bottom:
//   dropped layer input   x for layer 0; above, the output of the layer below through dropout
//                         (rule 7: the Philox draw of (layer, t, b, feature / 4)).
//   input projection      for every valid (t, b) and gate row n: pre = (b_ih[n] + b_hh[n]) + X,
//                         X = the sum over k of x[k] * W_ih[n][k] (pre = X without bias).
//   recurrence            per step in processing order: R = the sum over k of h_prev[k] * W_hh[n][k],
//                         a = pre + R, then the cell (rule 5); with projections h = the sum over j of
//                         m[j] * W_hr[q][j], m = o * tanh(c).
//   final states          h_n, c_n: the forward direction's after t = len-1, the reverse's after 0.
//
// Backward, per layer from the top, the gradient w.r.t. its output dy given:
//   recurrence backward   per step in reverse processing order: at a row's last step
//                         dh = dy + dh_n; otherwise dh = dy + S, S the sum over gate rows n of
//                         da(next step)[n] * W_hh[n][j]; with projections dm = the sum over q of
//                         dh[q] * W_hr[q][j]; then the cell's backward (dc_n enters at the row's last
//                         step).
//   initial-state gradients  dh0 = the sum over n of da(first step)[n] * W_hh[n][j]; dc0 = what
//                         reached c_prev at the first step.
//   input gradient        dX[k] = S_forward + S_reverse (S_forward alone with one direction), each
//                         the sum over that direction's n of da[n] * W_ih[n][k]; then back through
//                         the dropout mask to the layer below.
//   weight gradients      dW_ih, dW_hh, dW_hr: sums over the valid (t, b) in storage order (t, then
//                         b) of da[n] * x[k], da[n] * h_prev[k], dh[q] * m[j].
//   bias gradients        db_ih[n] = db_hh[n] = the add-sum over the valid (t, b) of da[n].
#pragma once
