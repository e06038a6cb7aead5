// A SIMT emulator for the subset of CUDA that fastrnn's kernels use, so that the same csrc/cuda/*.cu
// sources compile as host C++ (g++) and run on the CPU, where tests compare them with the reference
// recurrence. It is test support: nvcc never sees this file (csrc/cuda/platform.cuh picks it only when
// FASTRNN_SIMT_EMULATION is defined).
//
// Model: one OS thread per CUDA thread, every block of a grid running at once (so a grid barrier can
// always complete; co-residency is what a GPU has to prove with a cooperative launch). Synchronisation
// is built from mutexes, condition variables and acquire/release atomics, which ThreadSanitizer
// understands; it ignores standalone fences, so the kernels' own barriers must use acquire/release
// atomics too.
//
// What it checks, because a GPU would punish it (each failure is an exception carrying a message,
// raised by the launch after every thread has stopped; nothing hangs):
//   - __syncthreads (and warp collectives: __syncwarp, shuffles, wmma) reached by the threads of one
//     block (warp) at different call sites, or after some of them returned from the kernel;
//   - a barrier or spin wait that does not complete within the timeout ("deadlock: 3 of 4 ...");
//   - wmma loads and stores from misaligned pointers or leading dimensions, or whose footprint leaves
//     the block's dynamic shared memory;
//   - writes past either end of the dynamic shared memory (guard bytes, checked after the kernel; under
//     AddressSanitizer the guards are poisoned, so reads are caught too);
//   - dynamic shared memory and block sizes beyond the modelled device's limits;
//   - asynchronous copies (cp.async) misaligned, two in flight to one address, or still in flight at a
//     __syncthreads (unless issued as a prefetch) or at the kernel's end: the kernels wait for their own
//     copies before the barrier that publishes them. A copy lands only
//     at its thread's wait; until then its destination holds the poison bytes (and, for copies of 8 or 16
//     bytes, is poisoned under AddressSanitizer), so a read that overtakes the wait is a NaN, or a report.
// Dynamic shared memory starts filled with 0xFF bytes (NaN in every floating-point type), so a kernel
// that reads shared memory it never wrote produces NaN rather than a plausible number.
//
// wmma fragments hold the whole tile in every lane, the emulator's own layout, as the API allows:
// kernels must treat fragment elements only uniformly (fill, convert, scale), never by lane position.
#pragma once

#if defined(__CUDACC__)
#error "simt.h emulates CUDA on the host; nvcc builds use the real CUDA headers (see csrc/cuda/platform.cuh)"
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// The CUDA toolkit's own headers compile as host code: the 16-bit float types and their conversions,
// dim3/uint3, and libcu++'s cuda::atomic_ref (with the toolkit's include/cccl on the include path).
#include <cuda/atomic>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define FASTRNN_SIMT_POISON(address, bytes) ASAN_POISON_MEMORY_REGION(address, bytes)
#define FASTRNN_SIMT_UNPOISON(address, bytes) ASAN_UNPOISON_MEMORY_REGION(address, bytes)
#else
#define FASTRNN_SIMT_POISON(address, bytes) ((void)(address), (void)(bytes))
#define FASTRNN_SIMT_UNPOISON(address, bytes) ((void)(address), (void)(bytes))
#endif

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

