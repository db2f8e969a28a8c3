// Philox4x32-10 (Salmon, Moraes, Dror, Shaw: "Parallel random numbers: as easy as 1, 2, 3", SC 2011),
// the counter-based generator behind the dropout masks (ARITHMETIC.md rule 7). A draw is a pure
// function of (key, counter), so a mask element never depends on which thread or block computes it.
#pragma once

#include "platform.h"

namespace DETLSTM_MATH_NS {

struct Philox4x32 {
  uint32_t v[4];
};

DETLSTM_HD uint32_t mul_hi_u32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

DETLSTM_HD Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t key0, uint32_t key1) {
  const uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  const uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key0 += kWeyl0;
      key1 += kWeyl1;
    }
    const uint32_t hi0 = mul_hi_u32(kMul0, ctr.v[0]), lo0 = kMul0 * ctr.v[0];
    const uint32_t hi1 = mul_hi_u32(kMul1, ctr.v[2]), lo1 = kMul1 * ctr.v[2];
    Philox4x32 next;
    next.v[0] = hi1 ^ ctr.v[1] ^ key0;
    next.v[1] = lo1;
    next.v[2] = hi0 ^ ctr.v[3] ^ key1;
    next.v[3] = lo0;
    ctr = next;
  }
  return ctr;
}

// The four draws for features 4*feature_group .. 4*feature_group+3 of one (layer, step, row).
// Counter words: (feature_group, row, step, layer); key: the 64-bit seed split in two words.
DETLSTM_HD Philox4x32 dropout_draws(uint64_t seed, uint32_t layer, uint32_t step, uint32_t row,
                                    uint32_t feature_group) {
  Philox4x32 ctr;
  ctr.v[0] = feature_group;
  ctr.v[1] = row;
  ctr.v[2] = step;
  ctr.v[3] = layer;
  return philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

}  // namespace DETLSTM_MATH_NS
