// Launch plans: how one layer-direction's recurrence is cut into CTAs, tiles and launches, decided on
// the host per shape and device and carried into the kernels as a plain struct (Geometry).
//
// Every kernel is a sequence of phases. A phase is a block GEMM, acc = A W^T over a reduction of length
// k, followed by a pointwise epilogue, for one slice of hidden units (or of state columns) per CTA and
// for every batch row. Per step there is one phase (two with an LSTM projection: the units, then the
// state columns they project onto); a backward adds a last phase that carries the gradient into dh0.
//
// Two strategies run the same phases:
//   persistent  one cooperative launch for all steps; each CTA loads its slice of W into shared memory
//               once, walks the batch in row tiles, and meets the other CTAs at a grid barrier between
//               phases. Needs the slice (plus a row tile of A and the accumulators) to fit in shared
//               memory, and the grid to be co-resident.
//   stepwise    one launch per phase (a fused GEMM + cell per step); CTAs own (slice, row tile) pairs
//               and stream W through shared memory in chunks. Fits any shape.
// automatic takes persistent where it fits and is co-resident, else stepwise, and says why.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <stdexcept>
#include <string>

#include "api.h"

namespace fastrnn {
namespace cuda {

// How a block GEMM multiplies: tensor cores on 16-bit inputs, TF32 tensor cores on float32 inputs, or
// one fused multiply-add per product (float64, and float32 when TF32 is off).
enum class Math : int { fma = 0, tf32 = 1, tensor16 = 2 };

// Every kernel's __launch_bounds__(kMaxThreads, 1): one CTA per SM is all a persistent grid needs, and
// telling ptxas so lets it keep every value in registers (with its default target it spilled on sm_80).
constexpr int kMaxThreads = 256;
constexpr int kTile = 16;         // the wmma tile edge: every padded extent is a multiple of it
constexpr size_t kSharedAlign = 128;

// One kind of phase, for the CTA that owns slice `s` of `extent`.
struct PhaseGeometry {
  int k;          // reduction length
  int k_chunk;    // reduction columns staged in shared memory at once (a multiple of 16)
  int k_padded;   // k rounded up to k_chunk
  int gates;      // rows of W per slice member: 4 (LSTM units), 3 (GRU units), 1 (a column of W)
  int extent;     // what the slices cover: H or R
  int slice;      // members per CTA
  int slices;     // ceil(extent / slice)
  int n_padded;   // gates * slice rounded up to 16: the GEMM's N
  int splits;     // partial sums the reduction is cut into, so that warps without a tile share the work
  int ld_w;       // leading dimension of W in shared memory (elements)
  size_t w_offset;  // bytes: where W (the resident slice, or the streamed chunk) lives in shared memory
};

struct Geometry {
  int steps, batch, hidden, state;
  bool reverse;
  bool persistent;
  int threads;
  int grid;        // persistent: the CTAs; stepwise: see stepwise_grid()
  int row_tile;    // batch rows per GEMM tile (a multiple of 16)
  int row_blocks;  // stepwise: ceil(B / row_tile); persistent: 1 (each CTA walks every row tile)
  int kinds;       // phase kinds per step: 1, or 2 with an LSTM projection
  int phases;      // all phases of the call
  PhaseGeometry phase[2];
  int ld_a;              // leading dimension of the A tile in shared memory (elements)
  int ld_acc;            // leading dimension of the accumulators (elements)
  size_t a_offset;       // bytes
  size_t acc_offset;     // bytes
  size_t split_stride;   // elements between the partial sums of one accumulator tile
  size_t shared_bytes;   // dynamic shared memory per CTA
  // Persistent forwards without a projection: the step's pointwise inputs on chip (inputs = 1): the CTA's
  // units of xp_t, prefetched two stages deep (step t + 1's copies fly while the grid barrier waits), the
  // lengths, and the CTA's own units of h_{t-1} (and of c_{t-1}); else 0, and the epilogue reads them from
  // global memory.
  int inputs;
  int input_gates;         // xp columns per unit: 4 (LSTM), 3 (GRU) or 1 (Elman)
  size_t xp_offset;        // bytes: stage 0 of B x input_gates x slice elements; stage 1 follows
  size_t xp_stage_bytes;
  size_t lengths_offset;   // bytes: B int32
  size_t own_offset;       // bytes: B x slice elements of h (GRU: then the slice's b_hn)
  size_t cell_offset;      // bytes: B x slice accumulators of c (LSTM)
  int phase_begin, phase_end;  // the phases this launch runs
};

inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }
inline int round_up(int64_t a, int64_t b) { return ceil_div(a, b) * static_cast<int>(b); }
inline size_t align_bytes(size_t bytes) { return (bytes + kSharedAlign - 1) / kSharedAlign * kSharedAlign; }

inline size_t element_size(DType dtype) {
  switch (dtype) {
    case DType::float64: return 8;
    case DType::float32: return 4;
    default: return 2;
  }
}
// The accumulators and carried states: float64 for float64 data, else float32.
inline size_t accumulator_size(DType dtype) { return dtype == DType::float64 ? 8 : 4; }

inline Math math_for(DType dtype, bool allow_tf32) {
  if (dtype == DType::float16 || dtype == DType::bfloat16) return Math::tensor16;
  if (dtype == DType::float32 && allow_tf32) return Math::tf32;
  return Math::fma;
}

inline int k_step(Math math) { return math == Math::tensor16 ? 16 : math == Math::tf32 ? 8 : 1; }

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::float64: return "float64";
    case DType::float32: return "float32";
    case DType::float16: return "float16";
    default: return "bfloat16";
  }
}