namespace fastrnn_simt {

constexpr int kWarpSize = 32;
constexpr size_t kSharedAlignment = 128;  // what the kernels assume of dynamic shared memory's base
constexpr size_t kGuardBytes = 256;       // on each side of a block's dynamic shared memory
constexpr unsigned char kGuardByte = 0xA5;
constexpr unsigned char kPoisonByte = 0xFF;

// A check failed inside an emulated kernel; what() says which and where.
class KernelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Thrown inside the other threads of a grid once one has failed, to unwind them; never escapes a launch.
struct Aborted {};

// --- the modelled device ----------------------------------------------------------------------------

// Limits the launchers plan against and the emulator enforces; by default those of an H100 SXM.
struct DeviceModel {
  int multiprocessors = 132;
  size_t shared_per_block_optin = 227 * 1024;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
  size_t shared_per_multiprocessor = 228 * 1024;
  size_t shared_reserved_per_block = 1024;  // what the runtime keeps per resident block
  int max_threads_per_block = 1024;
  int max_threads_per_multiprocessor = 2048;
  int max_blocks_per_multiprocessor = 32;
};

inline DeviceModel& device_model() {
  static DeviceModel model;
  return model;
}

// Resident blocks per multiprocessor for a block size and dynamic shared memory (registers are not
// modelled: ptxas reports them, and the test that reads its report keeps them within bounds).
inline int blocks_per_multiprocessor(int threads, size_t shared_bytes) {
  const DeviceModel& d = device_model();
  if (threads <= 0 || threads > d.max_threads_per_block || shared_bytes > d.shared_per_block_optin) return 0;
  int blocks = std::min(d.max_blocks_per_multiprocessor, d.max_threads_per_multiprocessor / threads);
  const size_t per_block = shared_bytes + d.shared_reserved_per_block;
  return std::min<int>(blocks, static_cast<int>(d.shared_per_multiprocessor / per_block));
}

// How long a barrier or spin wait may take before it is reported as a deadlock.
inline std::atomic<double>& timeout_seconds() {
  static std::atomic<double> seconds{[] {
    const char* text = std::getenv("FASTRNN_SIMT_TIMEOUT_S");
    const double value = text ? std::atof(text) : 0.0;
    return value > 0 ? value : 120.0;
  }()};
  return seconds;
}

inline void set_timeout_seconds(double seconds) { timeout_seconds() = seconds; }

// --- grids, blocks, threads -------------------------------------------------------------------------

struct Grid;
struct ThreadState;

inline std::string describe_site(const char* file, int line) {
  const char* slash = file ? std::strrchr(file, '/') : nullptr;
  return std::string(slash ? slash + 1 : (file ? file : "?")) + ":" + std::to_string(line);
}

inline bool same_site(const char* file_a, int line_a, const char* file_b, int line_b) {
  return line_a == line_b && (file_a == file_b || std::strcmp(file_a, file_b) == 0);
}

// The threads of a block (or of a warp) meeting at one call site. Every wait polls, so a failure
// elsewhere in the grid or a wait past the timeout ends it instead of hanging.
class Barrier {
 public:
  void init(int expected, std::string name) {
    expected_ = expected;
    name_ = std::move(name);
  }

  void arrive_and_wait(Grid& grid, const ThreadState& thread, const char* what, const char* file, int line);
  void thread_exited(Grid& grid, const ThreadState& thread);

 private:
  std::mutex mutex_;
  std::condition_variable all_arrived_;
  int expected_ = 0;
  int arrived_ = 0;
  int exited_ = 0;
  uint64_t generation_ = 0;
  const char* what_ = nullptr;
  const char* file_ = nullptr;
  int line_ = 0;
  std::string name_;
};

struct Block {
  uint3 index{};
  int threads = 0;
  unsigned char* allocation = nullptr;  // guard | shared memory | guard
  size_t allocation_bytes = 0;
  unsigned char* shared = nullptr;
  size_t shared_bytes = 0;
  Barrier barrier;
  std::vector<std::unique_ptr<Barrier>> warp_barriers;
  std::vector<std::array<unsigned char, 16>> exchange;  // one slot per thread, for shuffles and ballots

  Block() = default;
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  ~Block() {
    if (allocation) {
      FASTRNN_SIMT_UNPOISON(allocation, allocation_bytes);
      std::free(allocation);
    }
  }
};

struct Grid {
  dim3 grid_dim;
  dim3 block_dim;
  std::vector<std::unique_ptr<Block>> blocks;
  std::atomic<bool> aborted{false};
  std::mutex error_mutex;
  std::string error;
  std::chrono::steady_clock::duration timeout{};

  void fail(const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (error.empty()) error = message;
    }
    aborted.store(true, std::memory_order_release);
  }
};

// An asynchronous copy (cp.async) issued by a thread and not yet waited for.
struct CopyInFlight {
  void* destination;
  const void* source;
  size_t bytes;
  const char* file;
  int line;
  bool prefetch;  // issued to fly across block barriers (a prefetch), landing at a later wait
};

struct ThreadState {
  Grid* grid = nullptr;
  Block* block = nullptr;
  uint3 thread_idx{};
  int linear = 0;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
  int lane = 0;
  int warp = 0;
  std::vector<CopyInFlight> copies;  // landed by the thread's next wait_async_copies
};

