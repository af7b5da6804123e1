// The compiled CPU engine: SPEC section 1 for the Params of nvwavenet.h, in float32.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "nvwavenet.h"

namespace nvwavenet::cpu {

// The instruction set "auto" resolves to on this CPU: "avx512", "avx2+fma" or "generic".
std::string best_isa();

// The most threads a call with num_threads = 0 uses: the CPUs this process may run on. (At
// batch 1 it measures, as it runs, whether splitting the rows over them beats one thread.)
int default_threads();

// Generates p.num_samples steps of p.batch streams, reading and updating the state in p.
// p.cpu_weights must hold the weights packed by pack_cpu_weights() for p's sizes. `isa` is
// "auto", "avx512", "avx2+fma" or "generic" (the portable fallback, for tests and comparisons).
// Throws std::invalid_argument for invalid params and std::runtime_error for an instruction set
// this CPU cannot run; it never aborts.
void generate_cpu(const Params& p, const std::string& isa);

// generate_cpu for the streams of a pool (nvwavenet/session.py): call stream b is pool row
// p.slots[b] (required), at the position pool_positions[p.slots[b]] (int64 per pool row), which
// is advanced by the stream's steps (p.steps, or p.num_samples) once the call has run. `call_positions` is scratch for p.batch
// int64 values; p.positions is set to it.
void generate_pool_cpu(Params& p, int64_t* pool_positions, int64_t* call_positions, const std::string& isa);

// {stream, step} of the earliest NaN in the conditioning p.cond (the first stream at that step),
// or {-1, -1}, scanned on the engine's threads (p.num_threads, 0: default_threads()). Reads only
// the conditioning fields of p and its sizes R, L, batch and num_samples.
std::pair<int64_t, int64_t> find_nan_cond(const Params& p);

}  // namespace nvwavenet::cpu
