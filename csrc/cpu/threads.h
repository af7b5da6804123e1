// Threads for the CPU engine: a persistent pool (so a call costs a wake-up, not thread creation)
// and the low-latency barrier the threads of one team meet at several times per sample.
//
// No OpenMP on purpose: PyTorch ships its own OpenMP runtime, and two runtimes in one process
// are fragile. Everything here is std::thread and atomics.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace nvwavenet::cpu {

// CPUs this process may run on (its affinity mask), at least 1.
int available_cpus();

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Busy-waits until `ready()` holds: a spin of bounded time with the CPU's pause hint (a partner
// thread normally arrives within microseconds), then yielding, so that on an oversubscribed
// machine the thread being waited for can get the core. The bound is in time, not iterations,
// because a pause lasts anywhere from a few to 150 cycles depending on the CPU (33 ns on the
// Zen 5 this was tuned on). It is short because the partner may share this core: a busy machine's
// scheduler often wakes a pool thread on its waker's core, and there a 1 ms spin made each
// barrier cost 1 ms where 20 us cost tens of microseconds.
template <class Ready>
void spin_until(Ready ready) {
  constexpr auto kSpinFor = std::chrono::microseconds(20);
  constexpr int kPausesPerClockRead = 16;
  if (ready()) return;
  const auto give_up = std::chrono::steady_clock::now() + kSpinFor;
  do {
    for (int i = 0; i < kPausesPerClockRead; ++i) {
      if (ready()) return;
      cpu_relax();
    }
  } while (std::chrono::steady_clock::now() < give_up);
  while (!ready()) std::this_thread::yield();
}

// A barrier between the `members` threads of one team, split in two halves so that a thread can
// do work that needs nobody else's results between announcing it is done (arrive) and needing
// everybody else's (wait). Each member owns one counter on its own cache line and is the only
// writer of it; waiting reads the others' counters, so no read-modify-write is ever contended.
class TeamBarrier {
 public:
  explicit TeamBarrier(int members);

  // Announces that this member's writes so far are complete; returns the phase to wait for.
  uint64_t arrive(int member) {
    const uint64_t phase = epochs_[member].value.load(std::memory_order_relaxed) + 1;
    epochs_[member].value.store(phase, std::memory_order_release);
    return phase;
  }

  // Returns once every member has arrived at `phase`; their writes before arriving are visible.
  void wait(int member, uint64_t phase) const;

 private:
  struct alignas(64) Epoch {
    std::atomic<uint64_t> value{0};
  };
  int members_;
  std::unique_ptr<Epoch[]> epochs_;
};

class ThreadPool {
 public:
  // The process's pool. A child made by fork() gets a fresh one: threads do not survive fork.
  static ThreadPool& instance();

  // Calls task(i) for every i in [0, threads), task(0) on the calling thread, and returns when all
  // have returned. `task` must not throw (the engine allocates and validates before it starts).
  // Calls from several threads take turns.
  void run(int threads, const std::function<void(int)>& task);

 private:
  ThreadPool() = default;
  void worker(int index, uint64_t seen);

  std::mutex run_mutex_;  // one run at a time
  std::mutex mutex_;      // guards the fields of the current job below, and wakes sleepers
  std::condition_variable wake_;
  std::vector<std::thread> workers_;  // worker i - 1 runs task(i)
  const std::function<void(int)>* task_ = nullptr;
  int threads_ = 0;
  std::atomic<uint64_t> generation_{0};  // bumped per job
  std::atomic<int> pending_{0};          // workers still in the current job
};

}  // namespace nvwavenet::cpu