inline thread_local ThreadState* current_thread = nullptr;

inline ThreadState& self() {
  if (current_thread == nullptr) throw std::logic_error("fastrnn_simt: a device function ran outside an emulated kernel");
  return *current_thread;
}

inline std::string describe_thread(const ThreadState& t) {
  return "thread (" + std::to_string(t.thread_idx.x) + "," + std::to_string(t.thread_idx.y) + "," +
         std::to_string(t.thread_idx.z) + ") of block (" + std::to_string(t.block->index.x) + "," +
         std::to_string(t.block->index.y) + "," + std::to_string(t.block->index.z) + ")";
}

[[noreturn]] inline void fail_here(const std::string& message) {
  ThreadState& t = self();
  t.grid->fail(describe_thread(t) + ": " + message);
  throw Aborted{};
}

inline void check_not_aborted() {
  if (self().grid->aborted.load(std::memory_order_acquire)) throw Aborted{};
}

inline void Barrier::arrive_and_wait(Grid& grid, const ThreadState& thread, const char* what, const char* file,
                                     int line) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (exited_ > 0) {
    grid.fail(describe_thread(thread) + ": reached " + what + " at " + describe_site(file, line) + " after " +
              std::to_string(exited_) + " thread(s) of its " + name_ +
              " returned from the kernel: every thread must reach it (divergent barrier)");
    throw Aborted{};
  }
  if (arrived_ == 0) {
    what_ = what;
    file_ = file;
    line_ = line;
  } else if (!same_site(file_, line_, file, line)) {
    grid.fail(describe_thread(thread) + ": reached " + what + " at " + describe_site(file, line) + " while " +
              std::to_string(arrived_) + " thread(s) of its " + name_ + " wait at " + what_ + " at " +
              describe_site(file_, line_) + " (divergent barrier)");
    throw Aborted{};
  }
  const uint64_t generation = generation_;
  if (++arrived_ == expected_) {
    arrived_ = 0;
    ++generation_;
    all_arrived_.notify_all();
    return;
  }
  // Half again the spin waits' timeout: a block whose missing thread spins at a grid barrier is reported
  // by that spin (which blocks arrived), the more telling message, even when that thread began spinning
  // after its block's other threads reached this barrier (a late-scheduled thread, on a loaded machine).
  const auto deadline = std::chrono::steady_clock::now() + grid.timeout * 3 / 2;
  while (generation_ == generation) {
    all_arrived_.wait_for(lock, std::chrono::milliseconds(20));
    if (generation_ != generation) break;
    if (grid.aborted.load(std::memory_order_acquire)) throw Aborted{};
    if (std::chrono::steady_clock::now() > deadline) {
      grid.fail("deadlock: " + std::to_string(arrived_) + " of " + std::to_string(expected_) + " threads of the " +
                name_ + " reached " + what + " at " + describe_site(file, line) + " in block (" +
                std::to_string(thread.block->index.x) + "," + std::to_string(thread.block->index.y) + "," +
                std::to_string(thread.block->index.z) + "); the others never came");
      throw Aborted{};
    }
  }
}

inline void Barrier::thread_exited(Grid& grid, const ThreadState& thread) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++exited_;
  if (arrived_ > 0)
    grid.fail(describe_thread(thread) + ": returned from the kernel while " + std::to_string(arrived_) +
              " thread(s) of its " + name_ + " wait at " + what_ + " at " + describe_site(file_, line_) +
              " (divergent barrier)");
}

// --- shared memory ----------------------------------------------------------------------------------

inline unsigned char* dynamic_shared_memory() { return self().block->shared; }

// A wmma access of `bytes` starting at `address` by the calling thread: if it touches the block's
// shared-memory allocation (guards included) it must lie inside the dynamic shared memory.
inline void check_shared_footprint(const void* address, size_t bytes, const char* what, const char* file, int line) {
  const Block& b = *self().block;
  const auto* p = static_cast<const unsigned char*>(address);
  const unsigned char* begin = b.allocation;
  const unsigned char* end = b.allocation + b.allocation_bytes;
  if (p + bytes <= begin || p >= end) return;  // global memory
  if (p < b.shared || p + bytes > b.shared + b.shared_bytes)
    fail_here(std::string(what) + " at " + describe_site(file, line) + " touches bytes [" +
              std::to_string(p - b.shared) + ", " + std::to_string(p - b.shared + static_cast<std::ptrdiff_t>(bytes)) +
              ") of a dynamic shared memory of " + std::to_string(b.shared_bytes) + " bytes (out of range)");
}

