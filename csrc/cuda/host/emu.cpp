// The host build's emulator: fibers, the block scheduler, barriers and warp collectives, the PTX
// wrappers' semantics (ptx_host.h), and the CUDA runtime API of an emulated sm_90 device
// (include/cuda_runtime.h). See emu.h for the execution model and csrc/cuda/NOTES.md for what it
// cannot see.
#include <sys/mman.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "emu_control.h"
#include "include/cooperative_groups.h"
#include "include/cuda_runtime.h"
#include "ptx_host.h"

#if !defined(__x86_64__)
#error "the host build's fibers switch stacks with x86-64 code"
#endif

// The dynamic shared memory of the block whose OS thread this is (every kernel declares
// `extern __shared__ float4 shared_vectors[]`, which emu.h makes thread_local).
namespace nvwavenet::gpu {
constexpr int64_t kSharedCapacity = 227 * 1024;
alignas(128) thread_local float4 shared_vectors[kSharedCapacity / 16];
}  // namespace nvwavenet::gpu

// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *save and continues on stack `to` (made by this function or by new_stack).
extern "C" void nvw_fiber_switch(void** save, void* to);
extern "C" void nvw_fiber_trampoline();
asm(R"(
.text
.globl nvw_fiber_switch
.type nvw_fiber_switch,@function
nvw_fiber_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size nvw_fiber_switch, .-nvw_fiber_switch
.globl nvw_fiber_trampoline
.type nvw_fiber_trampoline,@function
nvw_fiber_trampoline:
  movq %r12, %rdi
  callq *%r13
  ud2
.size nvw_fiber_trampoline, .-nvw_fiber_trampoline
)");

thread_local dim3 blockIdx, blockDim, gridDim;

namespace nvw::emu {
namespace {

// The emulated devices: an H100 SXM as the planners see it (device 0), and the same with 64 KB of
// shared memory per block (device 1), on which the planners split small networks the way they
// split the large ones on device 0 (CLUSTER_SKIP_BLOCKS's skip blocks at R32, tests/test_cuda_host.py).
constexpr int kDevices = 2;
constexpr int kMultiprocessors = 132;
constexpr int64_t kSharedPerBlockOptin[kDevices] = {227 * 1024, 64 * 1024};
thread_local int current_device = 0;  // cudaSetDevice's, per host thread as in CUDA
constexpr int64_t kSharedPerMultiprocessor = 228 * 1024;
constexpr int64_t kSharedReservedPerBlock = 1024;
constexpr int kThreadsPerMultiprocessor = 2048;
constexpr int kBlocksPerMultiprocessor = 32;
constexpr int kRegistersPerMultiprocessor = 65536;
// Registers per thread assumed for every kernel (ptxas reports 95-99 for the cluster kernels,
// csrc/cuda/NOTES.md): with 512 threads that allows one block per multiprocessor, as on the GPU.
constexpr int kRegistersPerThread = 96;
// Clusters are placed within a GPC; 132 SMs as 2 GPCs of 18 and 6 of 16 (a model of the H100 SXM).
constexpr int kGpcMultiprocessors[] = {18, 18, 16, 16, 16, 16, 16, 16};
constexpr int kPortableClusterBlocks = 8;
constexpr int kMaxClusterBlocks = 16;
constexpr size_t kStackBytes = 128 * 1024;
constexpr int64_t kSharedBias = int64_t(1) << 22;  // shared::cta addresses: offset from the buffer + this

struct Block;
struct Launch;

enum class State { Ready, Blocked, Done };
enum class Wait { None, Barrier, Warp, Cluster, Poll };

struct Copy {
  char* destination;
  const char* source;
};

struct Fiber {
  void* sp = nullptr;
  Block* block = nullptr;
  dim3 index;
  int linear = 0;
  State state = State::Ready;
  Wait wait = Wait::None;
  const char* what = "";
  int wait_id = 0, wait_count = 0;
  // The last value this thread saw at each of the (at most two) addresses it polls in turn: a
  // poll makes progress only when the value changed.
  const void* poll_address[2] = {nullptr, nullptr};
  uint64_t poll_value[2] = {0, 0};
  bool barrier_result = true;
  std::vector<Copy> open_group;
  std::deque<std::vector<Copy>> groups;
};

struct BarrierState {
  int expected = 0, arrived = 0;
  bool all = true;
};

enum CollectiveKind { kCollectiveShuffle, kCollectiveSyncwarp, kCollectiveLdmatrix, kCollectiveMma };
const char* const kCollectiveNames[] = {"shfl.sync", "__syncwarp", "ldmatrix", "mma.sync"};

struct WarpState {
  int arrived = 0;
  int kind = -1, variant = 0;
  alignas(16) unsigned char in[32][48];
  alignas(16) unsigned char out[32][16];
};

struct Mbarrier {
  uint32_t count = 0;
  int32_t pending = 0;
  int64_t tx = 0;
  uint64_t phase = 0;
  bool unobserved = false;  // a phase completed that no try_wait has seen yet
};

struct Delivery {
  uint64_t due, order;
  Block* target;
  int64_t offset;
  uint32_t bits;
  int64_t bar;
  int from_block, from_thread;
};
struct LaterDelivery {
  bool operator()(const Delivery& a, const Delivery& b) const {
    return a.due != b.due ? a.due > b.due : a.order > b.order;
  }
};

struct ClusterState {
  std::vector<Block*> blocks;
  BarrierState barrier;
};

struct Block {
  Launch* launch = nullptr;
  int linear = 0, unit = 0, cluster = 0, rank = 0;
  dim3 index;
  std::vector<Fiber> fibers;
  char* stacks = nullptr;
  void* scheduler_sp = nullptr;
  BarrierState barriers[16];
  std::vector<WarpState> warps;
  char* shared_base = nullptr;
  std::unordered_map<int64_t, Mbarrier> mbarriers;
  std::unordered_map<const char*, int> copies_in_flight;  // cp.async destination -> issuing thread
  int done = 0;
  bool started = false, finished = false;
  std::vector<int> order;
  std::thread os;
};

struct Launch {
  LaunchRequest request;
  std::function<void()> body;
  Options options;
  std::mt19937_64 rng;
  int threads_per_block = 0;
  std::vector<std::unique_ptr<Block>> blocks;
  std::vector<ClusterState> clusters;
  std::vector<std::vector<Block*>> units;
  size_t next_unit = 0;
  int live_units = 0;
  std::vector<Block*> live;

