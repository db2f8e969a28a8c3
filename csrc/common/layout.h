// Where things are in one LSTM call: the sizes and the index arithmetic every driver and kernel uses,
// written once for the CPU and CUDA sides (the tensors' layouts are described in lstm_args.h).
#pragma once

#include <cstdint>

#include "lstm_args.h"
#include "platform.h"

namespace DETLSTM_MATH_NS {

// The sizes of one call, named once. RH is the width of h: proj_size with projections, else H.
struct CallDims {
  int64_t T, B, I, H, RH, L, D;
  int64_t DH;  // width of a layer's output, D * RH
  int64_t G;   // gate rows, 4H
  int64_t KL;  // layers whose gates and cells the buffers hold (kept_layers: L, or 1 on CUDA)
  bool proj, bias;

  CallDims() = default;  // for kernel parameter arrays filled later (the CUDA GEMM groups)
  DETLSTM_HD explicit CallDims(const ::detlstm::LstmShape& s)
      : T(s.steps), B(s.batch), I(s.input_size), H(s.hidden_size),
        RH(s.proj_size > 0 ? s.proj_size : s.hidden_size), L(s.num_layers), D(s.directions),
        DH(s.directions * RH), G(4 * s.hidden_size), KL(s.keeps_every_layer ? s.num_layers : 1),
        proj(s.proj_size > 0), bias(s.has_bias) {}

  // Width of layer l's input.
  DETLSTM_HD int64_t layer_input(int64_t l) const { return l == 0 ? I : DH; }
  // Row of (layer, direction, batch row) in the states h0, c0, h_n, c_n and their gradients,
  // shaped (L*D, B, width).
  DETLSTM_HD int64_t state_row(int64_t l, int64_t d, int64_t b) const { return (l * D + d) * B + b; }
  // Row of (t, b) in a time-major (T, B, width) tensor.
  DETLSTM_HD int64_t row(int64_t t, int64_t b) const { return t * B + b; }
  // Where direction d's h of (t, b) starts in a layer's output (T, B, D*RH).
  DETLSTM_HD int64_t out_offset(int64_t t, int64_t b, int64_t d) const {
    return row(t, b) * DH + d * RH;
  }
  // Where (layer, direction)'s block starts in gates (KL, D, T, B, 4H) or cells (KL, D, T, B, H), in
  // rows of (t, b). With one layer kept, every layer's block is the same.
  DETLSTM_HD int64_t saved_rows(int64_t l, int64_t d) const { return ((l % KL) * D + d) * T * B; }
};

// Time index of processing step s of a row of this length: forward runs t = s, reverse t = len-1-s.
DETLSTM_HD int64_t step_time(int64_t direction, int64_t s, int64_t length) {
  return direction == 0 ? s : length - 1 - s;
}
// The time index whose state feeds step t: t-1 forward, t+1 reverse.
DETLSTM_HD int64_t prev_time(int64_t direction, int64_t t) { return direction == 0 ? t - 1 : t + 1; }
// Whether t is the first step direction d processes in a row of this length (its state is h0, c0).
DETLSTM_HD bool first_step(int64_t direction, int64_t t, int64_t length) {
  return direction == 0 ? t == 0 : t == length - 1;
}

// h_prev of (t, b) in direction d of layer l, what multiplied W_hh at that step: the row's h0 at its
// first step, else the layer's output at the previous time.
template <typename T>
DETLSTM_HD const T* h_prev_of(const CallDims& c, const T* h0, const T* y, int64_t l, int64_t d,
                              int64_t t, int64_t b, int64_t length) {
  if (first_step(d, t, length)) return h0 + c.state_row(l, d, b) * c.RH;
  return y + c.out_offset(prev_time(d, t), b, d);
}

// c_prev likewise: the row's c0 at its first step, else this direction's cell at the previous time.
template <typename T>
DETLSTM_HD const T* c_prev_of(const CallDims& c, const T* c0, const T* cells, int64_t l, int64_t d,
                              int64_t t, int64_t b, int64_t length) {
  if (first_step(d, t, length)) return c0 + c.state_row(l, d, b) * c.H;
  return cells + c.row(prev_time(d, t), b) * c.H;
}

// What a fixed-order product stores for each element once its chunked sum S (ARITHMETIC.md rule 3,
// chunked_sum.h) is complete: S itself, or v[n] + S for a vector v over the output columns (the
// gate pre-activations' (b_ih + b_hh) + X, rule 4).
enum class GemmEpilogue { kStore, kAddVector };

}  // namespace DETLSTM_MATH_NS