// --- launching --------------------------------------------------------------------------------------

struct LaunchConfig {
  dim3 grid{1, 1, 1};
  dim3 block{1, 1, 1};
  size_t shared_bytes = 0;
};

namespace detail {

inline void allocate_shared(Block& block, size_t bytes) {
  block.shared_bytes = bytes;
  block.allocation_bytes = kGuardBytes + ((bytes + kSharedAlignment - 1) / kSharedAlignment) * kSharedAlignment + kGuardBytes;
  block.allocation = static_cast<unsigned char*>(std::aligned_alloc(kSharedAlignment, block.allocation_bytes));
  if (!block.allocation) throw std::bad_alloc();
  std::memset(block.allocation, kGuardByte, block.allocation_bytes);
  block.shared = block.allocation + kGuardBytes;
  std::memset(block.shared, kPoisonByte, bytes);
  FASTRNN_SIMT_POISON(block.allocation, kGuardBytes);
  FASTRNN_SIMT_POISON(block.shared + bytes, block.allocation_bytes - kGuardBytes - bytes);
}

// Bytes of the guards (and of the padding up to the next alignment) that no longer hold the guard byte.
inline std::string check_guards(const Block& block) {
  FASTRNN_SIMT_UNPOISON(block.allocation, block.allocation_bytes);
  size_t below = 0, above = 0;
  for (size_t i = 0; i < kGuardBytes; ++i) below += block.allocation[i] != kGuardByte;
  for (size_t i = kGuardBytes + block.shared_bytes; i < block.allocation_bytes; ++i) above += block.allocation[i] != kGuardByte;
  if (below == 0 && above == 0) return {};
  return "block (" + std::to_string(block.index.x) + "," + std::to_string(block.index.y) + "," +
         std::to_string(block.index.z) + ") wrote " + std::to_string(below) + " byte(s) before and " +
         std::to_string(above) + " byte(s) past its " + std::to_string(block.shared_bytes) +
         " bytes of dynamic shared memory (out of range)";
}

}  // namespace detail

