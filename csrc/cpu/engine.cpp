// The CPU engine's driver: validation, the split of the work over threads, and the step loop.
//
// Threads form teams. With several streams, each team is one thread with a group of up to about 8
// streams, processed in lockstep so that every weight loaded from cache serves all of them; teams
// never talk to each other, so a thread with several groups runs them one after another. At
// batch 1 there is one team, and its members split the matrix rows.
//
// Per step, member m of an M-thread team owns:
// - gate chunks [c0, c1): the dilated-conv rows of h[8c0 .. 8c1) (tanh and sigmoid halves), so the
//   gate needs nobody else; their h goes to the team's shared buffer;
// - the residual x_{l+1} = x_l + W_res h_l + b in full: every member recomputes it from the
//   shared h, because one R x R product costs less than the extra barrier that splitting it needs;
// - rows of the head, each stage shared before the next needs it: skip channels (one product with
//   every layer's h, after the last layer), then classes of z = relu(conv_out(relu(skip))), then
//   classes of the logits, which every member then reads to draw the same sample.
// That is one barrier per layer plus three for the head. Each barrier is split (arrive ... wait),
// and in between a member does work that depends on no one: the past tap of the next layer's
// dilated conv, W_prev x_l[t - d_l], whose input is already in the queue.
//
// Work is only ever split by rows, never along a sum, so every number is formed by the same
// operations in the same order whatever the number of threads: the output does not depend on
// num_threads, on the batch a stream is generated in, or on how a call is chunked.
// That is what lets a batch-1 call switch between one thread and a split over all cores while it
// runs (see run_adaptive), which matters on a machine shared with other work: a split step waits
// for every member L + 3 times, and one member losing its core stalls them all.
//
// The conditioning is read through its strides a block of steps at a time into a member-private
// stage, with the dilate biases added, in the gate order of the member's rows; the products then
// accumulate into the stage in place.
#include "cpu/engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/half.h"
#include "cpu/kernels.h"
#include "cpu/packing.h"
#include "cpu/threads.h"
#include "params_check.h"

namespace nvwavenet::cpu {
namespace {

using Clock = std::chrono::steady_clock;

// Stage length in steps: 16 float32 steps are one cache line of time-contiguous conditioning, so
// each line is fetched once. Capped in floats for very large batches.
constexpr int64_t kStageSteps = 16;
constexpr int64_t kMaxStageFloats = int64_t(1) << 22;

struct Range {
  int64_t begin, end;
  int64_t size() const { return end - begin; }
};

// Part i of `parts` near-equal contiguous parts of [0, total).
Range split(int64_t total, int64_t parts, int64_t i) { return {total * i / parts, total * (i + 1) / parts}; }

// Zeroed float scratch on 64-byte boundaries (cache lines; no false sharing between threads).
class Buffer {
 public:
  explicit Buffer(int64_t floats)
      : data_(static_cast<float*>(::operator new(size_t(std::max<int64_t>(floats, 1)) * sizeof(float),
                                                 std::align_val_t(64)))) {
    std::fill(data_.get(), data_.get() + std::max<int64_t>(floats, 1), 0.0f);
  }
  float* get() const { return data_.get(); }

 private:
  struct Free {
    void operator()(float* p) const { ::operator delete(p, std::align_val_t(64)); }
  };
  std::unique_ptr<float, Free> data_;
};

// Everything every thread reads and nobody writes during a call.
struct Net {
  const Params& p;
  const Layout& lay;
  const char* w;  // packed weights
  const Kernels& k;
  Kernels::Gemm gemm;  // k.gemm for the matrices' precision
  std::vector<int64_t> dilations, queue_offsets;
  int64_t queue_rows;
  // Whether stream b + 1's queues follow stream b's at one stride (consecutive pool rows, one
  // position): then the past taps are read in place, else gathered first (Member::add_past).
  bool strided;
};

// The threads that run one group of streams, and what they share.
struct Team {
  Team(const Net& net, Range stream_range, int member_count)
      : streams(stream_range),
        members(member_count),
        barrier(member_count),
        h(streams.size() * net.lay.L * net.lay.Rp),
        skip(streams.size() * net.lay.Sp),
        z(streams.size() * net.lay.Ap),
        logits(streams.size() * net.lay.Ap) {}

