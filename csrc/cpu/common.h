// What the CPU kernels share: the workspace, the split of work between threads, and the
// choice of how many threads a call uses. Internal linkage (see cell.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>

#include "api.h"
#include "gemm.h"

namespace fastrnn {
namespace cpu {
namespace {

// An aligned scratch buffer of T, freed on scope exit. (operator new/delete are library calls, so this
// pulls no inline library code into an instruction-set translation unit.)
template <class T>
class Scratch {
 public:
  explicit Scratch(int64_t count)
      : data_(static_cast<T*>(::operator new(static_cast<std::size_t>(count > 0 ? count : 1) * sizeof(T),
                                             std::align_val_t(64)))) {}
  ~Scratch() { ::operator delete(data_, std::align_val_t(64)); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return data_; }

 private:
  T* data_;
};

// A weight packed for the step GEMMs, in panels of P (gemm.h). from_rows: B = W^T, the forward's
// h W^T, whose columns are W's `gates * units` rows of `depth`; from_columns: B = W, the backward's carry
// dG W, whose `columns` columns are W's own (depth: W's rows). With a cache (api.h, CachedPanels) the
// panels are read from there when an earlier call packed them in this layout from this weight version,
// and left there otherwise; without one they are this call's alone.
template <class P, int N>
class PackedPanels {
 public:
  template <class S>
  static PackedPanels from_rows(const S* w, int64_t depth, int64_t gates, int64_t units, CachedPanels cache = {}) {
    return PackedPanels(w, 1, depth, depth, gates, units, cache);
  }
  template <class S>
  static PackedPanels from_columns(const S* w, int64_t depth, int64_t columns, CachedPanels cache = {}) {
    return PackedPanels(w, columns, 1, depth, 1, columns, cache);
  }
  const P* get() const { return static_cast<const P*>(lease_.data); }
  ~PackedPanels() { release_panels(lease_); }
  PackedPanels(PackedPanels&& other) noexcept : lease_(other.lease_) { other.lease_ = {}; }
  PackedPanels(const PackedPanels&) = delete;
  PackedPanels& operator=(const PackedPanels&) = delete;

 private:
  template <class S>
  PackedPanels(const S* w, int64_t k_stride, int64_t c_stride, int64_t depth, int64_t gates, int64_t units,
               CachedPanels cache) {
    const PanelLayout layout{int64_t(sizeof(P)), N, k_stride, c_stride, depth, gates, units};
    if (!w || units == 0) cache.cache = nullptr;  // nothing worth keeping
    lease_ = find_panels(cache.cache, cache.stamp, layout);
    if (lease_.data) return;
    lease_ = new_panels(PanelGeometry<N, P>{depth, gates}.size(ceil_div(units, N)) * int64_t(sizeof(P)));
    pack_panels<P, N>(static_cast<P*>(lease_.data), w, k_stride, c_stride, depth, gates, units);
    keep_panels(cache.cache, cache.stamp, layout, lease_);
  }
  PanelLease lease_;
};

// Whether a forward runs its projection in its steps: it was given x, and its GEMMs (of element type P) read the
// storage type S as it is, x's rows among their operands.
template <class P, class S>
bool projects_here(const StepProjection<S>& in_steps) {
  return std::is_same_v<S, P> && in_steps.x;
}

// W_ih's panels for a forward whose projection runs in its steps (StepProjection; `gates` interleaved per unit
// block, as W_hh's); none where it does not (projects_here).
template <class P, int N, class S>
PackedPanels<P, N> step_projection_panels(const StepProjection<S>& in_steps, int64_t gates, int64_t units) {
  const bool here = projects_here<P>(in_steps);
  return PackedPanels<P, N>::from_rows(here ? in_steps.w_ih : nullptr, in_steps.input, gates, here ? units : 0,
                                       in_steps.w_ih_panels);
}

// Step t's rows of the projection's x as the GEMMs read them, or null where the projection does not run here.
template <class P, class S>
FASTRNN_HD const P* step_projection_rows(const StepProjection<S>& in_steps, const P* panels, int64_t t,
                                         int64_t batch) {
  return panels ? reinterpret_cast<const P*>(in_steps.x) + t * batch * in_steps.input : nullptr;
}

// A forward's double buffer of h, both halves starting as h0: rows that start late (reverse, lengths)
// find h0 in either.
template <class P>
class HiddenBuffers {
 public:
  template <class S>
  HiddenBuffers(const S* h0, int64_t count) : data_(2 * count), count_(count) {
    convert(data_.get(), h0, count);
    convert(data_.get() + count, h0, count);
  }
  P* operator[](int half) const { return data_.get() + half * count_; }