// Runs kernel(args...) on a grid of config.grid blocks of config.block threads, all at once; returns
// when every thread has returned. Throws KernelError with the first failure's message.
template <class... Params, class... Args>
void launch(const LaunchConfig& config, void (*kernel)(Params...), Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "fastrnn_simt::launch: wrong number of kernel arguments");
  const DeviceModel& device = device_model();
  const int threads_per_block = static_cast<int>(config.block.x * config.block.y * config.block.z);
  const int blocks = static_cast<int>(config.grid.x * config.grid.y * config.grid.z);
  if (threads_per_block <= 0 || threads_per_block > device.max_threads_per_block)
    throw KernelError("launch: " + std::to_string(threads_per_block) + " threads per block (the limit is " +
                      std::to_string(device.max_threads_per_block) + ")");
  if (blocks <= 0) throw KernelError("launch: an empty grid");
  if (config.shared_bytes > device.shared_per_block_optin)
    throw KernelError("launch: " + std::to_string(config.shared_bytes) + " bytes of dynamic shared memory per block (the limit is " +
                      std::to_string(device.shared_per_block_optin) + ")");

  Grid grid;
  grid.grid_dim = config.grid;
  grid.block_dim = config.block;
  grid.timeout = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(timeout_seconds().load()));
  const int warps = (threads_per_block + kWarpSize - 1) / kWarpSize;
  for (int index = 0; index < blocks; ++index) {
    auto block = std::make_unique<Block>();
    block->index = uint3{index % config.grid.x, (index / config.grid.x) % config.grid.y,
                         index / (config.grid.x * config.grid.y)};
    block->threads = threads_per_block;
    block->barrier.init(threads_per_block, "block");
    for (int w = 0; w < warps; ++w) {
      block->warp_barriers.push_back(std::make_unique<Barrier>());
      block->warp_barriers.back()->init(std::min(kWarpSize, threads_per_block - w * kWarpSize),
                                        "warp " + std::to_string(w));
    }
    block->exchange.resize(threads_per_block);
    detail::allocate_shared(*block, config.shared_bytes);
    grid.blocks.push_back(std::move(block));
  }

  const std::tuple<std::decay_t<Params>...> arguments(std::forward<Args>(args)...);
  auto body = [&grid, &arguments, kernel](Block* block, int linear) {
    ThreadState state;
    state.grid = &grid;
    state.block = block;
    state.thread_idx = uint3{linear % grid.block_dim.x, (linear / grid.block_dim.x) % grid.block_dim.y,
                             linear / (grid.block_dim.x * grid.block_dim.y)};
    state.linear = linear;
    state.lane = linear % kWarpSize;
    state.warp = linear / kWarpSize;
    current_thread = &state;
    try {
      std::apply(kernel, arguments);
      if (!state.copies.empty())
        fail_here("returned from the kernel with " + std::to_string(state.copies.size()) +
                  " asynchronous copies in flight (the first issued at " +
                  describe_site(state.copies[0].file, state.copies[0].line) + ")");
      block->barrier.thread_exited(grid, state);
      block->warp_barriers[state.warp]->thread_exited(grid, state);
    } catch (const Aborted&) {
    } catch (const std::exception& error) {
      grid.fail(describe_thread(state) + ": " + error.what());
    } catch (...) {
      grid.fail(describe_thread(state) + ": an unknown exception");
    }
    current_thread = nullptr;
  };

  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(blocks) * threads_per_block);
  for (auto& block : grid.blocks) {
    for (int linear = 0; linear < threads_per_block && !grid.aborted.load(); ++linear) {
      try {
        threads.emplace_back(body, block.get(), linear);
      } catch (const std::system_error& error) {
        grid.fail("launch: could not start thread " + std::to_string(threads.size()) + " of " +
                  std::to_string(blocks * threads_per_block) + ": " + error.what());
      }
    }
  }
  for (auto& thread : threads) thread.join();
  for (auto& block : grid.blocks) {
    const std::string overflow = detail::check_guards(*block);
    if (!overflow.empty()) grid.fail(overflow);
  }
  if (!grid.error.empty()) throw KernelError(grid.error);
}

// --- waiting in kernels -----------------------------------------------------------------------------

// A polite spin wait for a condition another block will make true (csrc/cuda/grid_barrier.cuh). Here a
// wait past the timeout is reported as a deadlock instead of hanging.
class SpinWait {
 public:
  SpinWait() : start_(std::chrono::steady_clock::now()) {}

  // `arrived` of `expected` participants have arrived so far (for the message).
  void pause(const char* what, unsigned arrived, unsigned expected) {
    ThreadState& t = self();
    if (t.grid->aborted.load(std::memory_order_acquire)) throw Aborted{};
    const auto waited = std::chrono::steady_clock::now() - start_;
    if (waited > t.grid->timeout)
      fail_here("deadlock: " + std::string(what) + ": " + std::to_string(arrived) + " of " + std::to_string(expected) +
                " blocks arrived, the others never came (waited " +
                std::to_string(std::chrono::duration_cast<std::chrono::seconds>(waited).count()) + " s)");
    if (++spins_ < 16) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(std::min(1000, 10 * (spins_ - 15))));
    }
  }

 private:
  std::chrono::steady_clock::time_point start_;
  int spins_ = 0;
};

// --- collectives within a warp ----------------------------------------------------------------------

inline void warp_collective(const char* what, const char* file, int line) {
  ThreadState& t = self();
  t.block->warp_barriers[t.warp]->arrive_and_wait(*t.grid, t, what, file, line);
}

template <class T>
T exchange_in_warp(T value, int source_lane, const char* what, const char* file, int line) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16, "warp exchange of an unsupported type");
  ThreadState& t = self();
  std::memcpy(t.block->exchange[t.linear].data(), &value, sizeof(T));
  warp_collective(what, file, line);
  const int source = t.warp * kWarpSize + source_lane;
  T result = value;
  if (source_lane >= 0 && source < t.block->threads) std::memcpy(&result, t.block->exchange[source].data(), sizeof(T));
  warp_collective(what, file, line);  // nobody overwrites its slot before every lane has read
  return result;
}

