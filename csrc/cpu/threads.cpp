#include "cpu/threads.h"

#include <algorithm>
#include <chrono>

#if defined(__linux__)
#include <sched.h>
#endif
#include <unistd.h>

namespace nvwavenet::cpu {

int available_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

TeamBarrier::TeamBarrier(int members) : members_(members), epochs_(new Epoch[members]) {}

void TeamBarrier::wait(int member, uint64_t phase) const {
  for (int other = 0; other < members_; ++other) {
    if (other == member) continue;
    const std::atomic<uint64_t>& epoch = epochs_[other].value;
    spin_until([&] { return epoch.load(std::memory_order_acquire) >= phase; });
  }
}

ThreadPool& ThreadPool::instance() {
  // Deliberately never destroyed: its workers sleep until the process exits, and joining them
  // from a static destructor would race with the interpreter's own shutdown. After fork() the
  // parent's pool is abandoned the same way (its threads do not exist in the child).
  static std::mutex mutex;
  static ThreadPool* pool = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lock(mutex);
  if (pool == nullptr || owner != getpid()) {
    pool = new ThreadPool();
    owner = getpid();
  }
  return *pool;
}

void ThreadPool::run(int threads, const std::function<void(int)>& task) {
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  while (int(workers_.size()) < threads - 1) {
    workers_.emplace_back(&ThreadPool::worker, this, int(workers_.size()) + 1,
                          generation_.load(std::memory_order_relaxed));
  }
  if (threads > 1) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &task;
      threads_ = threads;
      pending_.store(threads - 1, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
  }
  task(0);
  spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; });
}

void ThreadPool::worker(int index, uint64_t seen) {
  // After a job, keep polling for a while before sleeping: generation is often called in a loop
  // of short chunks (streaming), and a condition-variable wake-up costs tens of microseconds.
  constexpr auto kLinger = std::chrono::microseconds(200);
  for (;;) {
    const auto idle_since = std::chrono::steady_clock::now();
    while (generation_.load(std::memory_order_acquire) == seen &&
           std::chrono::steady_clock::now() - idle_since < kLinger) {
      cpu_relax();
    }
    const std::function<void(int)>* task;
    int threads;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
      seen = generation_.load(std::memory_order_relaxed);
      task = task_;
      threads = threads_;
    }
    if (index < threads) {
      (*task)(index);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }
}

}  // namespace nvwavenet::cpu