  std::mutex mutex;
  std::condition_variable changed;
  Block* baton = nullptr;
  bool stopping = false;
  std::string error;
  int finished_blocks = 0;

  uint64_t clock = 1000;
  uint64_t progress = 0;
  uint64_t stalled_ns = 0;
  std::set<Block*> stalled;
  std::vector<Delivery> pending;  // a heap, earliest first
  uint64_t deliveries = 0;
  uint64_t sequence = 0;
};

thread_local Block* current_block = nullptr;
thread_local Fiber* current_fiber = nullptr;

std::mutex options_mutex;
Options global_options;
Stats global_stats;

Fiber& me() { return *current_fiber; }
Block& my_block() { return *current_block; }
Launch& my_launch() { return *current_block->launch; }

std::string hex(const void* p) {
  char text[32];
  std::snprintf(text, sizeof(text), "%p", p);
  return text;
}

std::string where(const Fiber& f) {
  const Block& b = *f.block;
  std::ostringstream out;
  out << "block " << b.linear;
  if (b.launch->request.cluster > 1) out << " (cluster " << b.cluster << ", rank " << b.rank << ")";
  out << " thread " << f.linear;
  return out.str();
}

// What a thread is doing, for the deadlock report.
std::string describe(const Fiber& f) {
  std::ostringstream out;
  if (f.state == State::Done) return "exited";
  switch (f.wait) {
    case Wait::Barrier:
      out << f.what << " " << f.wait_id << ", " << f.wait_count << " threads ("
          << f.block->barriers[f.wait_id].arrived << " arrived)";
      break;
    case Wait::Warp:
      out << "warp collective " << f.what;
      break;
    case Wait::Cluster:
      out << "cluster.sync (" << f.block->launch->clusters[f.block->cluster].barrier.arrived << " of "
          << f.block->launch->clusters[f.block->cluster].barrier.expected << " arrived)";
      break;
    case Wait::Poll:
      out << "polling " << f.what << " (last saw " << f.poll_value[0] << ")";
      break;
    case Wait::None:
      out << "runnable";
      break;
  }
  return out.str();
}

std::string report_threads(Launch& launch) {
  std::ostringstream out;
  for (Block* b : launch.live) {
    out << "\n  block " << b->linear;
    if (launch.request.cluster > 1) out << " (cluster " << b->cluster << ", rank " << b->rank << ")";
    out << ":";
    size_t i = 0;
    while (i < b->fibers.size()) {
      const std::string text = describe(b->fibers[i]);
      size_t j = i + 1;
      while (j < b->fibers.size() && describe(b->fibers[j]) == text) ++j;
      out << "\n    threads " << i << "-" << j - 1 << ": " << text;
      i = j;
    }
  }
  for (Block* b : launch.live)
    for (const auto& [offset, bar] : b->mbarriers)
      out << "\n  block " << b->linear << " mbarrier at shared offset " << offset << ": phase " << bar.phase
          << ", pending arrivals " << bar.pending << ", transaction bytes " << bar.tx;
  return out.str();
}

// Stops the launch with `message`; called from a fiber, it never returns to the kernel.
void fail(const std::string& message) {
  Launch& launch = my_launch();
  if (launch.error.empty()) launch.error = message;
  launch.stopping = true;
  if (current_fiber) {
    Fiber& f = me();
    f.state = State::Blocked;
    nvw_fiber_switch(&f.sp, f.block->scheduler_sp);
    __builtin_unreachable();
  }
}

void fail_here(const std::string& message) {
  fail(current_fiber ? where(me()) + ": " + message : message);
}

// Back to the block's scheduler; `progress`: this thread did something other threads could
// observe (every scheduling point but an unchanged poll).
void yield(bool progress) {
  Fiber& f = me();
  if (progress) ++f.block->launch->progress;
  nvw_fiber_switch(&f.sp, f.block->scheduler_sp);
}

void block_and_yield(Wait wait, const char* what, int id, int count) {
  Fiber& f = me();
  f.state = State::Blocked;
  f.wait = wait;
  f.what = what;
  f.wait_id = id;
  f.wait_count = count;
  yield(true);
  f.wait = Wait::None;
}

void wake(Fiber& f) { f.state = State::Ready; }

// ---- Asynchronous copies and transactions ---------------------------------------------------

void deliver_copies(Block& b, std::vector<Copy>& group) {
  for (const Copy& c : group) {
    std::memcpy(c.destination, c.source, 16);
    b.copies_in_flight.erase(c.destination);
  }
  group.clear();
}

Mbarrier* find_mbarrier(Block& b, int64_t offset) {
  const auto found = b.mbarriers.find(offset);
  return found == b.mbarriers.end() ? nullptr : &found->second;
}

void complete_phase_if_done(Mbarrier& bar) {
  if (bar.pending == 0 && bar.tx == 0) {
    ++bar.phase;
    bar.pending = int32_t(bar.count);
    bar.unobserved = true;
  }
}

void deliver(Launch& launch, const Delivery& d) {
  Block& target = *d.target;
  if (target.finished) {
    std::ostringstream out;
    out << "st.async from block " << d.from_block << " thread " << d.from_thread << " landed in block "
        << target.linear << " after that block exited (shared offset " << d.offset
        << "): the exit path must wait for every transaction sent to it";
    launch.error = launch.error.empty() ? out.str() : launch.error;
    launch.stopping = true;
    return;
  }
  Mbarrier* bar = find_mbarrier(target, d.bar);
  if (bar->unobserved) {
    std::ostringstream out;
    out << "st.async from block " << d.from_block << " thread " << d.from_thread << " into block "
        << target.linear << " (shared offset " << d.offset << ") completes bytes on the mbarrier at offset " << d.bar
        << " whose phase " << bar->phase - 1
        << " completed and has not been waited for: data of the next phase overwrites data not yet consumed";
    launch.error = launch.error.empty() ? out.str() : launch.error;
    launch.stopping = true;
    return;
  }
  std::memcpy(target.shared_base + d.offset, &d.bits, 4);
  bar->tx -= 4;
  if (bar->tx < -((int64_t(1) << 20) - 1)) {
    launch.error = launch.error.empty() ? "mbarrier transaction count below -(2^20-1) (PTX's limit)" : launch.error;
    launch.stopping = true;
    return;
  }
  complete_phase_if_done(*bar);
  ++launch.progress;
  ++launch.deliveries;
}

void deliver_due(Launch& launch, bool all) {
  while (!launch.pending.empty() && !launch.stopping && (all || launch.pending.front().due <= launch.clock)) {
    std::pop_heap(launch.pending.begin(), launch.pending.end(), LaterDelivery{});
    const Delivery d = launch.pending.back();
    launch.pending.pop_back();
    deliver(launch, d);
  }
}

// ---- Fibers and the scheduler ------------------------------------------------------------------

void fiber_main(Fiber* f) {
  f->block->launch->body();
  Block& b = *f->block;
  // Copies still in flight land anyway (the kernel exits; the hardware finishes them).
  for (auto& group : f->groups) deliver_copies(b, group);
  deliver_copies(b, f->open_group);
  f->state = State::Done;
  ++b.done;
  ++b.launch->progress;
  nvw_fiber_switch(&f->sp, b.scheduler_sp);
  __builtin_trap();
}

void make_fibers(Block& b) {
  Launch& launch = *b.launch;
  const dim3 shape = launch.request.block;
  const int n = launch.threads_per_block;
  b.stacks = static_cast<char*>(
      mmap(nullptr, kStackBytes * n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
  if (b.stacks == MAP_FAILED) throw std::runtime_error("host build: cannot map fiber stacks");
  b.fibers.resize(n);
  b.warps.resize((n + 31) / 32);
  b.order.resize(n);
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.block = &b;
    f.linear = i;
    f.index = dim3(i % shape.x, (i / shape.x) % shape.y, i / (shape.x * shape.y));
    char* const base = b.stacks + kStackBytes * i;
    mprotect(base, 4096, PROT_NONE);  // a stack overflow faults instead of corrupting the next stack
    auto* sp = reinterpret_cast<uint64_t*>(base + kStackBytes - 128);
    const uint32_t control = 0x1f80;  // MXCSR
    const uint16_t x87 = 0x037f;
    std::memcpy(sp, &control, 4);
    std::memcpy(reinterpret_cast<char*>(sp) + 4, &x87, 2);
    sp[1] = 0;                                                // r15
    sp[2] = 0;                                                // r14
    sp[3] = reinterpret_cast<uint64_t>(&fiber_main);          // r13: the function
    sp[4] = reinterpret_cast<uint64_t>(&f);                   // r12: its argument
    sp[5] = 0;                                                // rbx
    sp[6] = 0;                                                // rbp
    sp[7] = reinterpret_cast<uint64_t>(&nvw_fiber_trampoline);  // return address
    f.sp = sp;
    b.order[i] = i;
  }
}

// Runs the block's threads until none can make progress, or for a while; true if any did.
bool run_slice(Block& b) {
  Launch& launch = *b.launch;
  const uint64_t start = launch.progress;
  const bool random = launch.options.seed != 0;
  const int n = int(b.fibers.size());
  int idle_rounds = 0;
  for (int round = 0;; ++round) {
    const uint64_t before = launch.progress;
    if (random) std::shuffle(b.order.begin(), b.order.end(), launch.rng);
    for (int i = 0; i < n; ++i) {
      Fiber& f = b.fibers[b.order[i]];
      if (f.state != State::Ready) continue;
      current_fiber = &f;
      nvw_fiber_switch(&b.scheduler_sp, f.sp);
      current_fiber = nullptr;
      ++launch.clock;
      if (launch.stopping) return true;
      if (!launch.pending.empty()) deliver_due(launch, false);
      // A random schedule also hands the baton over between two threads' steps, so that another
      // block can see a producer's writes half done.
      if (random && launch.live.size() > 1 && launch.rng() % 64 == 0) return launch.progress != start;
    }
    global_stats.switches += n;
    if (b.done == n) return true;
    if (launch.progress == before) {
      if (++idle_rounds > launch.options.spin_rounds) break;
      continue;
    }
    idle_rounds = 0;
    if (launch.live.size() > 1 && (round >= 256 || (random && launch.rng() % 8 == 0))) break;
  }
  return launch.progress != start;
}

bool anyone_polls(Launch& launch) {
  for (Block* b : launch.live)
    for (const Fiber& f : b->fibers)
      if (f.state == State::Ready && f.wait == Wait::Poll) return true;
  return false;
}

// Called with the baton after `b`'s slice: detects a stall of the whole launch and picks the
// block to run next.
Block* next_block(Launch& launch, Block* b, bool progressed) {
  if (progressed) {
    launch.stalled.clear();
    launch.stalled_ns = 0;
  } else if (b) {
    launch.stalled.insert(b);
  }
  if (!launch.live.empty() && launch.stalled.size() >= launch.live.size()) {
    launch.stalled.clear();
    if (!launch.pending.empty()) {
      deliver_due(launch, true);  // transactions in flight land eventually
    } else if (anyone_polls(launch)) {
      // Everyone waits on memory that nobody will change: time passes (so that bounded waits
      // time out as on the GPU), until it has passed for longer than any wait should last.
      constexpr uint64_t kJump = 1'000'000;
      launch.clock += kJump;
      launch.stalled_ns += kJump;
      ++global_stats.stall_jumps;
      if (launch.stalled_ns > launch.options.livelock_ns) {
        launch.error = "livelock: every thread has polled unchanged memory for " +
                       std::to_string(launch.stalled_ns / 1000000) + " ms of emulated time; where they wait:" +
                       report_threads(launch);
        launch.stopping = true;
      }
    } else {
      launch.error = "deadlock: no thread can make progress; where they wait:" + report_threads(launch);
      launch.stopping = true;
    }
  }
  if (launch.live.empty()) return nullptr;
  std::vector<Block*> candidates;
  Block* starved = nullptr;
  for (Block* x : launch.live) {
    if (x->linear == launch.options.starve_block && launch.live.size() > 1)
      starved = x;
    else
      candidates.push_back(x);
  }
  if (starved && !launch.stalled.count(starved) &&
      std::all_of(candidates.begin(), candidates.end(), [&](Block* x) { return launch.stalled.count(x) > 0; }))
    return starved;
  if (launch.options.seed != 0) return candidates[launch.rng() % candidates.size()];
  const auto at = std::find(candidates.begin(), candidates.end(), b);
  if (at == candidates.end()) return candidates.front();
  return *(at + 1 == candidates.end() ? candidates.begin() : at + 1);
}

void block_thread(Block* b);

// Starts the next unit's blocks (OS threads); waits until each has its shared memory in place.
void start_unit(Launch& launch, std::unique_lock<std::mutex>& lock) {
  if (launch.next_unit >= launch.units.size()) return;
  std::vector<Block*>& unit = launch.units[launch.next_unit++];
  ++launch.live_units;
  for (Block* b : unit) {
    launch.live.push_back(b);
    b->os = std::thread(block_thread, b);
  }
  launch.changed.wait(lock, [&] {
    return std::all_of(unit.begin(), unit.end(), [](Block* b) { return b->started; });
  });
}

void finish_block(Launch& launch, Block& b, std::unique_lock<std::mutex>& lock) {
  b.finished = true;
  ++launch.finished_blocks;
  launch.live.erase(std::find(launch.live.begin(), launch.live.end(), &b));
  launch.stalled.erase(&b);
  for (const Delivery& d : launch.pending) {
    if (d.target == &b) {
      std::ostringstream out;
      out << "block " << b.linear << " exited with an st.async from block " << d.from_block << " thread "
          << d.from_thread << " still in flight to it (shared offset " << d.offset
          << "): the exit path must wait for every transaction sent to it";
      if (launch.error.empty()) launch.error = out.str();
      launch.stopping = true;
      break;
    }
  }
  const auto& unit = launch.units[b.unit];
  if (std::all_of(unit.begin(), unit.end(), [](Block* x) { return x->finished; })) {
    --launch.live_units;
    while (!launch.stopping && launch.live_units < launch.options.max_live_units &&
           launch.next_unit < launch.units.size())
      start_unit(launch, lock);
  }
}

void block_thread(Block* b) {
  Launch& launch = *b->launch;
  current_block = b;
  blockIdx = b->index;
  blockDim = launch.request.block;
  gridDim = launch.request.grid;
  b->shared_base = reinterpret_cast<char*>(nvwavenet::gpu::shared_vectors);
  // Shared memory starts as garbage on the GPU: NaN in every float, -1 in every int here.
  std::memset(b->shared_base, 0xff, nvwavenet::gpu::kSharedCapacity);
  make_fibers(*b);
  std::unique_lock<std::mutex> lock(launch.mutex);
  b->started = true;
  launch.changed.notify_all();
  launch.changed.wait(lock, [&] { return launch.baton == b || launch.stopping; });
  while (!launch.stopping) {
    lock.unlock();
    const bool progressed = run_slice(*b);
    lock.lock();
    Block* next;
    if (b->done == int(b->fibers.size())) {
      finish_block(launch, *b, lock);
      next = next_block(launch, nullptr, true);
      launch.baton = next;
      launch.changed.notify_all();
      break;
    }
    if (launch.stopping) break;
    next = next_block(launch, b, progressed);
    if (next != b) {
      launch.baton = next;
      launch.changed.notify_all();
      launch.changed.wait(lock, [&] { return launch.baton == b || launch.stopping; });
    }
  }
  if (launch.stopping) launch.changed.notify_all();
  lock.unlock();
  munmap(b->stacks, kStackBytes * b->fibers.size());
  // The thread, and with it the block's shared memory, stays until the launch ends: another
  // block of a cluster may still store into it (a kernel bug that the exit checks may not see,
  // but not one that may corrupt the emulator).
  lock.lock();
  launch.changed.wait(lock, [&] { return launch.stopping; });
}

int blocks_per_multiprocessor(int threads, int64_t shared) {
  if (threads < 1 || threads > 1024) return 0;
  const int warps = (threads + 31) / 32;
  int blocks = std::min(kBlocksPerMultiprocessor, kThreadsPerMultiprocessor / (warps * 32));
  blocks = std::min<int64_t>(blocks, kRegistersPerMultiprocessor / (int64_t(warps) * 32 * kRegistersPerThread));
  blocks = std::min<int64_t>(blocks, kSharedPerMultiprocessor / (shared + kSharedReservedPerBlock));
  return std::max(blocks, 0);
}

struct KernelAttributes {
  int max_dynamic_shared = 48 * 1024;
  bool non_portable_clusters = false;
};
std::mutex kernels_mutex;
std::map<std::pair<int, const void*>, KernelAttributes> kernels;  // per device and kernel, as in CUDA

KernelAttributes attributes_of(const void* kernel) {
  const std::lock_guard<std::mutex> lock(kernels_mutex);
  return kernels[{current_device, kernel}];
}

int active_clusters(int cluster, int threads, int64_t shared) {
  const int per_sm = blocks_per_multiprocessor(threads, shared);
  int clusters = 0;
  for (const int sms : kGpcMultiprocessors) clusters += sms * per_sm / cluster;
  return clusters;
}

thread_local cudaError_t last_error = cudaSuccess;
cudaError_t record(cudaError_t error) {
  if (error != cudaSuccess) last_error = error;
  return error;
}

std::mutex launch_mutex;

}  // namespace

// ---- Device-side API (emu.h, cooperative_groups.h, ptx_host.h) ----------------------------------

const dim3& thread_index() { return current_fiber->index; }
int block_threads() { return current_block->launch->threads_per_block; }

bool barrier(int id, int count, bool wait, bool predicate, const char* what) {
  Block& b = my_block();
  if (id < 0 || id >= 16) fail_here(std::string(what) + ": barrier id " + std::to_string(id) + " outside 0-15");
  if (count <= 0 || count % 32 != 0 || count > block_threads())
    fail_here(std::string(what) + " " + std::to_string(id) + ": thread count " + std::to_string(count) +
              " is not a positive multiple of 32 within the block");
  BarrierState& bar = b.barriers[id];
  if (bar.arrived == 0) {
    bar.expected = count;
    bar.all = true;
  } else if (bar.expected != count) {
    fail_here(std::string(what) + " " + std::to_string(id) + " with " + std::to_string(count) +
              " threads while the barrier's other arrivals said " + std::to_string(bar.expected));
  }
  bar.all = bar.all && predicate;
  if (++bar.arrived == bar.expected) {
    const bool result = bar.all;
    bar.arrived = 0;
    for (Fiber& f : b.fibers) {
      if (f.state == State::Blocked && f.wait == Wait::Barrier && f.wait_id == id) {
        f.barrier_result = result;
        wake(f);
      }
    }
    yield(true);  // a scheduling point: the released threads may run before this one
    return result;
  }
  if (!wait) {
    yield(true);
    return true;
  }
  block_and_yield(Wait::Barrier, what, id, count);
  return me().barrier_result;
}

namespace {

// A warp-wide exchange: every lane deposits `in`; the last to arrive runs compute(warp) for all;
// each lane then takes its `out`.
template <class Compute>
void warp_collective(uint32_t mask, CollectiveKind kind, int variant, const void* in, size_t in_bytes, void* out,
                     size_t out_bytes, Compute&& compute) {
  Fiber& f = me();
  Block& b = *f.block;
  if (mask != 0xffffffffu)
    fail_here(std::string(kCollectiveNames[kind]) + " with a partial mask: the kernels use whole warps only");
  if (b.fibers.size() % 32 != 0) fail_here("a warp collective in a block that is not made of whole warps");
  const int lane = f.linear & 31;
  WarpState& warp = b.warps[f.linear >> 5];
  if (warp.arrived == 0) {
    warp.kind = kind;
    warp.variant = variant;
  } else if (warp.kind != kind || warp.variant != variant) {
    fail_here(std::string("lanes of one warp reached different collectives: ") + kCollectiveNames[kind] + " and " +
              kCollectiveNames[warp.kind]);
  }
  std::memcpy(warp.in[lane], in, in_bytes);
  if (++warp.arrived == 32) {
    compute(warp);
    warp.arrived = 0;
    const int first = f.linear & ~31;
    for (int i = first; i < first + 32; ++i)
      if (b.fibers[i].state == State::Blocked && b.fibers[i].wait == Wait::Warp) wake(b.fibers[i]);
    ++b.launch->progress;
  } else {
    block_and_yield(Wait::Warp, kCollectiveNames[kind], 0, 32);
  }
  std::memcpy(out, warp.out[lane], out_bytes);
}

}  // namespace

uint32_t shuffle(uint32_t mask, uint32_t value, int operand, int width, ShuffleMode mode) {
  struct In {
    uint32_t value;
    int32_t operand;
  } in{value, operand};
  uint32_t result;
  if (width != 32) fail_here("shuffles narrower than a warp are not emulated");
  warp_collective(mask, kCollectiveShuffle, mode, &in, sizeof(in), &result, 4, [&](WarpState& w) {
    for (int lane = 0; lane < 32; ++lane) {
      In mine;
      std::memcpy(&mine, w.in[lane], sizeof(mine));
      int source = lane;
      switch (mode) {
        case kShflIdx:
          source = mine.operand & 31;
          break;
        case kShflUp:
          source = lane >= mine.operand ? lane - mine.operand : lane;
          break;
        case kShflDown:
          source = lane + mine.operand < 32 ? lane + mine.operand : lane;
          break;
        case kShflXor:
          source = (lane ^ mine.operand) & 31;
          break;
      }
      std::memcpy(w.out[lane], w.in[source], 4);
    }
  });
  return result;
}

void syncwarp(uint32_t mask) {
  char nothing = 0;
  warp_collective(mask, kCollectiveSyncwarp, 0, &nothing, 1, &nothing, 1, [](WarpState&) {});
}

void atomic_point(const void*, const char*) { yield(true); }

namespace {

// A poll: a scheduling point first (the writer may run), then the read; progress only when the
// value at this address differs from what this thread saw there last time.
uint64_t observe(const void* key, uint64_t value) {
  Fiber& f = me();
  const int slot = f.poll_address[0] == key ? 0 : 1;
  const bool progress = f.poll_address[slot] != key || f.poll_value[slot] != value;
  if (progress) ++f.block->launch->progress;
  if (slot == 1) {  // most recent first
    f.poll_address[1] = f.poll_address[0];
    f.poll_value[1] = f.poll_value[0];
  }
  f.poll_address[0] = key;
  f.poll_value[0] = value;
  f.wait = Wait::None;
  return value;
}

void poll_point(const char* what) {
  Fiber& f = me();
  f.wait = Wait::Poll;
  f.what = what;
  yield(false);
}

}  // namespace

uint64_t poll64(const uint64_t* p, const char* what) {
  poll_point(what);
  return observe(p, *p);
}

int32_t poll32(const int32_t* p, const char* what) {
  poll_point(what);
  return int32_t(uint32_t(observe(p, uint32_t(*p))));
}

void store64(uint64_t* p, uint64_t v, const char*) {
  *p = v;
  yield(true);
}
void add64(uint64_t* p, uint64_t v, const char*) {
  *p += v;
  yield(true);
}
uint64_t globaltimer() { return my_launch().clock; }

// ---- Shared memory addresses, clusters, mbarriers, st.async ------------------------------------

uint32_t cvta_shared(const void* p) {
  const int64_t offset = static_cast<const char*>(p) - my_block().shared_base;
  if (offset < -kSharedBias || offset >= kSharedBias)
    fail_here("a shared-memory address was taken of " + hex(p) + ", which is not in this block's shared memory");
  return uint32_t(offset + kSharedBias);
}

namespace {

// A shared::cluster address: its block and byte offset from that block's dynamic shared memory.
std::pair<Block*, int64_t> decode(uint32_t address, const char* what) {
  Block& b = my_block();
  const uint32_t rank_field = address >> 24;
  Block* target = &b;
  if (rank_field != 0) {
    const ClusterState& cluster = b.launch->clusters[b.cluster];
    if (rank_field - 1 >= cluster.blocks.size())
      fail_here(std::string(what) + ": shared::cluster address names rank " + std::to_string(rank_field - 1) +
                " of a cluster of " + std::to_string(cluster.blocks.size()));
    target = cluster.blocks[rank_field - 1];
  }
  const int64_t offset = int64_t(address & 0xffffffu) - kSharedBias;
  if (offset < 0 || offset >= int64_t(b.launch->request.dynamic_shared))
    fail_here(std::string(what) + ": shared offset " + std::to_string(offset) +
              " is outside the launch's dynamic shared memory (" + std::to_string(b.launch->request.dynamic_shared) +
              " bytes)");
  return {target, offset};
}

}  // namespace

int cluster_rank() { return my_block().rank; }
int cluster_blocks() { return int(my_launch().request.cluster); }

void* map_shared_rank(const void* local, int rank) {
  Block& b = my_block();
  const ClusterState& cluster = b.launch->clusters[b.cluster];
  if (rank < 0 || rank >= int(cluster.blocks.size()))
    fail_here("map_shared_rank to rank " + std::to_string(rank) + " of a cluster of " +
              std::to_string(cluster.blocks.size()));
  const int64_t offset = static_cast<const char*>(local) - b.shared_base;
  if (offset < 0 || offset >= int64_t(b.launch->request.dynamic_shared))
    fail_here("map_shared_rank of " + hex(local) + ", outside this block's dynamic shared memory");
  return cluster.blocks[rank]->shared_base + offset;
}

void cluster_sync() {
  Block& b = my_block();
  Launch& launch = *b.launch;
  ClusterState& cluster = launch.clusters[b.cluster];
  BarrierState& bar = cluster.barrier;
  if (bar.arrived == 0) bar.expected = int(cluster.blocks.size()) * launch.threads_per_block;
  if (++bar.arrived == bar.expected) {
    bar.arrived = 0;
    for (Block* x : cluster.blocks)
      for (Fiber& f : x->fibers)
        if (f.state == State::Blocked && f.wait == Wait::Cluster) wake(f);
    yield(true);
    return;
  }
  block_and_yield(Wait::Cluster, "cluster.sync", 0, bar.expected);
}

uint32_t mapa(uint32_t shared_address, int rank) {
  const int64_t offset = int64_t(shared_address) - kSharedBias;
  if (offset < 0 || offset >= int64_t(my_launch().request.dynamic_shared))
    fail_here("mapa of shared offset " + std::to_string(offset) + ", outside the dynamic shared memory");
  if (rank < 0 || rank >= int(my_launch().request.cluster))
    fail_here("mapa to rank " + std::to_string(rank) + " of a cluster of " +
              std::to_string(my_launch().request.cluster));
  return (uint32_t(rank + 1) << 24) | shared_address;
}

// The mbarrier a thread operates on with `what`: one that was never initialised is the caller's bug.
Mbarrier& initialised_mbarrier(Block& block, int64_t offset, const char* what) {
  Mbarrier* bar = find_mbarrier(block, offset);
  if (!bar) fail_here(std::string(what) + " on shared offset " + std::to_string(offset) + ", never initialised");
  return *bar;
}

// PTX limits a transaction count to 2^20-1 bytes per operation.
void check_tx_bytes(uint32_t bytes, const char* what) {
  if (bytes > (1u << 20) - 1)
    fail_here(std::string(what) + " of " + std::to_string(bytes) + " bytes (PTX's limit 2^20-1)");
}

void mbarrier_init(uint32_t address, uint32_t count) {
  auto [block, offset] = decode(address, "mbarrier.init");
  if (block != &my_block()) fail_here("mbarrier.init.shared::cta of another block's shared memory");
  if (offset % 8 != 0) fail_here("mbarrier.init at shared offset " + std::to_string(offset) + ", not 8-byte aligned");
  if (count < 1 || count > (1u << 20) - 1) fail_here("mbarrier.init with count " + std::to_string(count));
  Mbarrier& bar = block->mbarriers[offset];
  bar = Mbarrier{};
  bar.count = count;
  bar.pending = int32_t(count);
  yield(true);
}

void fence_mbarrier_init() { yield(true); }

void mbarrier_arrive_expect_tx(uint32_t address, uint32_t bytes) {
  auto [block, offset] = decode(address, "mbarrier.arrive.expect_tx");
  Mbarrier& bar = initialised_mbarrier(*block, offset, "mbarrier.arrive.expect_tx");
  check_tx_bytes(bytes, "mbarrier.expect_tx");
  bar.tx += bytes;
  if (--bar.pending < 0) fail_here("mbarrier.arrive: more arrivals than the barrier's count in one phase");
  complete_phase_if_done(bar);
  yield(true);
}

void mbarrier_complete_tx(uint32_t address, uint32_t bytes) {
  auto [block, offset] = decode(address, "mbarrier.complete_tx");
  Mbarrier& bar = initialised_mbarrier(*block, offset, "mbarrier.complete_tx");
  check_tx_bytes(bytes, "mbarrier.complete_tx");
  bar.tx -= bytes;
  complete_phase_if_done(bar);
  yield(true);
}

bool mbarrier_try_wait_parity(uint32_t address, uint32_t parity) {
  auto [block, offset] = decode(address, "mbarrier.try_wait.parity");
  poll_point("mbarrier.try_wait.parity");
  Mbarrier& bar = initialised_mbarrier(*block, offset, "mbarrier.try_wait");
  const bool complete = (bar.phase & 1) != (parity & 1);
  if (complete) bar.unobserved = false;
  observe(block->shared_base + offset, bar.phase);
  return complete;
}

void st_async_b32(uint32_t remote_address, uint32_t bits, uint32_t remote_bar) {
  auto [target, offset] = decode(remote_address, "st.async");
  auto [bar_block, bar_offset] = decode(remote_bar, "st.async (mbarrier operand)");
  if (bar_block != target) fail_here("st.async whose mbarrier is in another block than its destination");
  if (offset % 4 != 0) fail_here("st.async.b32 to shared offset " + std::to_string(offset) + ", not 4-byte aligned");
  if (!find_mbarrier(*target, bar_offset))
    fail_here("st.async completing on shared offset " + std::to_string(bar_offset) + " of block " +
              std::to_string(target->linear) + ", where no mbarrier was initialised");
  Launch& launch = my_launch();
  // Until it lands the destination holds poison, as a consumer reading too early might see.
  const uint32_t poison = 0xffffffffu;
  std::memcpy(target->shared_base + offset, &poison, 4);
  const uint64_t delay = launch.options.async_delay_ns == 0
                             ? 0
                             : (launch.options.seed == 0 ? launch.options.async_delay_ns / 2
                                                         : launch.rng() % launch.options.async_delay_ns);
  launch.pending.push_back(
      {launch.clock + delay, launch.sequence++, target, offset, bits, bar_offset, my_block().linear, me().linear});
  std::push_heap(launch.pending.begin(), launch.pending.end(), LaterDelivery{});
  yield(true);
}

// ---- Tensor cores ------------------------------------------------------------------------------

namespace {

float element(MmaKind kind, uint32_t word, int half) {
  const uint16_t bits = uint16_t(half ? word >> 16 : word & 0xffffu);
  if (kind == kMmaF16) {
    _Float16 v;
    std::memcpy(&v, &bits, 2);
    return float(v);
  }
  return __uint_as_float(uint32_t(bits) << 16);
}

}  // namespace

void mma(MmaKind kind, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  struct In {
    uint32_t a[4], b[2];
    float c[4];
  } in;
  std::memcpy(in.a, a, sizeof(in.a));
  std::memcpy(in.b, b, sizeof(in.b));
  std::memcpy(in.c, d, sizeof(in.c));
  warp_collective(0xffffffffu, kCollectiveMma, kind, &in, sizeof(in), d, sizeof(float) * 4, [&](WarpState& w) {
    // The PTX ISA's fragment layouts: groupID g = lane / 4, t = lane % 4.
    const int K = kind == kMmaTF32 ? 8 : 16;
    double A[16][16] = {}, B[16][8] = {}, C[16][8] = {};
    for (int lane = 0; lane < 32; ++lane) {
      In x;
      std::memcpy(&x, w.in[lane], sizeof(x));
      const int g = lane >> 2, t = lane & 3;
      if (kind == kMmaTF32) {
        // Tensor cores read only the 19 bits of a TF32 operand: the low 13 bits are ignored.
        const auto tf32 = [](uint32_t v) { return double(__uint_as_float(v & 0xffffe000u)); };
        A[g][t] = tf32(x.a[0]);
        A[g + 8][t] = tf32(x.a[1]);
        A[g][t + 4] = tf32(x.a[2]);
        A[g + 8][t + 4] = tf32(x.a[3]);
        B[t][g] = tf32(x.b[0]);
        B[t + 4][g] = tf32(x.b[1]);
      } else {
        for (int h = 0; h < 2; ++h) {
          A[g][2 * t + h] = element(kind, x.a[0], h);
          A[g + 8][2 * t + h] = element(kind, x.a[1], h);
          A[g][2 * t + 8 + h] = element(kind, x.a[2], h);
          A[g + 8][2 * t + 8 + h] = element(kind, x.a[3], h);
          B[2 * t + h][g] = element(kind, x.b[0], h);
          B[2 * t + 8 + h][g] = element(kind, x.b[1], h);
        }
      }
      C[g][2 * t] = x.c[0];
      C[g][2 * t + 1] = x.c[1];
      C[g + 8][2 * t] = x.c[2];
      C[g + 8][2 * t + 1] = x.c[3];
    }
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, t = lane & 3;
      float out[4];
      for (int c = 0; c < 4; ++c) {
        const int row = g + (c >> 1) * 8, col = 2 * t + (c & 1);
        double sum = C[row][col];
        for (int k = 0; k < K; ++k) sum += A[row][k] * B[k][col];
        out[c] = float(sum);
      }
      std::memcpy(w.out[lane], out, sizeof(out));
    }
  });
}

void ldmatrix(int matrices, uint32_t* out, const void* row_address) {
  Block& b = my_block();
  const char* const p = static_cast<const char*>(row_address);
  warp_collective(0xffffffffu, kCollectiveLdmatrix, matrices, &p, sizeof(p), out, 4 * matrices, [&](WarpState& w) {
    const char* rows[32];
    for (int lane = 0; lane < 8 * matrices; ++lane) {
      std::memcpy(&rows[lane], w.in[lane], sizeof(rows[lane]));
      const int64_t offset = rows[lane] - b.shared_base;
      if (offset < 0 || offset + 16 > int64_t(b.launch->request.dynamic_shared) || offset % 16 != 0)
        fail_here("ldmatrix: lane " + std::to_string(lane) + "'s row address (shared offset " + std::to_string(offset) +
                  ") is not a 16-byte aligned row inside the dynamic shared memory");
    }
    for (int lane = 0; lane < 32; ++lane)
      for (int j = 0; j < matrices; ++j) std::memcpy(w.out[lane] + 4 * j, rows[8 * j + lane / 4] + 4 * (lane % 4), 4);
  });
}

void cp_async16(void* shared, const void* global) {
  Fiber& f = me();
  Block& b = *f.block;
  char* const destination = static_cast<char*>(shared);
  const int64_t offset = destination - b.shared_base;
  if (offset < 0 || offset + 16 > int64_t(b.launch->request.dynamic_shared) || offset % 16 != 0)
    fail_here("cp.async to shared offset " + std::to_string(offset) +
              ": not 16 bytes aligned inside the dynamic shared memory");
  if (reinterpret_cast<uintptr_t>(global) % 16 != 0)
    fail_here("cp.async from " + hex(global) + ", not 16-byte aligned");
  const auto [at, fresh] = b.copies_in_flight.emplace(destination, f.linear);
  if (!fresh)
    fail_here("cp.async to shared offset " + std::to_string(offset) + ", where thread " + std::to_string(at->second) +
              "'s earlier cp.async has not landed (no wait_group covers it yet)");
  std::memset(destination, 0xff, 16);  // poison until it lands
  f.open_group.push_back({destination, static_cast<const char*>(global)});
}

void cp_async_commit() {
  Fiber& f = me();
  f.groups.push_back(std::move(f.open_group));
  f.open_group.clear();
}

void cp_async_wait(int pending) {
  Fiber& f = me();
  while (int(f.groups.size()) > pending) {
    deliver_copies(*f.block, f.groups.front());
    f.groups.pop_front();
  }
  yield(true);
}

// ---- Controls ----------------------------------------------------------------------------------

void set_options(const Options& options) {
  const std::lock_guard<std::mutex> lock(options_mutex);
  global_options = options;
}

Stats stats() { return global_stats; }

cudaError_t launch(const LaunchRequest& request, std::function<void()> body) {
  const int threads = int(request.block.x * request.block.y * request.block.z);
  const int64_t grid = int64_t(request.grid.x) * request.grid.y * request.grid.z;
  if (threads < 1 || threads > 1024 || grid < 1) return record(cudaErrorInvalidConfiguration);
  const KernelAttributes attributes = attributes_of(request.kernel);
  if (int64_t(request.dynamic_shared) > attributes.max_dynamic_shared) return record(cudaErrorInvalidValue);
  if (blocks_per_multiprocessor(threads, int64_t(request.dynamic_shared)) < 1)
    return record(cudaErrorInvalidConfiguration);
  if (request.cluster > 1) {
    if (request.cluster > unsigned(attributes.non_portable_clusters ? kMaxClusterBlocks : kPortableClusterBlocks) ||
        grid % request.cluster != 0)
      return record(cudaErrorInvalidClusterSize);
    if (active_clusters(int(request.cluster), threads, int64_t(request.dynamic_shared)) < 1)
      return record(cudaErrorInvalidClusterSize);
  }
  if (request.cooperative &&
      grid > int64_t(blocks_per_multiprocessor(threads, int64_t(request.dynamic_shared))) * kMultiprocessors)
    return record(cudaErrorCooperativeLaunchTooLarge);

  const std::lock_guard<std::mutex> serial(launch_mutex);
  Launch launch;
  launch.request = request;
  launch.body = std::move(body);
  {
    const std::lock_guard<std::mutex> lock(options_mutex);
    launch.options = global_options;
  }
  launch.rng.seed(launch.options.seed);
  launch.threads_per_block = threads;
  const unsigned cluster = std::max(request.cluster, 1u);
  launch.clusters.resize(size_t(grid / cluster));
  for (int64_t i = 0; i < grid; ++i) {
    auto b = std::make_unique<Block>();
    b->launch = &launch;
    b->linear = int(i);
    b->index = dim3(unsigned(i % request.grid.x), unsigned((i / request.grid.x) % request.grid.y),
                    unsigned(i / (int64_t(request.grid.x) * request.grid.y)));
    b->cluster = int(i / cluster);
    b->rank = int(i % cluster);
    launch.clusters[b->cluster].blocks.push_back(b.get());
    launch.blocks.push_back(std::move(b));
  }
  // Units that must be resident together: the whole grid of a cooperative launch, each cluster,
  // else each block; their order is shuffled under a random schedule.
  if (request.cooperative) {
    launch.units.emplace_back();
    for (auto& b : launch.blocks) launch.units[0].push_back(b.get());
  } else {
    for (const ClusterState& c : launch.clusters) launch.units.push_back(c.blocks);
    if (launch.options.seed != 0) std::shuffle(launch.units.begin(), launch.units.end(), launch.rng);
  }
  for (size_t u = 0; u < launch.units.size(); ++u)
    for (Block* b : launch.units[u]) b->unit = int(u);
  ++global_stats.launches;
  global_stats.blocks += uint64_t(grid);

  {
    std::unique_lock<std::mutex> lock(launch.mutex);
    while (launch.live_units < std::max(launch.options.max_live_units, 1) && launch.next_unit < launch.units.size())
      start_unit(launch, lock);
    launch.baton = next_block(launch, nullptr, true);
    launch.changed.notify_all();
    launch.changed.wait(lock, [&] {
      return launch.stopping || launch.finished_blocks == int(launch.blocks.size());
    });
    launch.stopping = true;  // releases the threads of blocks a failure left behind
    launch.changed.notify_all();
  }
  for (auto& b : launch.blocks)
    if (b->os.joinable()) b->os.join();
  if (!launch.error.empty()) throw EmulationError("host build: " + launch.error);
  return cudaSuccess;
}

}  // namespace nvw::emu