inline const char* kernel_name(Kernel kernel) {
  switch (kernel) {
    case Kernel::lstm_forward: return "lstm forward";
    case Kernel::lstm_backward: return "lstm backward";
    case Kernel::gru_forward: return "gru forward";
    case Kernel::gru_backward: return "gru backward";
    case Kernel::rnn_forward: return "rnn forward";
    case Kernel::rnn_backward: return "rnn backward";
    case Kernel::lstm_cell: return "lstm cell";
    case Kernel::gru_cell: return "gru cell";
    default: return "rnn cell";
  }
}

// The reduction and the slicing of each phase kind. (LSTM forward: units with their 4 gate rows of W_hh
// over R, then state columns of W_hr over H. Backwards: columns of W_hh over its 4H or 3H rows, the
// transposed product dG W_hh; with a projection the state columns first, then the units through W_hr.
// Elman: units with their one row of W_hh over H; backward, columns of W_hh over its H rows. A cell step:
// units with their rows of [W_ih | W_hh] over I + H, the GRU's candidate in two rows, input and hidden
// part apart, as its reset gate multiplies only the hidden part.)
struct PhaseSpec {
  int k, gates, extent;
};

inline int phase_kinds(Kernel kernel, const Problem& p, PhaseSpec* specs) {
  const int H = static_cast<int>(p.hidden), R = static_cast<int>(p.state);
  switch (kernel) {
    case Kernel::lstm_forward:
      specs[0] = {R, 4, H};
      specs[1] = {H, 1, R};
      return p.projection ? 2 : 1;
    case Kernel::lstm_backward:
      specs[0] = {4 * H, 1, p.projection ? R : H};
      specs[1] = {R, 1, H};
      return p.projection ? 2 : 1;
    case Kernel::gru_forward:
      specs[0] = {H, 3, H};
      return 1;
    case Kernel::gru_backward:
      specs[0] = {3 * H, 1, H};
      return 1;
    case Kernel::rnn_forward:
    case Kernel::rnn_backward:
      specs[0] = {H, 1, H};
      return 1;
    default:  // a cell step
      specs[0] = {static_cast<int>(p.input) + H, kernel == Kernel::rnn_cell ? 1 : 4, H};
      return 1;
  }
}

inline bool is_backward(Kernel kernel) {
  return kernel == Kernel::lstm_backward || kernel == Kernel::gru_backward || kernel == Kernel::rnn_backward;
}

struct Plan {
  Geometry geometry;
  std::string description;
};