inline int width_base(int lane, int width) { return (lane / width) * width; }

}  // namespace fastrnn_simt

// --- the CUDA names kernels use -----------------------------------------------------------------------

#define threadIdx (::fastrnn_simt::self().thread_idx)
#define blockIdx (::fastrnn_simt::self().block->index)
#define blockDim (::fastrnn_simt::self().grid->block_dim)
#define gridDim (::fastrnn_simt::self().grid->grid_dim)
#define warpSize 32

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fastrnn_simt::ThreadState& t = ::fastrnn_simt::self();
  for (const ::fastrnn_simt::CopyInFlight& copy : t.copies)
    if (!copy.prefetch)
      ::fastrnn_simt::fail_here("reached __syncthreads at " + ::fastrnn_simt::describe_site(file, line) + " with " +
                                std::to_string(t.copies.size()) + " asynchronous copies in flight (the first issued at " +
                                ::fastrnn_simt::describe_site(copy.file, copy.line) +
                                "): wait for them (wait_async_copies) before the barrier that publishes them");
  t.block->barrier.arrive_and_wait(*t.grid, t, "__syncthreads", file, line);
}

namespace fastrnn_simt {

// cp.async of 4, 8 or 16 bytes from global to shared memory: both addresses aligned to the size, the
// destination inside the block's dynamic shared memory. It lands at the thread's next wait.
inline void copy_async(void* destination, const void* source, size_t bytes, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE(), bool prefetch = false) {
  if (bytes != 4 && bytes != 8 && bytes != 16)
    fail_here("asynchronous copy of " + std::to_string(bytes) + " bytes at " + describe_site(file, line) +
              " (cp.async copies 4, 8 or 16)");
  if (reinterpret_cast<uintptr_t>(destination) % bytes != 0 || reinterpret_cast<uintptr_t>(source) % bytes != 0)
    fail_here("asynchronous copy of " + std::to_string(bytes) + " bytes at " + describe_site(file, line) +
              ": source or destination not " + std::to_string(bytes) + "-byte aligned (misaligned address)");
  const Block& b = *self().block;
  const auto* d = static_cast<const unsigned char*>(destination);
  if (d < b.shared || d + bytes > b.shared + b.shared_bytes)
    fail_here("asynchronous copy at " + describe_site(file, line) + " to bytes [" + std::to_string(d - b.shared) + ", " +
              std::to_string(d - b.shared + static_cast<std::ptrdiff_t>(bytes)) + ") of a dynamic shared memory of " +
              std::to_string(b.shared_bytes) + " bytes (out of range)");
  std::memset(destination, kPoisonByte, bytes);
  // AddressSanitizer's shadow describes 8-byte granules, and each emulated thread is an OS thread: two
  // 4-byte copies into one granule would update its shadow byte concurrently (a race that made ASan report
  // a correct kernel now and then). Such copies keep the poison bytes alone (a read before the wait is NaN).
  if (bytes % 8 == 0) FASTRNN_SIMT_POISON(destination, bytes);
  for (const CopyInFlight& copy : self().copies)
    if (copy.destination == destination)
      fail_here("asynchronous copy at " + describe_site(file, line) + " to a destination whose copy issued at " +
                describe_site(copy.file, copy.line) + " has not landed (two copies in flight to one address)");
  self().copies.push_back({destination, source, bytes, file, line, prefetch});
}

// cp.async.wait_all: every copy the calling thread issued has landed.
inline void wait_async_copies() {
  ThreadState& t = self();
  for (const CopyInFlight& copy : t.copies) {
    if (copy.bytes % 8 == 0) FASTRNN_SIMT_UNPOISON(copy.destination, copy.bytes);
    std::memcpy(copy.destination, copy.source, copy.bytes);
  }
  t.copies.clear();
}

}  // namespace fastrnn_simt

inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  if (mask != 0xffffffffu) ::fastrnn_simt::fail_here("__syncwarp with a partial mask is not emulated");
  ::fastrnn_simt::warp_collective("__syncwarp", file, line);
}