// ---- Runtime API of the emulated device ---------------------------------------------------------

using namespace nvw::emu;

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorCooperativeLaunchTooLarge:
      return "cudaErrorCooperativeLaunchTooLarge";
    case cudaErrorInvalidClusterSize:
      return "cudaErrorInvalidClusterSize";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorCooperativeLaunchTooLarge:
      return "too many blocks in cooperative launch";
    case cudaErrorInvalidClusterSize:
      return "cluster size is invalid";
  }
  return "unknown error";
}

cudaError_t cudaGetLastError() {
  const cudaError_t error = last_error;
  last_error = cudaSuccess;
  return error;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = kDevices;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* properties, int device) {
  if (device < 0 || device >= kDevices) return record(cudaErrorInvalidDevice);
  *properties = cudaDeviceProp{};
  std::snprintf(properties->name, sizeof(properties->name),
                device == 0 ? "emulated sm_90 (nvwavenet host build)"
                            : "emulated sm_90 with %d KB of shared memory per block (nvwavenet host build)",
                int(kSharedPerBlockOptin[device] / 1024));
  properties->major = 9;
  properties->minor = 0;
  properties->multiProcessorCount = kMultiprocessors;
  properties->sharedMemPerBlockOptin = size_t(kSharedPerBlockOptin[device]);
  properties->cooperativeLaunch = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= kDevices) return record(cudaErrorInvalidDevice);
  current_device = device;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attribute, int value) {
  const std::lock_guard<std::mutex> lock(kernels_mutex);
  KernelAttributes& a = kernels[{current_device, kernel}];
  switch (attribute) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize:
      // Static shared memory is not measured by the host build (NOTES.md): the whole opt-in is allowed.
      if (value < 0 || value > kSharedPerBlockOptin[current_device]) return record(cudaErrorInvalidValue);
      a.max_dynamic_shared = value;
      return cudaSuccess;
    case cudaFuncAttributeNonPortableClusterSizeAllowed:
      a.non_portable_clusters = value != 0;
      return cudaSuccess;
  }
  return record(cudaErrorInvalidValue);
}

cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, const void* kernel) {
  *attributes = cudaFuncAttributes{};
  attributes->sharedSizeBytes = 0;
  attributes->maxThreadsPerBlock = 1024;
  attributes->maxDynamicSharedSizeBytes = attributes_of(kernel).max_dynamic_shared;
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void*, int threads, size_t shared) {
  *blocks = blocks_per_multiprocessor(threads, int64_t(shared));
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveClusters(int* clusters, const void* kernel, const cudaLaunchConfig_t* config) {
  const unsigned cluster = cluster_blocks_of(*config);
  const KernelAttributes a = attributes_of(kernel);
  if (cluster > unsigned(a.non_portable_clusters ? kMaxClusterBlocks : kPortableClusterBlocks))
    return record(cudaErrorInvalidClusterSize);
  if (int64_t(config->dynamicSmemBytes) > a.max_dynamic_shared) return record(cudaErrorInvalidValue);
  const int threads = int(config->blockDim.x * config->blockDim.y * config->blockDim.z);
  *clusters = active_clusters(int(cluster), threads, int64_t(config->dynamicSmemBytes));
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* destination, int value, size_t bytes, cudaStream_t) {
  std::memset(destination, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* destination, const void* source, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  std::memcpy(destination, source, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* destination, const void* source, size_t bytes, cudaMemcpyKind) {
  std::memcpy(destination, source, bytes);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
