// The fused C++ CPU kernels: what the binding calls (plain pointers and sizes, no torch types), and
// the little the instruction-set variants share with the portable dispatcher.
//
// Each layer call runs one layer in one direction: the whole T-step recurrence (forward) or its reverse
// (backward), the contract of fastrnn/backends/reference.py. The cell calls run one step of a cell
// (reference.cell_forward, cell_backward) on weights packed beforehand (CellPack). Tensors are contiguous and time-major:
// per step t the rows of batch b start at [t][b]. `live` (T entries) gives the number of sequences still
// running at step t (lengths sorted non-increasing, so they are a prefix of the batch), or is null when
// every sequence runs all T steps. Outputs at steps where a row does not run are not written (the
// caller zero-fills them when there are lengths).
#pragma once

#include <cstdint>

namespace fastrnn {
namespace cpu {

// bfloat16 as torch stores it: the upper 16 bits of a float32. The kernels compute in float32 and
// round to bfloat16 (to nearest even) only where they store.
struct bfloat16 {
  uint16_t bits;
};

// The type the kernels compute in for a storage type: itself, or float for bfloat16.
template <class S>
struct ComputeOf {
  using type = S;
};
template <>
struct ComputeOf<bfloat16> {
  using type = float;
};

struct Shape {
  int64_t steps;   // T
  int64_t batch;   // B
  int64_t hidden;  // H
  int64_t state;   // R: the hidden state's width (proj_size, or H)
  bool reverse;
  const int64_t* live;  // [T] or null
  int max_threads;      // threads the kernel may use (it uses fewer when the work is small)
};

// --- weights packed once and kept across calls --------------------------------------------------

// A store for one weight's packed panels that outlives a call (panel_cache.cpp): the binding keeps one
// per weight tensor and, per call, the stamp of what the weight holds now (a new stamp whenever its
// storage or its in-place version changes). A kernel reads panels packed in the layout it wants under
// the call's stamp, or packs them and leaves them there; panels of an older stamp are dropped then.
// Thread-safe: calls on other threads keep the panels they read until they are done with them.
class PanelCache;

// Where a call's weight may find or leave its panels; cache null: pack for this call only.
struct CachedPanels {
  PanelCache* cache = nullptr;
  int64_t stamp = 0;
};

// What a packing is: every argument of pack_panels (gemm.h) that shapes the panels.
struct PanelLayout {
  int64_t element_bytes, lanes, k_stride, c_stride, depth, gates, units;
};

// A reference to packed panels: `data` stays valid until release_panels(lease).
struct PanelLease {
  void* data = nullptr;
  void* entry = nullptr;
};

// Panels of `layout` under `stamp`, or a lease with null data where there are none.
PanelLease find_panels(PanelCache* cache, int64_t stamp, const PanelLayout& layout);
// Fresh 64-byte-aligned memory for `bytes` of panels, not yet in any cache.
PanelLease new_panels(int64_t bytes);
// Leaves the panels of `lease` (from new_panels, now packed) in the cache under `stamp`, dropping those
// of older stamps (unless a newer stamp's are there already: then it leaves nothing); the lease stays the
// caller's to release.
void keep_panels(PanelCache* cache, int64_t stamp, const PanelLayout& layout, const PanelLease& lease);
void release_panels(const PanelLease& lease);

PanelCache* new_panel_cache();
void delete_panel_cache(PanelCache* cache);
// The bytes of panels the cache holds now.
int64_t panel_cache_bytes(const PanelCache* cache);

// The input projection run inside a layer forward's steps, in place of its xp (null then): each step's tiles start
// from the bias and add x_t W_ih^T for the same unit blocks before h W_hh^T. Only where the GEMMs read the storage
// type itself (not bfloat16 on fp32 panels).
template <class T>
struct StepProjection {
  const T* x = nullptr;     // [T, B, I], or null: the forward reads xp
  const T* w_ih = nullptr;  // [G, I], G the forward's gate width
  const T* bias = nullptr;  // [G] what adds to x W_ih^T (b_ih + b_hh), or null
  int64_t input = 0;        // I
  CachedPanels w_ih_panels{};
};

template <class T>
struct LstmForward {
  Shape shape;
  const T* xp;    // [T, B, 4H]  x W_ih^T + b_ih + b_hh
  const T* h0;    // [B, R]
  const T* c0;    // [B, H]
  const T* w_hh;  // [4H, R]
  const T* w_hr;  // [R, H] or null (then R = H)
  T* y;           // [T, B, R]
  T* h_n;         // [B, R]
  T* c_n;         // [B, H]
  T* gates;       // [T, B, 4H] the activated gates i, f, g, o, or null (nothing kept for a backward)
  T* c_all;       // [T, B, H] the cell state after each step, null with gates
  CachedPanels w_hh_panels{}, w_hr_panels{};
  StepProjection<T> in_steps{};  // the projection inside the steps, in place of xp (null then)
};

template <class T>
struct LstmBackward {
  Shape shape;
  const T* dy;      // [T, B, R]
  const T* dh_n;    // [B, R]
  const T* dc_n;    // [B, H]
  const T* c_prev;  // [T, B, H] the cell state entering each step
  const T* w_hh;
  const T* w_hr;
  const T* gates;
  const T* c_all;
  T* dgates;  // [T, B, 4H] gradient of the gate pre-activations
  T* dh_all;  // [T, B, R] gradient of each step's hidden output before the carry (only with w_hr)
  T* dh0;     // [B, R]
  T* dc0;     // [B, H]
  CachedPanels w_hh_panels{}, w_hr_panels{};
};

template <class T>
struct GruForward {
  Shape shape;       // state == hidden
  const T* xp;       // [T, B, 3H]  x W_ih^T + b_ih + (b_hr, b_hz, 0)
  const T* h0;       // [B, H]
  const T* w_hh;     // [3H, H]
  const T* b_hn;     // [H] or null
  T* y;              // [T, B, H]
  T* h_n;            // [B, H]
  T* saved;          // [T, B, 4H] r, z, n and hn = h W_hn^T + b_hn, or null (nothing kept)
  CachedPanels w_hh_panels{};
  StepProjection<T> in_steps{};  // bias: (b_ir + b_hr, b_iz + b_hz, b_in); b_hn stays apart
};

template <class T>
struct GruBackward {
  Shape shape;
  const T* dy;      // [T, B, H]
  const T* dh_n;    // [B, H]
  const T* h_prev;  // [T, B, H] the hidden state entering each step
  const T* w_hh;
  const T* saved;
  T* dxp;  // [T, B, 3H]
  T* dhn;  // [T, B, H] gradient of hn
  T* dh0;  // [B, H]
  CachedPanels w_hh_panels{};
};

template <class T>
struct RnnForward {
  Shape shape;    // state == hidden
  bool relu;      // act = relu, else tanh
  const T* xp;    // [T, B, H]  x W_ih^T + b_ih + b_hh
  const T* h0;    // [B, H]
  const T* w_hh;  // [H, H]
  T* y;           // [T, B, H]
  T* h_n;         // [B, H]
  CachedPanels w_hh_panels{};
  StepProjection<T> in_steps{};
};

template <class T>
struct RnnBackward {
  Shape shape;
  bool relu;
  const T* dy;    // [T, B, H]
  const T* dh_n;  // [B, H]
  const T* y;     // [T, B, H] the forward's outputs (act' is read off them)
  const T* w_hh;
  T* dxp;  // [T, B, H] gradient of the pre-activations
  T* dh0;  // [B, H]
  CachedPanels w_hh_panels{};
};

// --- the cells: one step, x and h in, the new states out ------------------------------------------

enum class CellMode : int { lstm, gru, rnn_tanh, rnn_relu };

// A weight (gates * units, depth) packed as the cell kernels read it, in the compute type:
// packed[block][k][gate][lane] = w[gate * units + block * lanes + lane][k] (0 past the edge), blocks =
// ceil(units / lanes). `lanes` is the vector width of the instruction set in use; a variant of another
// width refuses the call (returns false): the layout is that width's.
template <class S>
struct CellPack {
  const S* w;
  int64_t gates, units, depth;
  int lanes;
  typename ComputeOf<S>::type* packed;  // [blocks, depth, gates, lanes]
};

template <class S>
struct CellForward {
  CellMode mode;
  int64_t batch, input, hidden;  // B, I, H
  int lanes;                     // the packings' vector width
  int max_threads;
  const S* x;                                      // [B, I]
  const S* h;                                      // [B, H]
  const S* c;                                      // [B, H] (LSTM), else null
  const typename ComputeOf<S>::type* packed_ih;    // W_ih (G, I) packed with depth I
  const typename ComputeOf<S>::type* packed_hh;    // W_hh (G, H) packed with depth H
  const S* b_ih;                                   // [G] or null
  const S* b_hh;                                   // [G] or null
  S* h_new;                                        // [B, H]
  S* c_new;                                        // [B, H] (LSTM), else null
  S* saved;  // [B, 4H] or null: LSTM the activated i, f, g, o; GRU r, z, n, hn (Elman: always null)
};

template <class S>
struct CellBackward {
  CellMode mode;
  int64_t batch, hidden;
  int max_threads;
  const S* dh;     // [B, H] the gradient of h'
  const S* dc;     // [B, H] the gradient of c' (LSTM), or null: zero
  const S* h;      // [B, H] (GRU)
  const S* c;      // [B, H] (LSTM)
  const S* h_new;  // [B, H] (Elman)
  const S* c_new;  // [B, H] (LSTM)
  const S* saved;  // [B, 4H] (LSTM, GRU)
  S* dgx;          // LSTM [B, 4H] the gates' gradient; GRU [B, 3H] d_r, d_z, d_n; Elman [B, H] d pre
  S* dgh;          // GRU [B, 3H] d_r, d_z, d_hn; else null (the same as dgx)
  S* dh_direct;    // GRU [B, H] dh * z; else null
  S* dc_prev;      // LSTM [B, H]; else null
};

// --- a float32 matrix transposed (the operands of the backward's weight-gradient GEMMs) ------------

struct Transpose {
  int64_t rows, columns;  // of the source
  const float* src;       // src(r, c) = src[r * ld + c]
  int64_t ld;
  float* dst;  // [columns, rows]: dst[c * rows + r] = src(r, c)
  int max_threads;
};

// --- a float32 input projection on W packed once (small layers, where oneDNN's fixed cost dominates) -------

struct Linear {
  int64_t rows, depth, columns;
  const float* x;      // [rows, depth]
  const float* w;      // [columns, depth]
  const float* bias;   // [columns] or null
  const float* bias2;  // [columns] or null: added too (an LSTM's b_ih and b_hh, without summing them first)
  float* out;          // [rows, columns] = x w^T + bias + bias2
  CachedPanels w_panels{};
  int max_threads;
};

// Entry points (dispatch.cpp): run on the best instruction set this CPU has, or the one chosen with
// set_instruction_set.
// Each for float, double and bfloat16 storage; and vector_bytes(), the vector width in bytes of the
// instruction set in use (a cell packing's lanes: this over the compute type's size).
#define FASTRNN_CPU_ENTRY_POINTS(T)                \
  void lstm_forward(const LstmForward<T>& args);   \
  void lstm_backward(const LstmBackward<T>& args); \
  void gru_forward(const GruForward<T>& args);     \
  void gru_backward(const GruBackward<T>& args);   \
  void rnn_forward(const RnnForward<T>& args);     \
  void rnn_backward(const RnnBackward<T>& args);   \
  bool cell_pack(const CellPack<T>& args);         \
  bool cell_forward(const CellForward<T>& args);   \
  void cell_backward(const CellBackward<T>& args);
#define FASTRNN_CPU_ALL_ENTRY_POINTS   \
  FASTRNN_CPU_ENTRY_POINTS(float)      \
  FASTRNN_CPU_ENTRY_POINTS(double)     \
  FASTRNN_CPU_ENTRY_POINTS(bfloat16)   \
  void transpose(const Transpose& args); \
  void linear(const Linear& args);       \
  int vector_bytes();

FASTRNN_CPU_ALL_ENTRY_POINTS

// "auto" (the default: the widest variant, and for bfloat16 layer calls avx512_bf16 where it pays, see
// dispatch.cpp), or the variant chosen with set_instruction_set: "avx512_bf16", "avx512", "avx2", "generic".
const char* instruction_set();
// The instruction sets this CPU and this build can run, best first, comma-separated.
const char* supported_instruction_sets();
// Chooses "auto" or one of supported_instruction_sets(); false (and no change) if it is neither.
bool set_instruction_set(const char* name);
// vdpbf16ps multiply-adds per second over fp32 FMA ones on this core, measured at the first call (about a
// millisecond) and the same from then on; 0 where the CPU or build has no AVX512_BF16.
double pair_products_per_fma();

// --- shared by the instruction-set variants (isa_*.cpp) and dispatch.cpp --------------------------

// A barrier for the threads of one parallel region (one per layer-direction call).
struct alignas(64) Barrier {
  int arrived = 0;
  int generation = 0;
};
void barrier_wait(Barrier* barrier, int threads);

// Runs body(context, thread, threads) on up to `threads` threads at once; all of them run concurrently
// (they meet at barriers), and `threads` in the call says how many there really are.
void run_parallel(int threads, void (*body)(void* context, int thread, int threads), void* context);

}  // namespace cpu
}  // namespace fastrnn
