// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file mpi/detail/collective.hpp
/// What every sequence-parallel call shares: the MPI type of a scalar, checked MPI calls, a
/// clock, and the agreement that lets every rank judge the same facts, so that a bad argument on
/// one rank is an exception on all of them instead of a rank left waiting in a collective.

#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../error.hpp"
#include "../../types.hpp"

namespace attn::mpi {

/// What a rank spent on a call (added to, so that one Traffic can sum many calls).
struct Traffic {
  /// Bytes this rank handed to MPI to send (a collective counts what leaves this rank).
  double bytes_sent = 0;
  /// Messages (point-to-point sends, or collectives) this rank started.
  Index messages = 0;
  /// Seconds blocked in MPI: waiting for a transfer to finish, or in a collective.
  double wait_seconds = 0;
  /// Seconds in the kernel and in merges.
  double compute_seconds = 0;
};

namespace detail {

template <typename Scalar>
MPI_Datatype datatype() {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "attn::mpi: float or double");
  return std::is_same_v<Scalar, float> ? MPI_FLOAT : MPI_DOUBLE;
}

/// Throws std::runtime_error naming the MPI call if it failed (under MPI_ERRORS_RETURN; the
/// default handler aborts the job before this is reached).
inline void check_mpi(int status, const char* call) {
  if (status == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(status, text, &length);
  throw std::runtime_error(std::string("attn::mpi: ") + call +
                           " failed: " + std::string(text, std::size_t(length)));
}

inline int comm_rank(MPI_Comm comm) {
  int rank = 0;
  check_mpi(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
  return rank;
}
inline int comm_size(MPI_Comm comm) {
  int size = 0;
  check_mpi(MPI_Comm_size(comm, &size), "MPI_Comm_size");
  return size;
}

/// `text` as root has it, on every rank (collective).
inline std::string broadcast_text(MPI_Comm comm, int root, const std::string& text) {
  int length = int(text.size());
  check_mpi(MPI_Bcast(&length, 1, MPI_INT, root, comm), "MPI_Bcast");
  std::string received = comm_rank(comm) == root ? text : std::string(std::size_t(length), ' ');
  check_mpi(MPI_Bcast(received.data(), length, MPI_CHAR, root, comm), "MPI_Bcast");
  return received;
}

/// Seconds since construction, added to a Traffic field (or nowhere) by stop().
class Stopwatch {
 public:
  Stopwatch() : m_start(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - m_start).count();
  }

 private:
  std::chrono::steady_clock::time_point m_start;
};

/// Every rank's facts about a call (shapes, options, mask parameters), gathered on every rank. A
/// check made on this table is made identically on every rank, so each throws the same
/// ShapeError, or none does; a call checks everything it can this way before it sends data.
class Agreement {
 public:
  /// Collective over comm. `who` prefixes every message.
  Agreement(MPI_Comm comm, const char* who, const std::vector<std::int64_t>& mine, Traffic* traffic)
      : m_who(who), m_fields(mine.size()) {
    m_ranks = comm_size(comm);
    m_table.resize(m_fields * std::size_t(m_ranks));
    const Stopwatch clock;
    check_mpi(MPI_Allgather(mine.data(), int(m_fields), MPI_INT64_T, m_table.data(), int(m_fields),
                            MPI_INT64_T, comm),
              "MPI_Allgather");
    if (traffic != nullptr) {
      traffic->wait_seconds += clock.seconds();
      traffic->bytes_sent += double(sizeof(std::int64_t) * m_fields) * double(m_ranks - 1);
      traffic->messages += 1;
    }
  }

  int ranks() const { return m_ranks; }
  std::int64_t at(int rank, std::size_t field) const {
    return m_table[std::size_t(rank) * m_fields + field];
  }
  std::vector<Index> column(std::size_t field) const {
    std::vector<Index> values(static_cast<std::size_t>(m_ranks));
    for (int r = 0; r < m_ranks; ++r)
      values[std::size_t(r)] = Index(at(r, field));
    return values;
  }
  Index sum(std::size_t field) const {
    Index total = 0;
    for (int r = 0; r < m_ranks; ++r)
      total += Index(at(r, field));
    return total;
  }

  /// \throws ShapeError on every rank if some rank's field differs from rank 0's.
  void require_same(std::size_t field, const char* what) const {
    for (int r = 1; r < m_ranks; ++r) {
      if (at(r, field) != at(0, field)) {
        fail(what, " is ", at(r, field), " on rank ", r, " and ", at(0, field),
             " on rank 0, expected the same on every rank");
      }
    }
  }

  template <typename... Parts>
  [[noreturn]] void fail(const Parts&... parts) const {
    attn::detail::throw_shape_error(m_who, ": ", parts...);
  }

 private:
  const char* m_who;
  std::size_t m_fields;
  int m_ranks = 1;
  std::vector<std::int64_t> m_table;
};

}  // namespace detail
}  // namespace attn::mpi
