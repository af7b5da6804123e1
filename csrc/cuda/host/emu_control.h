// Host build: the emulator's controls and its error type, in plain C++ (module.cpp includes it
// without the device layer).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace nvw::emu {

// A kernel bug the emulation saw (a deadlock, an access outside shared memory, a phase that
// received bytes before its last one was consumed, ...), with where every thread stood.
struct EmulationError : std::runtime_error {
  explicit EmulationError(const std::string& what) : std::runtime_error(what) {}
};

struct Options {
  uint64_t seed = 0;               // 0: blocks and threads in order; else a random schedule from it
  int max_live_units = 2;          // independent blocks (or clusters) run interleaved at once
  uint64_t async_delay_ns = 2000;  // st.async lands up to this long (emulated time) after it is issued
  uint64_t livelock_ns = 100'000'000'000;  // polls seeing no change for this long: a livelock
  // A GPU too busy to keep cooperating blocks running: block `starve_block` (grid index, -1:
  // none) runs only when every other block is stuck, and a block whose threads only poll keeps
  // polling for `spin_rounds` rounds before it gives up its turn, so that bounded waits on the
  // starved block run out of time as they would on such a GPU.
  int starve_block = -1;
  int spin_rounds = 0;
};
void set_options(const Options& options);

struct Stats {
  uint64_t launches = 0, blocks = 0, switches = 0, stall_jumps = 0;
};
Stats stats();

}  // namespace nvw::emu