 private:
  Scratch<P> data_;
  int64_t count_;
};

struct Range {
  int64_t begin, end;
};

// Thread `thread` of `threads` gets a contiguous share of `count` items, sizes differing by at most one.
FASTRNN_HD Range share(int64_t count, int thread, int threads) {
  const int64_t base = count / threads, extra = count % threads;
  const int64_t begin = thread * base + (thread < extra ? thread : extra);
  return {begin, begin + base + (thread < extra ? 1 : 0)};
}

// The index-th block of `range` in the order a step walks it: ascending on even steps, descending on odd
// ones. Each step reads every panel of its blocks once; walked back and forth, the panels a step read last
// are the first the next step reads, while still in the nearer cache (walked one way round, with more
// panels than a cache holds, every read misses it: the oldest line is always the one evicted).
FASTRNN_HD int64_t serpentine(Range range, int64_t index, int parity) {
  return parity ? range.end - 1 - index : range.begin + index;
}

// Below this many multiply-adds per step and thread a second thread costs more at the per-step barrier
// than it saves (measured on the benchmark grid; see bench/RESULTS.md).
constexpr int64_t kMinStepWorkPerThread = 8192;

// A one-step call (the cells) meets no barrier but pays for starting its threads, so it splits later.
constexpr int64_t kMinCellWorkPerThread = 1 << 17;

inline int threads_for(int max_threads, int64_t work, int64_t min_work_per_thread, int64_t blocks) {
  int64_t threads = max_threads < 1 ? 1 : max_threads;
  const int64_t by_work = work / min_work_per_thread;
  if (threads > by_work) threads = by_work < 1 ? 1 : by_work;
  if (threads > blocks) threads = blocks < 1 ? 1 : blocks;
  return static_cast<int>(threads);
}

inline int choose_threads(const Shape& shape, int64_t step_work, int64_t blocks) {
  return threads_for(shape.max_threads, step_work, kMinStepWorkPerThread, blocks);
}

FASTRNN_HD int64_t live_rows(const Shape& shape, int64_t t) { return shape.live ? shape.live[t] : shape.batch; }
FASTRNN_HD int64_t step_at(const Shape& shape, int64_t s) { return shape.reverse ? shape.steps - 1 - s : s; }

// The step at which row b of a layer-direction ended (its final state was made there), or -1 if the
// row never ran (length 0).
inline int64_t last_step_of_row(const Shape& shape, int64_t row) {
  if (shape.steps == 0) return -1;
  if (!shape.live) return shape.reverse ? 0 : shape.steps - 1;
  int64_t length = 0;  // rows live at step t are a prefix, so row b runs the steps with live[t] > b
  while (length < shape.steps && shape.live[length] > row) ++length;
  if (length == 0) return -1;
  return shape.reverse ? 0 : length - 1;
}

// h_n: each row's hidden state at its last step (read back from the outputs, since rows finish at
// different steps), or h0 for a row that never ran.
template <class T>
void gather_final_state(const Shape& shape, const T* y, const T* h0, T* h_n, int64_t width) {
  for (int64_t row = 0; row < shape.batch; ++row) {
    const int64_t t = last_step_of_row(shape, row);
    const T* src = t < 0 ? h0 + row * width : y + (t * shape.batch + row) * width;
    convert(h_n + row * width, src, width);
  }
}

// Runs Job::run(thread, threads) on the threads of one parallel region.
template <class Job>
void run_job(Job& job, int threads) {
  run_parallel(
      threads, [](void* context, int thread, int count) { static_cast<Job*>(context)->run(thread, count); }, &job);
}

}  // namespace
}  // namespace cpu
}  // namespace fastrnn