  Range streams;
  int members;
  TeamBarrier barrier;
  Buffer h;       // [N][L * Rp]: every layer's gate output, in skip_w's column order
  Buffer skip;    // [N][Sp]: relu of the skip sum
  Buffer z;       // [N][Ap]
  Buffer logits;  // [N][Ap]
  std::atomic<bool> stop{false};  // set by member 0 to end a run after the current step
  Clock::time_point assembled;    // when every member had started the current run
};

// A member's per-step buffers that nobody else reads: its conditioning stage and every layer's
// input. Members that one thread runs one after another (the teams of one worker) share one: a
// call at batch 256 then allocates and zeroes a few MB instead of a few hundred, which cost more
// than the steps themselves in calls of a few steps (see Plan).
struct Scratch {
  // Floats a member needs, for `streams` streams and a share of `own_rows` stage rows.
  static int64_t stage_steps(const Layout& lay, int64_t streams, int64_t own_rows) {
    return std::clamp<int64_t>(kMaxStageFloats / (lay.L * streams * own_rows), 1, kStageSteps);
  }
  static int64_t stage_floats(const Layout& lay, int64_t streams, int64_t own_rows) {
    return stage_steps(lay, streams, own_rows) * lay.L * streams * own_rows;
  }
  static int64_t x_floats(const Layout& lay, int64_t streams) { return streams * lay.L * lay.Rp; }

  Scratch(int64_t stage_floats, int64_t x_floats) : stage(stage_floats), x(x_floats) {}
  Buffer stage;  // [stage_steps][L][N][own_rows]
  Buffer x;      // [N][L][Rp]: each layer's input this step
};

// One thread's part of a team's work.
class Member {
 public:
  // The gate chunks (8 channels each, both halves) that member `index` of `members` owns.
  static Range own_chunks(const Layout& lay, int members, int index) { return split(lay.Rp / kBlock, members, index); }

  Member(const Net& net, Team& team, int index, Scratch& scratch)
      : net_(net),
        lay_(net.lay),
        team_(team),
        index_(index),
        n_(team.streams.size()),
        chunks_(own_chunks(lay_, team.members, index)),
        skip_blocks_(split(lay_.Sp / kBlock, team.members, index)),
        class_blocks_(split(lay_.Ap / kBlock, team.members, index)),
        own_rows_(2 * kBlock * chunks_.size()),
        stage_steps_(Scratch::stage_steps(lay_, n_, own_rows_)),
        stage_(scratch.stage.get()),
        x_(scratch.x.get()),
        exps_(lay_.Ap),
        past_(net.strided ? 0 : n_ * lay_.R),
        history_(2 * n_) {}

  // Generates steps [begin, end) of the team's streams. With a budget (seconds per step, > 0),
  // member 0 ends the run after the first step that leaves it behind `budget * steps + grace`
  // since the team assembled. Returns the step reached. Runs on a pool thread: never throws.
  int64_t run(int64_t begin, int64_t end, double budget) noexcept;

 private:
  // A packed float32 vector, or a matrix in weight_dtype, at a byte offset.
  const float* vector(int64_t offset) const { return reinterpret_cast<const float*>(net_.w + offset); }
  const void* matrix(int64_t offset) const { return net_.w + offset; }
  // The stage slice of step t, layer l: [N][own_rows] pre-activations in gate order.
  float* slice(int64_t t, int64_t l) const {
    return stage_ + (((t - begin_) % stage_steps_) * lay_.L + l) * n_ * own_rows_;
  }
  float* queue_row(int64_t stream, int64_t t, int64_t l) const {
    return net_.p.queues + queue_slot(net_.p, team_.streams.begin + stream, net_.queue_rows, net_.queue_offsets[l],
                                      int(net_.dilations[l]), t) * lay_.R;
  }

  struct BlockSource {
    const char* first;  // the conditioning of the block's first channel at step t
    int64_t channels;   // 8, or fewer in the last block when R is not a multiple of 8
  };
  BlockSource block_source(int64_t j, int64_t t) const;
  template <class T, class Convert>
  void stage_block(int64_t t0, int64_t t1, Convert convert);
  void begin_step(int64_t t);
  void add_past(int64_t t, int64_t l);
  void embed();
  void residual(int64_t l);
  void layer(int64_t t, int64_t l);
  void store_queues(int64_t t);
  void head_rows(const void* W, int64_t K, Range blocks, const float* bias, const float* X, int64_t ldx, float* Y,
                 int64_t ldy, bool relu);
  void sample(int64_t t);

