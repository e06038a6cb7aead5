// Packed weight panels kept across calls (api.h, PanelCache): a layer's W_hh is packed once per weight
// version instead of on every call, which at small T and B costs more than the steps themselves.
// Built for the baseline instruction set like dispatch.cpp: the kernels of every variant reach it only
// through the functions below.
#include <atomic>
#include <cstddef>
#include <mutex>
#include <new>
#include <vector>

#include "api.h"

namespace fastrnn {
namespace cpu {

namespace {

// One packing. Counted references: the cache's own, and one per lease a running call holds.
struct Entry {
  PanelLayout layout;
  int64_t stamp;
  int64_t bytes;
  void* data;
  std::atomic<int> references;
};

bool same_layout(const PanelLayout& a, const PanelLayout& b) {
  return a.element_bytes == b.element_bytes && a.lanes == b.lanes && a.k_stride == b.k_stride &&
         a.c_stride == b.c_stride && a.depth == b.depth && a.gates == b.gates && a.units == b.units;
}

void drop(Entry* entry) {
  if (entry->references.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    ::operator delete(entry->data, std::align_val_t(64));
    delete entry;
  }
}

}  // namespace

class PanelCache {
 public:
  ~PanelCache() {
    for (Entry* entry : entries_) drop(entry);
  }

  PanelLease find(int64_t stamp, const PanelLayout& layout) {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (Entry* entry : entries_) {
      if (entry->stamp == stamp && same_layout(entry->layout, layout)) {
        entry->references.fetch_add(1, std::memory_order_relaxed);
        return {entry->data, entry};
      }
    }
    return {};
  }

  void keep(int64_t stamp, const PanelLayout& layout, Entry* fresh) {
    fresh->stamp = stamp;
    fresh->layout = layout;
    std::vector<Entry*> dropped;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      // A call on another thread stamped a newer weight meanwhile: this packing stays the caller's alone.
      for (const Entry* entry : entries_)
        if (entry->stamp > stamp) return;
      std::vector<Entry*> kept;
      for (Entry* entry : entries_) {
        // An older stamp is an older weight; the same layout was packed twice at once.
        if (entry->stamp < stamp || same_layout(entry->layout, layout)) dropped.push_back(entry);
        else kept.push_back(entry);
      }
      fresh->references.fetch_add(1, std::memory_order_relaxed);  // the cache's own reference
      kept.push_back(fresh);
      entries_.swap(kept);
    }
    for (Entry* entry : dropped) drop(entry);
  }

  int64_t bytes() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    int64_t total = 0;
    for (const Entry* entry : entries_) total += entry->bytes;
    return total;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<Entry*> entries_;
};

PanelLease find_panels(PanelCache* cache, int64_t stamp, const PanelLayout& layout) {
  return cache ? cache->find(stamp, layout) : PanelLease{};
}

PanelLease new_panels(int64_t bytes) {
  const int64_t size = bytes > 0 ? bytes : 1;
  Entry* entry = new Entry{{}, 0, size, ::operator new(static_cast<std::size_t>(size), std::align_val_t(64)), {1}};
  return {entry->data, entry};
}

void keep_panels(PanelCache* cache, int64_t stamp, const PanelLayout& layout, const PanelLease& lease) {
  if (cache && lease.entry) cache->keep(stamp, layout, static_cast<Entry*>(lease.entry));
}

void release_panels(const PanelLease& lease) {
  if (lease.entry) drop(static_cast<Entry*>(lease.entry));
}

PanelCache* new_panel_cache() { return new PanelCache(); }
void delete_panel_cache(PanelCache* cache) { delete cache; }
int64_t panel_cache_bytes(const PanelCache* cache) { return cache ? cache->bytes() : 0; }

}  // namespace cpu
}  // namespace fastrnn
