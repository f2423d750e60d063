// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file workspace.hpp
/// attn::Workspace: scratch memory the kernel keeps between calls, so that a loop of calls (a
/// decoder's steps) allocates nothing once the first call has sized it.

#include <array>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>

#include "types.hpp"

namespace attn {

/// Scratch memory for scaled_dot_product_attention and the multi-head functors, reused across
/// calls: give one to AttentionOptions::workspace (or MultiHeadOptions::workspace) and, after the
/// first call of a shape, later calls of that shape or smaller perform no heap allocation, with
/// serial_executor, with thread_executor (its pool's threads start when the executor is created,
/// and a call allocates nothing), or with an executor of the user's own that does not allocate
/// per call. Under OpenMP, default_executor leaves that to the OpenMP runtime. With threads, "the
/// first call" is the first in which each worker took an item: which workers get items depends
/// on timing, so a later call may still size the slot of a worker that got none before (at most
/// once per slot).
///
/// It holds two kinds of memory:
/// - the kernel's: each worker of a call (each call of the kernel's work function that takes an
///   item, see parallel.hpp) takes its own slot; there are max_slots of them, and workers beyond
///   that use memory of their own; plus one buffer shared by the call (a decode step's partial
///   results);
/// - the functors': one buffer per Buffer key, for the matrices a SelfAttention or CrossAttention
///   call needs around the kernel, kept apart from the kernel's slots, which the kernel writes
///   while it reads those matrices.
///
/// One Workspace serves one call at a time: threads that call concurrently need one each.
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp workspace
class Workspace {
 public:
  /// Slots for the workers of one call (at most one per thread the executor runs at once).
  static constexpr Index max_slots = 64;

  /// The functors' matrices, one buffer each.
  enum class Buffer {
    /// The inputs projected to queries (and keys and values): n × (E + 2·kv_dim) at most.
    projections,
    /// The attention result of all heads before the output projection: n × E.
    heads,
  };
  /// Number of Buffer keys.
  static constexpr Index buffer_count = 2;

  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  /// Bytes held over all slots and buffers.
  std::size_t bytes() const {
    std::size_t total = m_shared.size;
    for (const Memory& slot : m_slots)
      total += slot.size;
    for (const Memory& buffer : m_buffers)
      total += buffer.size;
    return total;
  }

  /// Frees everything.
  void release() {
    for (Memory& slot : m_slots)
      slot = Memory();
    for (Memory& buffer : m_buffers)
      buffer = Memory();
    m_shared = Memory();
  }

  /// Zeroed memory of at least `bytes` for slot `slot` (< max_slots), kept for later calls.
  /// Internal: used by the kernel.
  void* slot(Index slot, std::size_t bytes) {
    return m_slots[static_cast<std::size_t>(slot)].reserve(bytes);
  }
  /// Zeroed memory of at least `bytes` shared by the whole call (the decode's partial results).
  /// Internal: used by the kernel.
  void* shared(std::size_t bytes) { return m_shared.reserve(bytes); }
  /// Zeroed memory of at least `bytes` for the functors' matrix `key`, kept for later calls.
  /// Internal: used by SelfAttention and CrossAttention.
  void* buffer(Buffer key, std::size_t bytes) {
    return m_buffers[static_cast<std::size_t>(key)].reserve(bytes);
  }

 private:
  struct Free {
    void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t(alignment)); }
  };
  // Cache-line alignment: whole packets of any width, and no false sharing between slots.
  static constexpr std::size_t alignment = 64;

  struct Memory {
    std::unique_ptr<unsigned char, Free> data;
    std::size_t size = 0;
    void* reserve(std::size_t bytes) {
      if (bytes > size) {
        data.reset(
            static_cast<unsigned char*>(::operator new[](bytes, std::align_val_t(alignment))));
        std::memset(data.get(), 0, bytes);
        size = bytes;
      }
      return data.get();
    }
  };

  std::array<Memory, max_slots> m_slots;
  Memory m_shared;
  std::array<Memory, buffer_count> m_buffers;
};

}  // namespace attn