  const Net& net_;
  const Layout& lay_;
  Team& team_;
  const int index_;
  const int64_t n_;  // streams
  const Range chunks_, skip_blocks_, class_blocks_;
  const int64_t own_rows_;
  const int64_t stage_steps_;
  float* const stage_;  // [stage_steps][L][N][own_rows], in the Scratch of this member's thread
  float* const x_;      // [N][L][Rp], likewise
  Buffer exps_;         // [Ap]
  Buffer past_;         // [N][R]: the past taps of one layer, gathered when the queues are not strided
  std::vector<int32_t> history_;  // [N][2]: y_{t-2}, y_{t-1}
  int64_t begin_ = 0, end_ = 0;   // the current run's steps
};

// Where the conditioning of stage block j starts at step t. Block j is stream j / (L * blocks),
// layer j / blocks % L and, within that, the channels 8 (c0 + i / 2) .. + 8 of the tanh (even i)
// or sigmoid (odd i) half, i = j % blocks; channel c + 1 is cond_stride_channel elements after c.
Member::BlockSource Member::block_source(int64_t j, int64_t t) const {
  const Params& p = net_.p;
  const int64_t blocks = own_rows_ / kBlock;
  const int64_t n = j / (lay_.L * blocks), l = j / blocks % lay_.L, i = j % blocks;
  const int64_t channel = (chunks_.begin + i / 2) * kBlock;
  const int64_t element = p.cond_dtype == DType::Float32 ? 4 : 2;
  const char* first = static_cast<const char*>(p.cond) +
                      element * ((team_.streams.begin + n) * p.cond_stride_batch + l * p.cond_stride_layer +
                                 t * p.cond_stride_time + (i % 2 == 1 ? lay_.R + channel : channel) * p.cond_stride_channel);
  return {first, std::min<int64_t>(kBlock, lay_.R - channel)};
}

// Conditioning plus dilate bias of this member's rows, for steps [t0, t1).
//
// Each block of 8 rows (8 channels of one stream and layer) goes through a small tile, so that
// whichever the conditioning's strides, a cache line read serves the whole tile and the stage is
// written in whole vectors per step. With time contiguous (the usual layout) every channel's steps
// are a separate cache line far from the others, which no hardware prefetcher follows: the lines a
// few blocks ahead are prefetched by hand. (Measured on the 2-core Zen 5: 16 steps a block beat 4,
// 8 and 64; prefetching 8 blocks ahead beat none and beat spreading the next block's prefetches
// over the steps of this one.) A whole tile of that layout, 16 steps of 8 channels, goes through
// the vectorised Kernels::stage; the rest (a call's last steps, padding channels, other strides)
// through the scalar loop, which computes the same sums.
template <class T, class Convert>
void Member::stage_block(int64_t t0, int64_t t1, Convert convert) {
  constexpr int64_t kPrefetchBlocks = 8;
  const Params& p = net_.p;
  const int64_t stride = p.cond_stride_time, channel_stride = p.cond_stride_channel;
  const int64_t dst_step = lay_.L * n_ * own_rows_, steps = t1 - t0, blocks = own_rows_ / kBlock;
  const int64_t total = n_ * lay_.L * blocks;
  const bool whole_tiles = stride == 1 && steps == kStageSteps;
  const Kernels::Stage stage = net_.k.stage[int(p.cond_dtype)];
  for (int64_t j = 0; j < total; ++j) {
    const int64_t n = j / (lay_.L * blocks), l = j / blocks % lay_.L, i = j % blocks;
    const float* bias = vector(lay_.dilate_b) + l * 2 * lay_.Rp + 2 * kBlock * chunks_.begin + i * kBlock;
    float* dst = slice(t0, l) + n * own_rows_ + i * kBlock;
    if (j + kPrefetchBlocks < total) {
      const BlockSource ahead = block_source(j + kPrefetchBlocks, t0);
      for (int64_t c = 0; c < ahead.channels; ++c) __builtin_prefetch(ahead.first + c * channel_stride * sizeof(T));
    }
    const BlockSource source = block_source(j, t0);
    const T* src = reinterpret_cast<const T*>(source.first);
    if (whole_tiles && source.channels == kBlock) {
      stage(src, channel_stride, bias, dst, dst_step);
      continue;
    }
    float tile[kStageSteps][kBlock] = {};
    for (int64_t c = 0; c < source.channels; ++c) {
      for (int64_t s = 0; s < steps; ++s) tile[s][c] = bias[c] + convert(src[c * channel_stride + s * stride]);
    }
    for (int64_t s = 0; s < steps; ++s) std::copy(tile[s], tile[s] + kBlock, dst + s * dst_step);
  }
}

// Stages the conditioning when a block of steps starts, and adds the past tap of layer 0.
void Member::begin_step(int64_t t) {
  if ((t - begin_) % stage_steps_ == 0) {
    const int64_t t1 = std::min(t + stage_steps_, end_);
    switch (net_.p.cond_dtype) {
      case DType::Float32: stage_block<float>(t, t1, [](float v) { return v; }); break;
      case DType::Float16: stage_block<uint16_t>(t, t1, half_to_float); break;
      case DType::BFloat16: stage_block<uint16_t>(t, t1, bfloat16_to_float); break;
    }
  }
  add_past(t, 0);
}

void Member::add_past(int64_t t, int64_t l) {
  const float* past = queue_row(0, t, l);
  int64_t ld = net_.queue_rows * lay_.R;
  if (!net_.strided) {
    for (int64_t n = 0; n < n_; ++n) std::memcpy(past_.get() + n * lay_.R, queue_row(n, t, l), size_t(lay_.R) * sizeof(float));
    past = past_.get(), ld = lay_.R;
  }
  net_.gemm(matrix(lay_.dilate_prev + l * lay_.dilate_stride), lay_.R, 2 * chunks_.begin, 2 * chunks_.end, past, ld, n_,
            slice(t, l), own_rows_);
}

void Member::embed() {
  const int64_t Rp = lay_.Rp;
  for (int64_t n = 0; n < n_; ++n) {
    const float* prev = vector(lay_.embed_prev) + history_[2 * n] * Rp;
    const float* curr = vector(lay_.embed_curr) + history_[2 * n + 1] * Rp;
    float* x = x_ + n * lay_.L * Rp;
    for (int64_t i = 0; i < Rp; ++i) x[i] = prev[i] + curr[i];
    if (net_.p.use_embed_tanh) net_.k.tanh(x, Rp);
  }
}

void Member::residual(int64_t l) {
  const int64_t Rp = lay_.Rp, ld = lay_.L * Rp;
  const float* bias = vector(lay_.res_b) + (l - 1) * Rp;
  for (int64_t n = 0; n < n_; ++n) {
    const float* before = x_ + n * ld + (l - 1) * Rp;
    float* after = x_ + n * ld + l * Rp;
    for (int64_t i = 0; i < Rp; ++i) after[i] = before[i] + bias[i];
  }
  net_.gemm(matrix(lay_.res_w + (l - 1) * lay_.res_stride), lay_.R, 0, Rp / kBlock, team_.h.get() + (l - 1) * Rp, ld,
            n_, x_ + l * Rp, ld);
}

void Member::layer(int64_t t, int64_t l) {
  const int64_t Rp = lay_.Rp, ld = lay_.L * Rp;
  float* a = slice(t, l);
  net_.gemm(matrix(lay_.dilate_curr + l * lay_.dilate_stride), lay_.R, 2 * chunks_.begin, 2 * chunks_.end,
            x_ + l * Rp, ld, n_, a, own_rows_);
  for (int64_t n = 0; n < n_; ++n) {
    net_.k.gate(a + n * own_rows_, chunks_.size(), team_.h.get() + n * ld + l * Rp + kBlock * chunks_.begin);
  }
}

// This member's columns of every layer's input, into the queue slots the step has finished reading.
void Member::store_queues(int64_t t) {
  const int64_t first = kBlock * chunks_.begin, last = std::min(kBlock * chunks_.end, lay_.R);
  if (last <= first) return;
  for (int64_t n = 0; n < n_; ++n) {
    if (t >= stream_steps(net_.p, team_.streams.begin + n)) continue;  // that stream's call has ended
    for (int64_t l = 0; l < lay_.L; ++l) {
      std::memcpy(queue_row(n, t, l) + first, x_ + (n * lay_.L + l) * lay_.Rp + first,
                  size_t(last - first) * sizeof(float));
    }
  }
}

// Rows [8 b0, 8 b1) of Y = relu?(W X + bias) for the team's streams, Y and X [N][ld].
void Member::head_rows(const void* W, int64_t K, Range blocks, const float* bias, const float* X, int64_t ldx,
                       float* Y, int64_t ldy, bool relu) {
  const int64_t first = kBlock * blocks.begin, last = kBlock * blocks.end;
  for (int64_t n = 0; n < n_; ++n) std::copy(bias + first, bias + last, Y + n * ldy + first);
  net_.gemm(W, K, blocks.begin, blocks.end, X, ldx, n_, Y + first, ldy);
  if (!relu) return;
  for (int64_t n = 0; n < n_; ++n) {
    for (int64_t i = first; i < last; ++i) Y[n * ldy + i] = std::max(Y[n * ldy + i], 0.0f);
  }
}

// Draws from the team's logits (every member the same class, from the same numbers) and feeds
// back; member 0 writes the outputs.
void Member::sample(int64_t t) {
  const Params& p = net_.p;
  const int64_t A = lay_.A, Ap = lay_.Ap;
  for (int64_t n = 0; n < n_; ++n) {
    const int64_t b = team_.streams.begin + n;
    // A stream whose call has ended is computed on with its last state (in lockstep with the
    // others), and nothing of it is kept.
    if (t >= stream_steps(p, b)) continue;
    const float* logits = team_.logits.get() + n * Ap;
    // The smallest k with u < p_0 + ... + p_k, as u * sum(exp) < exp_0 + ... + exp_k.
    const float top = *std::max_element(logits, logits + A);
    const float total = net_.k.exp_sum(logits, A, top, exps_.get());
    const float threshold = p.selectors[b * p.selectors_stride_batch + t * p.selectors_stride_time] * total;
    int32_t drawn = int32_t(A - 1);
    float cdf = 0.0f;
    for (int64_t i = 0; i < A; ++i) {
      cdf += exps_.get()[i];
      if (threshold < cdf) {
        drawn = int32_t(i);
        break;
      }
    }
    if (index_ == 0) {
      p.samples[b * p.samples_stride_batch + t * p.samples_stride_time] = drawn;
      if (p.logits != nullptr) {
        float* out = p.logits + b * p.logits_stride_batch + t * p.logits_stride_time;
        for (int64_t i = 0; i < A; ++i) out[i * p.logits_stride_class] = logits[i];
      }
    }
    history_[2 * n] = history_[2 * n + 1];
    history_[2 * n + 1] =
        p.teacher == nullptr ? drawn : p.teacher[b * p.teacher_stride_batch + t * p.teacher_stride_time];
  }
}

int64_t Member::run(int64_t begin, int64_t end, double budget) noexcept {
  // Slack in the budget: for a first step on cold caches, and for one member losing its core
  // for a scheduler tick, which a split that is otherwise faster makes up within its segment.
  constexpr double kGraceSeconds = 2e-3;
  const Params& p = net_.p;
  TeamBarrier& barrier = team_.barrier;
  const int64_t L = lay_.L;
  begin_ = begin, end_ = end;
  // Pool threads may take a while to wake up on a busy machine: a switching cost, timed apart.
  barrier.wait(index_, barrier.arrive(index_));
  if (index_ == 0) team_.assembled = Clock::now();
  for (int64_t n = 0; n < n_; ++n) {
    const int32_t* history = p.history + 2 * stream_row(p, team_.streams.begin + n);
    history_[2 * n] = history[0];
    history_[2 * n + 1] = history[1];
  }
  begin_step(begin);
  int64_t t = begin;
  for (bool last = false; !last; ++t) {
    embed();
    uint64_t phase = 0;
    for (int64_t l = 0; l < L; ++l) {
      if (l > 0) {
        barrier.wait(index_, phase);  // h_{l-1} complete
        residual(l);
      }
      layer(t, l);
      phase = barrier.arrive(index_);
      if (l + 1 < L) add_past(t, l + 1);
    }
    barrier.wait(index_, phase);  // every h complete, every queue slot of this step read
    store_queues(t);
    head_rows(matrix(lay_.skip_w), lay_.L * lay_.Rp, skip_blocks_, vector(lay_.skip_b), team_.h.get(),
              lay_.L * lay_.Rp, team_.skip.get(), lay_.Sp, true);
    barrier.wait(index_, barrier.arrive(index_));  // relu(skip) complete
    head_rows(matrix(lay_.out_w), lay_.Sp, class_blocks_, vector(lay_.out_b), team_.skip.get(), lay_.Sp,
              team_.z.get(), lay_.Ap, true);
    barrier.wait(index_, barrier.arrive(index_));  // z complete
    head_rows(matrix(lay_.end_w), lay_.Ap, class_blocks_, vector(lay_.end_b), team_.z.get(), lay_.Ap,
              team_.logits.get(), lay_.Ap, false);
    if (index_ == 0 && budget > 0) {
      const double elapsed = std::chrono::duration<double>(Clock::now() - team_.assembled).count();
      if (elapsed > budget * double(t + 1 - begin) + kGraceSeconds) team_.stop.store(true, std::memory_order_relaxed);
    }
    phase = barrier.arrive(index_);
    if (t + 1 < end) begin_step(t + 1);
    barrier.wait(index_, phase);  // logits complete, and member 0's stop decision visible
    sample(t);
    last = t + 1 == end || team_.stop.load(std::memory_order_relaxed);
  }
  if (index_ == 0) {
    for (int64_t n = 0; n < n_; ++n) {
      int32_t* history = p.history + 2 * stream_row(p, team_.streams.begin + n);
      history[0] = history_[2 * n];
      history[1] = history_[2 * n + 1];
    }
  }
  return t;
}

// Streams per team, at most about, when there are several. A team's per-step buffers (its stage
// slice, every layer's input and gate output) grow with its streams, and past about 8 streams they
// no longer stay in L2 beside the weights streaming through. Teams beyond the thread count run one
// after another on the same threads: each still streams the weights once a step for its streams.
// (Measured on the 2-core Zen 5, batch 64, float32, two teams of 32 streams against eight of 8:
// R64 L=20 102k -> 122k samples/s, R64 L=16 114k -> 144k, R32 211k -> 237k, R128 L=24 29k -> 31k;
// teams of 4 or 16 were no faster than 8.)
constexpr int64_t kTeamStreams = 8;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One way to run the call on threads: teams of members, made (and their memory allocated)
// before anything runs, so that nothing on a pool thread can fail.
class Plan {
 public:
  // Batch 1: one team of up to `threads` members (no more than there are gate chunks), all
  // running at once. Otherwise min(batch, threads) workers and teams of one member, about
  // kTeamStreams streams each, as many teams for every worker: worker i runs teams i,
  // i + workers, ... one after another.
  Plan(const Net& net, int threads) {
    const Params& p = net.p;
    int teams, members;
    if (p.batch == 1) {
      teams = 1;
      members = workers_ = int(std::min<int64_t>(threads, net.lay.Rp / kBlock));
    } else {
      workers_ = int(std::min<int64_t>(p.batch, threads));
      teams = workers_ * int(ceil_div(ceil_div(p.batch, workers_), kTeamStreams));
      members = 1;
    }
    // Member k runs on worker k % workers (see run): each worker's scratch is sized for the
    // largest of its members.
    std::vector<int64_t> stage_floats(size_t(workers_), 0), x_floats(size_t(workers_), 0);
    for (int i = 0, k = 0; i < teams; ++i) {
      const int64_t streams = split(p.batch, teams, i).size();
      for (int m = 0; m < members; ++m, ++k) {
        const int64_t own_rows = 2 * kBlock * Member::own_chunks(net.lay, members, m).size();
        stage_floats[size_t(k % workers_)] =
            std::max(stage_floats[size_t(k % workers_)], Scratch::stage_floats(net.lay, streams, own_rows));
        x_floats[size_t(k % workers_)] = std::max(x_floats[size_t(k % workers_)], Scratch::x_floats(net.lay, streams));
      }
    }
    for (int w = 0; w < workers_; ++w) scratch_.push_back(std::make_unique<Scratch>(stage_floats[size_t(w)], x_floats[size_t(w)]));
    for (int i = 0, k = 0; i < teams; ++i) {
      teams_.push_back(std::make_unique<Team>(net, split(p.batch, teams, i), members));
      for (int m = 0; m < members; ++m, ++k) {
        members_.push_back(std::make_unique<Member>(net, *teams_.back(), m, *scratch_[size_t(k % workers_)]));
      }
    }
  }

