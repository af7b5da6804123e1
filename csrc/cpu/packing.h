// The CPU engine's private copy of the weights, laid out for streaming through the cache.
//
// Every matrix is cut into blocks of 8 output rows; a block stores, for each input column k in
// turn, its 8 weights W[8b .. 8b+8)[k] side by side. A block times a vector is then a run of
// 8-wide multiply-adds (one broadcast input per column, the weights read strictly in order) with
// no horizontal sums, for any number of streams at once. Rows are zero-padded to a multiple of 8,
// so every activation vector is too, and padded entries stay exactly zero through the network
// (zero weights, zero biases, tanh(0) = 0, tanh(0) * sigmoid(0) = 0, relu(0) = 0).
//
// Matrices keep the precision of Params::weight_dtype (float32, or float16 / bfloat16 widened to
// float32 in registers: half the bytes to stream); embeddings and biases are stored as float32.
//
// The buffer is owned by Python (a torch tensor of cpu_packed_bytes(params) bytes, filled once by
// pack_cpu_weights) and starts with a header of the sizes and precision it was packed for, which
// generate_cpu checks against the Params it is given.
#pragma once

#include <cstdint>

#include "nvwavenet.h"

namespace nvwavenet::cpu {

constexpr int kBlock = 8;  // rows per block: one AVX2 register of float32

inline int64_t padded(int64_t n) { return (n + kBlock - 1) / kBlock * kBlock; }

// Where each array lives in the packed buffer, in bytes from its start (each 64-byte aligned).
//
// - embed_prev/embed_curr: [A][Rp] float32, plain rows (looked up, not multiplied).
// - dilate_prev/dilate_curr: per layer a blocked [2Rp][R] matrix, in "gate order": block 2c holds
//   the tanh rows 8c .. 8c+8 and block 2c+1 the matching sigmoid rows R + 8c .. R + 8c + 8, so
//   whoever computes a pair of blocks owns complete gate outputs h[8c .. 8c+8).
// - dilate_b: per layer [2Rp] float32 in gate order.
// - res_w: per layer (L-1 of them) a blocked [Rp][R] matrix; res_b [Rp] float32.
// - skip_w: ONE blocked [Sp][L * Rp] matrix, column l * Rp + r multiplying h_l[r]: the skip sum
//   over all layers is a single product with all layers' gate outputs, done after the last layer
//   and off the per-layer critical path. skip_b: [Sp] float32, the biases summed over layers.
// - out_w: blocked [Ap][Sp]; out_b [Ap]. end_w: blocked [Ap][Ap]; end_b [Ap].
struct Layout {
  int64_t R, S, A, L, Rp, Sp, Ap;
  DType weight_dtype;     // of the matrices
  int64_t weight_bytes;   // bytes per matrix element
  int64_t embed_prev, embed_curr;
  int64_t dilate_prev, dilate_curr, dilate_stride;  // layer l's matrix at dilate_* + l * dilate_stride
  int64_t dilate_b;                                 // layer l at dilate_b + l * 2Rp floats
  int64_t res_w, res_stride, res_b;                 // layer l at res_w + l * res_stride, res_b + l * Rp floats
  int64_t skip_w, skip_b, out_w, out_b, end_w, end_b;
  int64_t total_bytes;

  explicit Layout(const Params& p);
};

// Bytes the packed buffer needs for these sizes (R, S, A, L) and weight_dtype.
int64_t cpu_packed_bytes(const Params& p);

// Fills `dst` (cpu_packed_bytes(p) bytes, 64-byte aligned) from the weights in `p`.
void pack_cpu_weights(const Params& p, void* dst, int64_t dst_bytes);

// The packed buffer, after checking that p.cpu_weights was packed for p's sizes and precision.
const char* checked_packed_weights(const Params& p, const Layout& layout);

}  // namespace nvwavenet::cpu