template <class T>
T __shfl_sync(unsigned mask, T value, int source, int width = warpSize, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  if (mask != 0xffffffffu) ::fastrnn_simt::fail_here("shuffles with a partial mask are not emulated");
  const int lane = ::fastrnn_simt::self().lane;
  return ::fastrnn_simt::exchange_in_warp(value, ::fastrnn_simt::width_base(lane, width) + source % width, "__shfl_sync",
                                          file, line);
}

template <class T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = warpSize, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  if (mask != 0xffffffffu) ::fastrnn_simt::fail_here("shuffles with a partial mask are not emulated");
  const int lane = ::fastrnn_simt::self().lane;
  const int target = lane ^ lane_mask;
  const int source = target / width == lane / width ? target : lane;
  return ::fastrnn_simt::exchange_in_warp(value, source, "__shfl_xor_sync", file, line);
}

template <class T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize, const char* file = __builtin_FILE(),
                   int line = __builtin_LINE()) {
  if (mask != 0xffffffffu) ::fastrnn_simt::fail_here("shuffles with a partial mask are not emulated");
  const int lane = ::fastrnn_simt::self().lane;
  const int target = lane + static_cast<int>(delta);
  const int source = target / width == lane / width ? target : lane;
  return ::fastrnn_simt::exchange_in_warp(value, source, "__shfl_down_sync", file, line);
}

inline unsigned __ballot_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  if (mask != 0xffffffffu) ::fastrnn_simt::fail_here("ballots with a partial mask are not emulated");
  ::fastrnn_simt::ThreadState& t = ::fastrnn_simt::self();
  unsigned result = 0;
  for (int lane = 0; lane < ::fastrnn_simt::kWarpSize; ++lane) {
    const int bit = ::fastrnn_simt::exchange_in_warp(predicate ? 1 : 0, lane, "__ballot_sync", file, line);
    if (bit && t.warp * ::fastrnn_simt::kWarpSize + lane < t.block->threads) result |= 1u << lane;
  }
  return result;
}

#if defined(__SANITIZE_THREAD__)
// ThreadSanitizer does not model fences (g++ refuses them under -fsanitize=thread): what it checks is that
// the kernels order their memory with acquire/release atomics, which is all they may rely on.
inline void __threadfence() {}
inline void __threadfence_block() {}
#else
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
#endif

inline void __nanosleep(unsigned nanoseconds) {
  ::fastrnn_simt::check_not_aborted();
  std::this_thread::sleep_for(std::chrono::nanoseconds(nanoseconds));
}