  int threads() const { return workers_; }

  struct Progress {
    int64_t reached;                // the step reached
    Clock::time_point assembled;    // when the first team had all its threads running
  };

  // Runs steps [begin, end); a budget (single-team plans only) may end it early, see Member::run.
  Progress run(int64_t begin, int64_t end, double budget) {
    for (auto& team : teams_) team->stop.store(false, std::memory_order_relaxed);
    std::vector<int64_t> reached(members_.size());
    ThreadPool::instance().run(workers_, [&](int i) {
      for (size_t m = size_t(i); m < members_.size(); m += size_t(workers_)) reached[m] = members_[m]->run(begin, end, budget);
    });
    return {reached[0], teams_[0]->assembled};
  }

 private:
  std::vector<std::unique_ptr<Scratch>> scratch_;  // one per worker
  std::vector<std::unique_ptr<Team>> teams_;
  std::vector<std::unique_ptr<Member>> members_;
  int workers_;  // threads
};

// What run_adaptive has learnt about one network shape on this machine. It outlives the call:
// a streaming caller generates a few hundred steps per call, and re-measuring from scratch each
// time would spend most of every call on the measuring (the first segment runs one thread).
// Probing the losing mode waits this many segments, doubling after each probe it loses.
constexpr int kMinProbeInterval = 4, kMaxProbeInterval = 64;

struct AdaptiveRecord {
  double seconds_per_step[2] = {0.0, 0.0};  // solo, split; 0: not yet measured
  int probe_interval = kMinProbeInterval;    // in segments
  int since_probe = 0;
  bool recheck = false;  // the winner just fell behind: probe it again at once
};

// The record of each shape, copied in at the start of a call and back at its end. Concurrent calls
// of one shape may overwrite each other's record: it steers speed, never results.
using RecordKey = std::tuple<int64_t, int64_t, int64_t, int64_t, int, int>;
std::mutex record_mutex;
std::map<RecordKey, AdaptiveRecord>& records() {
  static std::map<RecordKey, AdaptiveRecord> all;
  return all;
}
RecordKey record_key(const Net& net, int threads) {
  return {net.lay.R, net.lay.S, net.lay.A, net.lay.L, int(net.lay.weight_dtype), threads};
}

// Batch 1 with the default thread count: alternates, as the call runs, between one thread and a
// row split over all cores, by measured speed. The split usually wins on an idle machine and
// collapses on a busy one (a member without a core stalls every barrier), and which is the case
// changes by the second. Results are identical either way (see the top of this file).
void run_adaptive(const Net& net, Plan& solo, Plan& split) {
  // Measuring a mode takes a short segment (the first one, single-threaded, and every probe of
  // the mode that is losing); running the winner, longer ones.
  constexpr int64_t kProbeSteps = 64, kSegmentSteps = 256;
  enum { kSolo = 0, kSplit = 1 };
  Plan* plans[2] = {&solo, &split};
  const RecordKey key = record_key(net, split.threads());
  AdaptiveRecord record;
  {
    std::lock_guard<std::mutex> lock(record_mutex);
    record = records()[key];
  }
  double* seconds_per_step = record.seconds_per_step;
  for (int64_t t = 0; t < net.p.num_samples;) {
    int mode;
    bool probe = false;
    if (seconds_per_step[kSolo] == 0.0) {
      mode = kSolo;
    } else if (seconds_per_step[kSplit] == 0.0) {
      mode = kSplit;
    } else {
      const int best = seconds_per_step[kSplit] < seconds_per_step[kSolo] ? kSplit : kSolo;
      probe = record.recheck || ++record.since_probe >= record.probe_interval;
      mode = probe ? 1 - best : best;
      if (probe) record.since_probe = 0;
    }
    const bool measuring = probe || seconds_per_step[kSolo] == 0.0;
    const int64_t steps = std::min(net.p.num_samples - t, measuring ? kProbeSteps : kSegmentSteps);
    // A split segment stops as soon as it falls behind what one thread would have done.
    const double budget = mode == kSplit ? seconds_per_step[kSolo] : 0.0;
    const Plan::Progress done = plans[mode]->run(t, t + steps, budget);
    // The latest measurement only: the load on the machine changes faster than an average follows.
    seconds_per_step[mode] = std::chrono::duration<double>(Clock::now() - done.assembled).count() / double(done.reached - t);
    const bool behind = seconds_per_step[mode] >= seconds_per_step[1 - mode];
    if (probe && record.recheck) {
      // Only a winner that stays behind has lost its place; one bad segment (a member that lost
      // its core for a scheduler tick, or PyTorch's OpenMP threads still spinning after the
      // caller's last operation) keeps the backed-off probing of the loser as it was.
      record.recheck = false;
      if (behind) record.probe_interval = kMinProbeInterval;
    } else if (probe) {  // a probe that lost makes the next one wait longer
      record.probe_interval = behind ? std::min(2 * record.probe_interval, kMaxProbeInterval) : kMinProbeInterval;
    } else {
      record.recheck = behind;
    }
    t = done.reached;
  }
  std::lock_guard<std::mutex> lock(record_mutex);
  records()[key] = record;
}

const Kernels& select_kernels(const std::string& isa) {
  const Kernels* avx512 = avx512_kernels();
  const Kernels* avx2 = avx2_kernels();
  if (isa == "auto") return avx512 != nullptr ? *avx512 : avx2 != nullptr ? *avx2 : generic_kernels();
  if (isa == "generic") return generic_kernels();
  if (isa == "avx2+fma" || isa == "avx512") {
    const Kernels* chosen = isa == "avx512" ? avx512 : avx2;
    if (chosen == nullptr) throw std::runtime_error("isa: this CPU (or this build) cannot run '" + isa + "'");
    return *chosen;
  }
  throw std::invalid_argument("isa: expected 'auto', 'avx512', 'avx2+fma' or 'generic', got '" + isa + "'");
}

// Checks what the layout does not: everything a run reads through a pointer or an index.
void validate(const Params& p) {
  check_call(p, "host");
  require(p.max_dilation <= (1 << 20), "max_dilation: expected at most 2^20, got " + std::to_string(p.max_dilation));
  require(p.num_threads >= 0, "num_threads: expected >= 0 (0: automatic), got " + std::to_string(p.num_threads));
  require(p.cond_dtype == DType::Float32 || p.cond_dtype == DType::Float16 || p.cond_dtype == DType::BFloat16,
          "cond_dtype: not a DType");
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t i = 2 * stream_row(p, b); i < 2 * stream_row(p, b) + 2; ++i) {
      require(p.history[i] >= 0 && p.history[i] < p.A,
              "history: expected classes in [0, " + std::to_string(p.A) + "), got " + std::to_string(p.history[i]));
    }
  }
  if (p.num_samples == 0) return;
  if (p.teacher != nullptr) {
    for (int64_t b = 0; b < p.batch; ++b) {
      for (int64_t t = 0; t < p.num_samples; ++t) {
        const int32_t y = p.teacher[b * p.teacher_stride_batch + t * p.teacher_stride_time];
        require(y >= 0 && y < p.A,
                "teacher: expected classes in [0, " + std::to_string(p.A) + "), got " + std::to_string(y));
      }
    }
  }
}

}  // namespace