namespace detail {

inline int splits_for(Math math, int threads, int row_tile, int n_padded, int k_chunk) {
  int splits;
  if (math == Math::fma) {
    splits = std::max(1, threads / (row_tile * n_padded));
    return std::min(splits, k_chunk);
  }
  const int tiles = (row_tile / kTile) * (n_padded / kTile);
  splits = std::max(1, (threads / 32) / tiles);
  return std::min(splits, k_chunk / k_step(math));
}

// Fills the phase kinds' chunking and the shared-memory layout for a row tile and a cap on the chunk.
inline void lay_out(Geometry& g, const PhaseSpec* specs, DType dtype, Math math, int k_cap, int input_gates = 0) {
  const size_t elem = element_size(dtype), acc = accumulator_size(dtype);
  const int pad = static_cast<int>(16 / elem);  // 16 bytes of padding per row: spreads rows over banks
  int max_chunk = 0, max_n = 0, max_splits = 1;
  size_t offset = 0, stream_w = 0;
  for (int kind = 0; kind < g.kinds; ++kind) {
    PhaseGeometry& ph = g.phase[kind];
    ph.k = specs[kind].k;
    ph.gates = specs[kind].gates;
    ph.extent = specs[kind].extent;
    ph.k_chunk = std::min(round_up(ph.k, kTile), k_cap);
    ph.k_padded = round_up(ph.k, ph.k_chunk);
    ph.n_padded = round_up(static_cast<int64_t>(ph.gates) * ph.slice, kTile);
    ph.splits = splits_for(math, g.threads, g.row_tile, ph.n_padded, ph.k_chunk);
    ph.ld_w = (g.persistent ? ph.k_padded : ph.k_chunk) + pad;
    max_chunk = std::max(max_chunk, ph.k_chunk);
    max_n = std::max(max_n, ph.n_padded);
    max_splits = std::max(max_splits, ph.splits);
    const size_t w_bytes = align_bytes(static_cast<size_t>(ph.n_padded) * ph.ld_w * elem);
    if (g.persistent) {
      ph.w_offset = offset;  // each kind's slice stays resident
      offset += w_bytes;
    } else {
      ph.w_offset = 0;  // the kinds take turns streaming through one region
      stream_w = std::max(stream_w, w_bytes);
    }
  }
  offset += stream_w;
  g.ld_a = max_chunk + pad;
  g.a_offset = offset;
  offset += align_bytes(static_cast<size_t>(g.row_tile) * g.ld_a * elem);
  g.ld_acc = max_n + static_cast<int>(16 / acc);
  g.split_stride = static_cast<size_t>(g.row_tile) * g.ld_acc;
  g.acc_offset = offset;
  offset += align_bytes(max_splits * g.split_stride * acc);
  g.inputs = input_gates > 0 ? 1 : 0;
  g.input_gates = input_gates;
  g.xp_offset = g.lengths_offset = g.own_offset = g.cell_offset = g.xp_stage_bytes = 0;
  if (g.inputs) {
    const size_t rows = static_cast<size_t>(g.batch), slice = static_cast<size_t>(g.phase[0].slice);
    g.xp_offset = offset;
    g.xp_stage_bytes = align_bytes(rows * input_gates * slice * elem);
    offset += 2 * g.xp_stage_bytes;
    g.lengths_offset = offset;
    offset += align_bytes(rows * sizeof(int32_t));
    g.own_offset = offset;
    offset += align_bytes((rows + (input_gates == 3 ? 1 : 0)) * slice * elem);  // the GRU's b_hn after h
    if (input_gates == 4) {
      g.cell_offset = offset;
      offset += align_bytes(rows * slice * acc);
    }
  }
  g.shared_bytes = offset;
}

inline std::string kb(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f KB", bytes / 1024.0);
  return text;
}

// --- what a step should cost: a model, not a measurement ----------------------------------------------
//
// Per step of a plan on an H100/H200, from its geometry, the critical path of one CTA: the grid barrier
// (persistent) or the launch (stepwise) per phase kind; per row tile and reduction chunk one staging round
// trip (the tile's 16-byte copies are issued together, so their latency is paid once) and the longest
// warp's chain of dependent MMAs (FMAs without tensor cores); per row tile one epilogue round trip (its
// loads of xp, states and saved gates, issued together; half of one, its stores draining at the barrier's
// release, where those inputs are on chip: g.inputs); and the staged bytes of every CTA through L2,
// which at large B x H is what a persistent step spends most on (each CTA reads all of h_{t-1}).
namespace cost {
constexpr double kClockGHz = 1.98;       // SM clock under load, read on an H200 here (device tool, KINDS.md)
constexpr double kBarrierUs = 1.1;       // grid.sync over 132 CTAs, measured on an H100 (DESIGN.md section 3)
constexpr double kLaunchUs = 2.5;        // assumed: one launch back to back in a stream, no CUDA graph
constexpr double kL2TripUs = 0.5;        // assumed: loads served by L2 under load (~1000 cycles) + a block barrier
constexpr double kL2BytesPerUs = 4.3e6;  // 4.3 TB/s: the device copy measured on an H200 here, as L2's floor
constexpr double kMmaCycles = 33;        // assumed: a dependent wmma mma_sync (two HMMAs)
constexpr double kFmaCycles = 4;         // assumed: a dependent FFMA/DFMA fed from shared memory
}  // namespace cost

struct StepCost {
  double sync_us = 0, staging_us = 0, mma_us = 0, epilogue_us = 0, traffic_us = 0;
  double total() const { return sync_us + staging_us + mma_us + epilogue_us + traffic_us; }
};

inline double mma_chain_us(const Geometry& g, const PhaseGeometry& ph, Math math) {
  const int warps = std::max(1, g.threads / 32);
  double cycles;
  if (math == Math::fma) {
    const int64_t outputs = static_cast<int64_t>(g.row_tile) * ph.n_padded * ph.splits;
    cycles = static_cast<double>(ceil_div(outputs, g.threads)) * ceil_div(ph.k_chunk, ph.splits) * cost::kFmaCycles;
  } else {
    const int step = math == Math::tf32 ? 8 : kTile;
    const int64_t items = static_cast<int64_t>(g.row_tile / kTile) * (ph.n_padded / kTile) * ph.splits;
    cycles = static_cast<double>(ceil_div(items, warps)) * ceil_div(ph.k_chunk / step, ph.splits) * cost::kMmaCycles;
  }
  return cycles / (cost::kClockGHz * 1000.0);
}

inline StepCost step_cost(const Geometry& g, size_t elem, Math math) {
  StepCost c;
  for (int kind = 0; kind < g.kinds; ++kind) {
    const PhaseGeometry& ph = g.phase[kind];
    const int chunks = ph.k_padded / ph.k_chunk;
    const int row_tiles = g.persistent ? ceil_div(g.batch, g.row_tile) : 1;
    c.sync_us += g.persistent ? cost::kBarrierUs : cost::kLaunchUs;
    c.staging_us += row_tiles * chunks * cost::kL2TripUs;
    c.mma_us += row_tiles * chunks * mma_chain_us(g, ph, math);
    // With its inputs on chip (prefetched while the barrier waited) the epilogue only stores, and pays for
    // them where the barrier's release waits for them to drain: half a trip, assumed.
    c.epilogue_us += row_tiles * (g.inputs ? cost::kL2TripUs / 2 : cost::kL2TripUs);
    // Bytes through L2: every CTA's A rows; stepwise plans stream their W slices too (all of W per step).
    const double a_bytes = static_cast<double>(ph.slices) * (g.persistent ? g.batch : g.row_blocks * g.row_tile) *
                           ph.k * elem;
    const double w_bytes = g.persistent ? 0.0 : static_cast<double>(ph.slices) * g.row_blocks * ph.n_padded * ph.k * elem;
    c.traffic_us += (a_bytes + w_bytes) / cost::kL2BytesPerUs;
  }
  return c;
}

inline std::string describe_cost(const StepCost& c, bool persistent) {
  char text[256];
  std::snprintf(text, sizeof(text),
                "expected %.1f us per step on an H100/H200 (%s %.1f, staging %.1f, MMA %.1f, epilogue %.1f, "
                "L2 traffic %.1f: a model, not a measurement)",
                c.total(), persistent ? "barrier" : "launch", c.sync_us, c.staging_us, c.mma_us, c.epilogue_us,
                c.traffic_us);
  return text;
}

inline std::string describe(const Geometry& g, Kernel kernel, size_t elem, Math math) {
  std::string text = std::string(g.persistent ? "persistent" : "stepwise") + ": ";
  if (g.persistent) {
    text += "one cooperative launch of " + std::to_string(g.grid) + " CTAs x " + std::to_string(g.threads) +
            " threads for " + std::to_string(g.steps) + " steps";
  } else {
    text += std::to_string(g.phases) + " launches of " + std::to_string(g.threads) + "-thread CTAs (one per " +
            (g.kinds == 2 ? "phase of each step" : "step") + ")";
  }
  const char* member[2] = {nullptr, nullptr};
  const bool projection = g.kinds == 2;
  switch (kernel) {
    case Kernel::lstm_forward: member[0] = "units"; member[1] = "state columns"; break;
    case Kernel::lstm_backward: member[0] = projection ? "state columns" : "units"; member[1] = "units"; break;
    default: member[0] = "units"; break;
  }
  for (int kind = 0; kind < g.kinds; ++kind) {
    const PhaseGeometry& ph = g.phase[kind];
    text += "; " + std::to_string(ph.slice) + " " + member[kind] + " per CTA (" + std::to_string(ph.slices) +
            " slices, k " + std::to_string(ph.k) + " in chunks of " + std::to_string(ph.k_chunk) + ")";
  }
  text += "; row tile " + std::to_string(g.row_tile) + "; " + kb(g.shared_bytes) + " shared memory per CTA";
  if (g.inputs) text += " (xp prefetched across the barrier, lengths and own states on chip)";
  return text + "; " + describe_cost(step_cost(g, elem, math), g.persistent);
}

}  // namespace detail

