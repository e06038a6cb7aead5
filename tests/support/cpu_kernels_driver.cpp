// Runs the CPU kernels (csrc/cpu/) with no torch around them, for the sanitizer builds of
// tests/test_cpp_sanitizers.py: every kernel, forward and backward, float32 and bfloat16 storage, with
// and without proj_size, full and ragged lengths, both directions, on two threads; and each two-thread
// result must equal the one-thread result bit for bit (threads split the work, never the arithmetic).
// Prints "ok" and exits 0, or says what differed and exits 1; the sanitizers report on their own.
//
// The portable vector width keeps the build quick; the threading and memory logic is the same for
// every instruction set. Built with FASTRNN_BF16_DOT it runs the bfloat16 kernels' pair-product GEMMs.
// The two-thread runs go twice through a panel cache (csrc/cpu/panel_cache.cpp): the first packs the
// weights into it, the second reads them back, and both must equal the one-thread run's fresh packing.
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/gru.h"
#include "cpu/lstm.h"

using namespace fastrnn::cpu;

namespace {

#if defined(FASTRNN_BF16_DOT)
// Built for AVX512_BF16 (-mavx512bf16 and this macro): the bfloat16 kernels' pair products, which exist
// at 16 lanes only.
constexpr int kLanes = 16, kRegisters = 32;
constexpr bool kFloat32 = false;  // the float32 kernels are the same code at this width as below
#else
constexpr int kLanes = 4, kRegisters = 16;
constexpr bool kFloat32 = true;
#endif

template <class S>
std::vector<S> random_values(size_t count, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<S> values(count);
  for (S& value : values) value = to_storage(normal(rng), &value);
  return values;
}

template <class S>
bool same_bits(const std::vector<S>& a, const std::vector<S>& b, const char* what) {
  if (a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(S)) == 0)) return true;
  std::printf("two threads differ from one in %s\n", what);
  return false;
}

// A panel cache for one weight, freed at scope exit.
struct OwnedCache {
  PanelCache* cache = new_panel_cache();
  OwnedCache() = default;
  OwnedCache(const OwnedCache&) = delete;
  ~OwnedCache() { delete_panel_cache(cache); }
};

// Runs 1 and 2 (two threads, packing into the cache and then reading it) against run 0 (one thread, packing
// afresh), by `same(one, other)`.
template <class Result, class Same>
bool later_runs_match_the_first(const Result (&results)[3], Same same) {
  bool all = true;
  for (int run = 1; run < 3; ++run) all &= same(results[0], results[run]);
  return all;
}

struct Case {
  int64_t steps, batch, hidden, state;
  bool reverse, ragged;
};

// live[t]: rows running at step t for lengths batch, batch - 1, ... (clamped to [1, steps]).
std::vector<int64_t> live_rows(const Case& c) {
  std::vector<int64_t> live(c.steps, 0);
  for (int64_t b = 0; b < c.batch; ++b) {
    int64_t length = c.steps - b;
    if (length < 1) length = 1;
    for (int64_t t = 0; t < length; ++t) ++live[t];
  }
  return live;
}

template <class S>
bool run_lstm(const Case& c, std::mt19937& rng) {
  using K = LstmKernels<S, kLanes, kRegisters>;
  const int64_t T = c.steps, B = c.batch, H = c.hidden, R = c.state;
  const bool proj = R != H;
  const std::vector<int64_t> live = live_rows(c);
  const auto xp = random_values<S>(T * B * 4 * H, rng), h0 = random_values<S>(B * R, rng),
             c0 = random_values<S>(B * H, rng), w_hh = random_values<S>(4 * H * R, rng, 0.3f),
             w_hr = random_values<S>(R * H, rng, 0.3f), dy = random_values<S>(T * B * R, rng),
             dh_n = random_values<S>(B * R, rng), dc_n = random_values<S>(B * H, rng);
  struct Result {
    std::vector<S> y, h_n, c_n, gates, c_all, dgates, dh_all, dh0, dc0;
  } results[3];
  const OwnedCache w_hh_cache, w_hr_cache;
  for (int run = 0; run < 3; ++run) {
    const int threads = run == 0 ? 1 : 2;
    const CachedPanels w_hh_panels{run == 0 ? nullptr : w_hh_cache.cache, 1},
        w_hr_panels{run == 0 ? nullptr : w_hr_cache.cache, 1};
    Result& r = results[run];
    r.y.assign(T * B * R, S{}), r.h_n.assign(B * R, S{}), r.c_n.assign(B * H, S{});
    r.gates.assign(T * B * 4 * H, S{}), r.c_all.assign(T * B * H, S{});
    const Shape shape{T, B, H, R, c.reverse, c.ragged ? live.data() : nullptr, threads};
    K::forward({shape, xp.data(), h0.data(), c0.data(), w_hh.data(), proj ? w_hr.data() : nullptr, r.y.data(),
                r.h_n.data(), r.c_n.data(), r.gates.data(), r.c_all.data(), w_hh_panels, w_hr_panels});
    std::vector<S> c_prev(T * B * H);  // the cell state entering each step, as the caller derives it
    for (int64_t t = 0; t < T; ++t) {
      const int64_t from = c.reverse ? t + 1 : t - 1;
      for (int64_t i = 0; i < B * H; ++i) c_prev[t * B * H + i] = from < 0 || from >= T ? c0[i] : r.c_all[from * B * H + i];
    }
    r.dgates.assign(T * B * 4 * H, S{}), r.dh_all.assign(proj ? T * B * R : 0, S{}), r.dh0.assign(B * R, S{});
    r.dc0.assign(B * H, S{});
    K::backward({shape, dy.data(), dh_n.data(), dc_n.data(), c_prev.data(), w_hh.data(), proj ? w_hr.data() : nullptr,
                 r.gates.data(), r.c_all.data(), r.dgates.data(), proj ? r.dh_all.data() : nullptr, r.dh0.data(),
                 r.dc0.data(), w_hh_panels, w_hr_panels});
  }
  return later_runs_match_the_first(results, [](const Result& one, const Result& two) {
    return same_bits(one.y, two.y, "lstm y") & same_bits(one.h_n, two.h_n, "lstm h_n") &
           same_bits(one.c_n, two.c_n, "lstm c_n") & same_bits(one.gates, two.gates, "lstm gates") &
           same_bits(one.dgates, two.dgates, "lstm dgates") & same_bits(one.dh_all, two.dh_all, "lstm dh_all") &
           same_bits(one.dh0, two.dh0, "lstm dh0") & same_bits(one.dc0, two.dc0, "lstm dc0");
  });
}