std::string best_isa() { return select_kernels("auto").name; }

int default_threads() { return available_cpus(); }

void generate_cpu(const Params& p, const std::string& isa) {
  const Kernels& kernels = select_kernels(isa);
  const Layout layout(p);
  const char* packed = checked_packed_weights(p, layout);
  validate(p);
  if (p.num_samples == 0) return;

  Net net{p, layout, packed, kernels, kernels.gemm[int(p.weight_dtype)], {}, {}, 0, true};
  for (int64_t b = 1; b < p.batch && net.strided; ++b) {
    net.strided = stream_row(p, b) == stream_row(p, 0) + b && stream_position(p, b) == stream_position(p, 0);
  }
  for (int l = 0; l < p.L; ++l) {
    net.dilations.push_back(layer_dilation(l, p.max_dilation));
    net.queue_offsets.push_back(layer_queue_offset(l, p.max_dilation));
  }
  net.queue_rows = queue_rows(p.L, p.max_dilation);

  Plan plan(net, p.num_threads > 0 ? p.num_threads : default_threads());
  if (p.num_threads == 0 && p.batch == 1 && plan.threads() > 1) {
    Plan solo(net, 1);
    run_adaptive(net, solo, plan);
  } else {
    plan.run(0, p.num_samples, 0.0);
  }
}

void generate_pool_cpu(Params& p, int64_t* pool_positions, int64_t* call_positions, const std::string& isa) {
  require(p.slots != nullptr, "slots: expected the pool rows of the call's streams, got null");
  require_pointer(pool_positions, "pool_positions", "host");
  require_pointer(call_positions, "call_positions", "host");
  p.positions = nullptr;
  check_call(p, "host");  // the slots index pool_positions
  for (int64_t b = 0; b < p.batch; ++b) call_positions[b] = pool_positions[p.slots[b]];
  p.positions = call_positions;
  generate_cpu(p, isa);
  for (int64_t b = 0; b < p.batch; ++b) pool_positions[p.slots[b]] += stream_steps(p, b);
}

}  // namespace nvwavenet::cpu