// resident_blocks(threads, shared_bytes): how many CTAs of the persistent kernel fit on a multiprocessor.
inline Plan make_plan(Kernel kernel, const Problem& p, const Options& o, int multiprocessors, size_t shared_limit,
                      const std::function<int(int, size_t)>& resident_blocks) {
  if (o.threads < 0 || o.threads % 32 != 0 || o.threads > kMaxThreads)
    throw std::invalid_argument("fastrnn cuda backend: threads must be a multiple of 32 up to " +
                                std::to_string(kMaxThreads) + ", got " + std::to_string(o.threads));
  if (o.row_tile < 0 || o.row_tile % kTile != 0 || o.k_chunk < 0 || o.k_chunk % kTile != 0 || o.ctas < 0)
    throw std::invalid_argument("fastrnn cuda backend: row_tile and k_chunk must be multiples of 16, ctas >= 0");
  PhaseSpec specs[2];
  Geometry g{};
  g.steps = static_cast<int>(p.steps);
  g.batch = static_cast<int>(p.batch);
  g.hidden = static_cast<int>(p.hidden);
  g.state = static_cast<int>(p.state);
  g.reverse = p.reverse;
  g.kinds = phase_kinds(kernel, p, specs);
  g.phases = g.steps * g.kinds + (is_backward(kernel) ? 1 : 0);
  g.threads = o.threads ? o.threads : kMaxThreads;
  const Math math = math_for(p.dtype, o.allow_tf32);
  const int rows16 = round_up(p.batch, kTile);
  const int first_tile = o.row_tile ? o.row_tile : std::min(64, rows16);
  std::string why_not;

  if (o.strategy != Strategy::stepwise) {
    g.persistent = true;
    g.row_blocks = 1;
    int ctas = o.ctas;
    if (ctas == 0) {
      int need = 1;
      for (int kind = 0; kind < g.kinds; ++kind)
        need = std::max(need, ceil_div(specs[kind].extent, std::max(1, kTile / specs[kind].gates)));
      ctas = std::min(multiprocessors, need);
    }
    int busy = 1;
    for (int kind = 0; kind < g.kinds; ++kind) {
      g.phase[kind].slice = ceil_div(specs[kind].extent, ctas);
      g.phase[kind].slices = ceil_div(specs[kind].extent, g.phase[kind].slice);
      busy = std::max(busy, g.phase[kind].slices);
    }
    // Chosen, the grid is what the slices fill (1024 units over 132 SMs: 8 each, 128 CTAs); forced, it
    // stays as asked, idle CTAs included (they still meet the others at every barrier).
    if (o.ctas == 0) ctas = busy;
    g.grid = ctas;
    bool fits = false;
    const int caps[] = {1 << 30, 4096, 2048, 1024, 512, 256, 128, 64, 32, 16};
    const int tiles[] = {first_tile, 32, 16};
    // The forwards without a projection keep their step's inputs on chip where that still fits, else they
    // read them.
    const int input_gates = kernel == Kernel::lstm_forward && !p.projection ? 4
                            : kernel == Kernel::gru_forward                ? 3
                            : kernel == Kernel::rnn_forward                ? 1
                                                                           : 0;
    for (int gates : {input_gates, 0}) {
      for (int tile : tiles) {
        if (fits || tile > first_tile || (tile != first_tile && o.row_tile)) continue;
        g.row_tile = tile;
        for (int cap : caps) {
          if (o.k_chunk && cap != caps[0]) break;
          detail::lay_out(g, specs, p.dtype, math, o.k_chunk ? o.k_chunk : cap, gates);
          if (g.shared_bytes <= shared_limit) {
            fits = true;
            break;
          }
        }
      }
      if (fits || gates == 0) break;
    }
    if (!fits) {
      why_not = "the resident slice of W needs " + detail::kb(g.shared_bytes) + " of shared memory per CTA, more than the " +
                detail::kb(shared_limit) + " a CTA can have";
    } else {
      const int resident = resident_blocks(g.threads, g.shared_bytes);
      if (static_cast<int64_t>(resident) * multiprocessors < ctas)
        why_not = std::to_string(ctas) + " CTAs cannot all be resident at once (" + std::to_string(resident) +
                  " per multiprocessor x " + std::to_string(multiprocessors) + " multiprocessors)";
    }
    if (why_not.empty()) return {g, detail::describe(g, kernel, element_size(p.dtype), math)};
    if (o.strategy == Strategy::persistent)
      throw std::runtime_error(std::string("fastrnn cuda backend: the persistent ") + kernel_name(kernel) +
                               " kernel cannot run this shape: " + why_not);
  }

  g.persistent = false;
  g.row_tile = first_tile;
  g.row_blocks = ceil_div(p.batch, g.row_tile);
  for (int kind = 0; kind < g.kinds; ++kind) {
    g.phase[kind].slice = std::max(1, 64 / specs[kind].gates);
    g.phase[kind].slices = ceil_div(specs[kind].extent, g.phase[kind].slice);
  }
  detail::lay_out(g, specs, p.dtype, math, o.k_chunk ? o.k_chunk : 128);
  if (g.shared_bytes > shared_limit)
    throw std::runtime_error("fastrnn cuda backend: the stepwise plan needs " + detail::kb(g.shared_bytes) +
                             " of shared memory per CTA; the device allows " + detail::kb(shared_limit));
  g.grid = 0;  // per phase kind: stepwise_grid()
  std::string text = detail::describe(g, kernel, element_size(p.dtype), math);
  if (!why_not.empty()) text += " (not persistent: " + why_not + ")";
  return {g, text};
}