// CUDA's atomics are relaxed read-modify-writes.
template <class T>
T atomicAdd(T* address, T value) {
  if constexpr (std::is_integral<T>::value) {
    return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
  } else {
    T expected = __atomic_load_n(address, __ATOMIC_RELAXED);
    T desired = expected + value;
    while (!__atomic_compare_exchange(address, &expected, &desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
      desired = expected + value;
    return expected;
  }
}

template <class T>
T atomicExch(T* address, T value) {
  return __atomic_exchange_n(address, value, __ATOMIC_RELAXED);
}

template <class T>
T atomicCAS(T* address, T compare, T value) {
  __atomic_compare_exchange_n(address, &compare, value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;
}

// --- nvcuda::wmma as warp-collective operations -----------------------------------------------------

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
template <class T>
struct storage {
  using type = T;
};
template <>
struct storage<precision::tf32> {
  using type = float;
};

template <class Use, int M, int N, int K>
struct shape;
template <int M, int N, int K>
struct shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

inline float to_float(float x) { return x; }
inline float to_float(__half x) { return __half2float(x); }
inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// The checks every wmma memory access makes: 256-bit aligned pointer, leading dimension a multiple of
// 16 bytes, footprint inside shared memory when it is in shared memory.
template <class T>
void check_access(const T* pointer, unsigned ldm, int rows, int cols, bool row_major, const char* what,
                  const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(pointer) % 32 != 0)
    ::fastrnn_simt::fail_here(std::string(what) + " at " + ::fastrnn_simt::describe_site(file, line) +
                              ": pointer not 256-bit aligned (misaligned)");
  if ((ldm * sizeof(T)) % 16 != 0)
    ::fastrnn_simt::fail_here(std::string(what) + " at " + ::fastrnn_simt::describe_site(file, line) + ": ldm " +
                              std::to_string(ldm) + " is not a multiple of 16 bytes (misaligned)");
  const int major = row_major ? rows : cols, minor = row_major ? cols : rows;
  if (static_cast<int>(ldm) < minor)
    ::fastrnn_simt::fail_here(std::string(what) + " at " + ::fastrnn_simt::describe_site(file, line) + ": ldm " +
                              std::to_string(ldm) + " is shorter than a row of the tile");
  const size_t footprint = (static_cast<size_t>(major - 1) * ldm + minor) * sizeof(T);
  ::fastrnn_simt::check_shared_footprint(pointer, footprint, what, file, line);
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
 public:
  using element_type = typename detail::storage<T>::type;
  static constexpr int rows = detail::shape<Use, M, N, K>::rows;
  static constexpr int cols = detail::shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  element_type x[num_elements];  // the whole tile, row-major, in every lane
};

template <class Use, int M, int N, int K, class T, class Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, typename fragment<Use, M, N, K, T, Layout>::element_type v) {
  for (auto& e : f.x) e = v;
}

template <class Use, int M, int N, int K, class T, class Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const typename detail::storage<T>::type* pointer,
                      unsigned ldm, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(!std::is_same<Use, accumulator>::value, "accumulator loads take a layout_t");
  constexpr bool row = std::is_same<Layout, row_major>::value;
  using F = fragment<Use, M, N, K, T, Layout>;
  ::fastrnn_simt::warp_collective("wmma::load_matrix_sync", file, line);
  detail::check_access(pointer, ldm, F::rows, F::cols, row, "wmma::load_matrix_sync", file, line);
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = row ? pointer[r * ldm + c] : pointer[c * ldm + r];
}

template <int M, int N, int K, class T>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* pointer, unsigned ldm, layout_t layout,
                      const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using F = fragment<accumulator, M, N, K, T>;
  const bool row = layout == mem_row_major;
  ::fastrnn_simt::warp_collective("wmma::load_matrix_sync", file, line);
  detail::check_access(pointer, ldm, F::rows, F::cols, row, "wmma::load_matrix_sync", file, line);
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = row ? pointer[r * ldm + c] : pointer[c * ldm + r];
}

// Each lane writes its own share of the tile (every lane holds all of it), so no two threads write the
// same element.
template <int M, int N, int K, class T>
void store_matrix_sync(T* pointer, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout,
                       const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using F = fragment<accumulator, M, N, K, T>;
  const bool row = layout == mem_row_major;
  ::fastrnn_simt::warp_collective("wmma::store_matrix_sync", file, line);
  detail::check_access(pointer, ldm, F::rows, F::cols, row, "wmma::store_matrix_sync", file, line);
  const int lane = ::fastrnn_simt::self().lane;
  for (int e = lane; e < F::num_elements; e += ::fastrnn_simt::kWarpSize) {
    const int r = e / F::cols, c = e % F::cols;
    (row ? pointer[r * ldm + c] : pointer[c * ldm + r]) = f.x[e];
  }
}

// What the tensor cores do with a TF32 operand: keep 10 of float's 23 mantissa bits, rounding to nearest
// with ties away from zero (cvt.rna.tf32.f32).
inline float __float_to_tf32(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;
  std::memcpy(&value, &bits, sizeof(bits));
  return value;
}

// d = a b + c in float, each product exact and summed in k order.
template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC>
void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c,
              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(std::is_same<TA, TB>::value, "wmma::mma_sync: a and b must have the same element type");
  ::fastrnn_simt::warp_collective("wmma::mma_sync", file, line);
  constexpr bool tf32 = std::is_same<TA, precision::tf32>::value;
  float result[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float sum = c.x[i * N + j];
      for (int k = 0; k < K; ++k) {
        float x = detail::to_float(a.x[i * K + k]), y = detail::to_float(b.x[k * N + j]);
        if (tf32) {
          x = __float_to_tf32(x);
          y = __float_to_tf32(y);
        }
        sum = std::fma(x, y, sum);
      }
      result[i * N + j] = sum;
    }
  std::copy(result, result + M * N, d.x);
}

}  // namespace wmma
}  // namespace nvcuda