template <class S>
bool run_gru(const Case& c, std::mt19937& rng) {
  using K = GruKernels<S, kLanes, kRegisters>;
  const int64_t T = c.steps, B = c.batch, H = c.hidden;
  const std::vector<int64_t> live = live_rows(c);
  const auto xp = random_values<S>(T * B * 3 * H, rng), h0 = random_values<S>(B * H, rng),
             w_hh = random_values<S>(3 * H * H, rng, 0.3f), b_hn = random_values<S>(H, rng),
             dy = random_values<S>(T * B * H, rng), dh_n = random_values<S>(B * H, rng);
  struct Result {
    std::vector<S> y, h_n, saved, dxp, dhn, dh0;
  } results[3];
  const OwnedCache w_hh_cache;
  for (int run = 0; run < 3; ++run) {
    const int threads = run == 0 ? 1 : 2;
    const CachedPanels w_hh_panels{run == 0 ? nullptr : w_hh_cache.cache, 1};
    Result& r = results[run];
    r.y.assign(T * B * H, S{}), r.h_n.assign(B * H, S{}), r.saved.assign(T * B * 4 * H, S{});
    const Shape shape{T, B, H, H, c.reverse, c.ragged ? live.data() : nullptr, threads};
    K::forward({shape, xp.data(), h0.data(), w_hh.data(), b_hn.data(), r.y.data(), r.h_n.data(), r.saved.data(),
                w_hh_panels});
    std::vector<S> h_prev(T * B * H);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t from = c.reverse ? t + 1 : t - 1;
      for (int64_t i = 0; i < B * H; ++i) h_prev[t * B * H + i] = from < 0 || from >= T ? h0[i] : r.y[from * B * H + i];
    }
    r.dxp.assign(T * B * 3 * H, S{}), r.dhn.assign(T * B * H, S{}), r.dh0.assign(B * H, S{});
    K::backward({shape, dy.data(), dh_n.data(), h_prev.data(), w_hh.data(), r.saved.data(), r.dxp.data(), r.dhn.data(),
                 r.dh0.data(), w_hh_panels});
  }
  return later_runs_match_the_first(results, [](const Result& one, const Result& two) {
    return same_bits(one.y, two.y, "gru y") & same_bits(one.h_n, two.h_n, "gru h_n") &
           same_bits(one.saved, two.saved, "gru saved") & same_bits(one.dxp, two.dxp, "gru dxp") &
           same_bits(one.dhn, two.dhn, "gru dhn") & same_bits(one.dh0, two.dh0, "gru dh0");
  });
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  bool ok = true;
  // Hidden 37 (10 unit blocks of 4, the last ragged) and batch 11 cut the tiles and the threads' shares
  // unevenly; the work per step is above the kernels' threshold for a second thread.
  for (const bool reverse : {false, true}) {
    for (const bool ragged : {false, true}) {
      const Case lstm{7, 11, 37, 37, reverse, ragged}, projected{7, 11, 37, 13, reverse, ragged};
      if (kFloat32) ok &= run_lstm<float>(lstm, rng) & run_lstm<float>(projected, rng) & run_gru<float>(lstm, rng);
      ok &= run_lstm<bfloat16>(lstm, rng) & run_lstm<bfloat16>(projected, rng);
      ok &= run_gru<bfloat16>(lstm, rng);
    }
  }
  std::puts(ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