// Stepwise: the CTAs of a launch of phase kind `kind`, one per (slice, row block).
inline int stepwise_grid(const Geometry& g, int kind) { return g.phase[kind].slices * g.row_blocks; }

// Where a call's device workspace keeps what lives across phases (byte offsets, 256-byte aligned).
struct WorkspaceLayout {
  size_t h_even, h_odd;  // [B, R] the hidden state exchanged between CTAs, double-buffered across steps
  size_t units;          // [B, H] an LSTM's o * tanh(c) before the projection
  size_t c_state;        // [B, H] the carried cell state (accumulator type)
  size_t carry;          // [B, R] the carried gradient of h (accumulator type)
  size_t dc_state;       // [B, H] the carried gradient of c (accumulator type)
  size_t barrier;        // the grid barrier's arrival counter
  size_t bytes;
};

inline WorkspaceLayout workspace_layout(Kernel kernel, const Problem& p) {
  const size_t elem = element_size(p.dtype), acc = accumulator_size(p.dtype);
  const size_t BR = static_cast<size_t>(p.batch) * p.state, BH = static_cast<size_t>(p.batch) * p.hidden;
  WorkspaceLayout w{};
  size_t used = 0;
  auto take = [&used](size_t bytes) {
    const size_t at = used;
    used += (bytes + 255) / 256 * 256;
    return at;
  };
  switch (kernel) {
    case Kernel::lstm_forward:
    case Kernel::gru_forward:
    case Kernel::rnn_forward:
      w.h_even = take(BR * elem);
      w.h_odd = take(BR * elem);
      if (kernel == Kernel::lstm_forward) {
        w.c_state = take(BH * acc);
        if (p.projection) w.units = take(BH * elem);
      }
      break;
    case Kernel::lstm_backward:
    case Kernel::gru_backward:
    case Kernel::rnn_backward:
      w.carry = take(BR * acc);
      if (kernel == Kernel::lstm_backward) w.dc_state = take(BH * acc);
      break;
    default:  // a cell step keeps nothing between launches
      break;
  }
  w.barrier = take(sizeof(unsigned int));
  w.bytes = used;
  return w;
}

// The plan each family's launcher would run (lstm.cu, gru.cu, rnn.cu, cell_step.cu), for describe_plan().
Plan lstm_plan(Kernel kernel, const Problem& problem, const Options& options);
Plan gru_plan(Kernel kernel, const Problem& problem, const Options& options);
Plan rnn_plan(Kernel kernel, const Problem& problem, const Options& options);
Plan cell_plan(Kernel kernel, const Problem& problem, const Options& options);

}  // namespace cuda
}  // namespace fastrnn
