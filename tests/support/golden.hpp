// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

// Reader of the golden files written by tests/reference/generate_golden.py (format documented
// there): named matrices, each a line `name rows cols` followed by `rows` lines of `cols` numbers;
// '#' starts a comment line. Values are held in double and cast on request.

#include <attn/types.hpp>

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#ifndef ATTN_GOLDEN_DIR
#error "ATTN_GOLDEN_DIR must be defined as the absolute path of tests/reference/golden"
#endif

namespace attn_test {

/// The named matrices of one golden file.
class Golden {
 public:
  Golden(std::string path, std::map<std::string, attn::Matrix<double>> entries)
      : m_path(std::move(path)), m_entries(std::move(entries)) {}

  const std::string& path() const { return m_path; }
  bool has(const std::string& name) const { return m_entries.count(name) != 0; }

  /// The matrix `name`, cast to T.
  /// \throws std::runtime_error naming the file and the entry if it is missing.
  template <typename T>
  attn::Matrix<T> matrix(const std::string& name) const {
    return entry(name).template cast<T>();
  }

  /// The entry `name` as a vector; it must have one row or one column.
  template <typename T>
  attn::Vector<T> vector(const std::string& name) const {
    const attn::Matrix<double>& m = entry(name);
    if (m.rows() != 1 && m.cols() != 1) fail(name, "is " + shape(m) + ", expected a vector");
    return m.reshaped().template cast<T>();
  }

  /// The 1 x 1 entry `name`.
  template <typename T>
  T scalar(const std::string& name) const {
    const attn::Matrix<double>& m = entry(name);
    if (m.size() != 1) fail(name, "is " + shape(m) + ", expected 1x1");
    return static_cast<T>(m(0, 0));
  }

  /// The 1 x 1 integer entry `name` (head counts, window reaches).
  attn::Index index(const std::string& name) const {
    const double x = scalar<double>(name);
    const auto i = static_cast<attn::Index>(x);
    if (static_cast<double>(i) != x)
      fail(name, "is " + std::to_string(x) + ", expected an integer");
    return i;
  }

  /// The 0/1 entry `name` as a boolean matrix (1 = true).
  attn::Matrix<bool> mask(const std::string& name) const {
    const attn::Matrix<double>& m = entry(name);
    if (!((m.array() == 0.0) || (m.array() == 1.0)).all())
      fail(name, "has values other than 0 and 1");
    return (m.array() != 0.0).matrix();
  }

 private:
  const attn::Matrix<double>& entry(const std::string& name) const {
    const auto it = m_entries.find(name);
    if (it == m_entries.end()) fail(name, "is missing");
    return it->second;
  }

  [[noreturn]] void fail(const std::string& name, const std::string& what) const {
    throw std::runtime_error("golden file " + m_path + ": entry '" + name + "' " + what);
  }

  static std::string shape(const attn::Matrix<double>& m) {
    return std::to_string(m.rows()) + "x" + std::to_string(m.cols());
  }

  std::string m_path;
  std::map<std::string, attn::Matrix<double>> m_entries;
};

namespace detail {

/// Next line that is neither blank nor a comment; false at the end of the file.
inline bool next_content_line(std::istream& in, std::string& line, long& line_number) {
  while (std::getline(in, line)) {
    ++line_number;
    const auto first = line.find_first_not_of(" \t\r");
    if (first != std::string::npos && line[first] != '#') return true;
  }
  return false;
}

/// Parses one number; strtod also reads the `inf`, `-inf` and `nan` the generator may write.
inline bool parse_number(const std::string& token, double& value) {
  char* end = nullptr;
  value = std::strtod(token.c_str(), &end);
  return !token.empty() && end == token.c_str() + token.size();
}

}  // namespace detail

/// Reads ATTN_GOLDEN_DIR "/<name>.txt".
/// \throws std::runtime_error naming the file (and line) if it is missing or malformed.
inline Golden load_golden(const std::string& name) {
  const std::string path = std::string(ATTN_GOLDEN_DIR) + "/" + name + ".txt";
  std::ifstream in(path);
  if (!in) {
    throw std::runtime_error(
        "golden file " + path +
        " cannot be opened; regenerate it with tests/reference/generate_golden.py");
  }
  const auto malformed = [&path](long line_number, const std::string& what) {
    return std::runtime_error("golden file " + path + ":" + std::to_string(line_number) + ": " +
                              what);
  };
  std::map<std::string, attn::Matrix<double>> entries;
  std::string line;
  long line_number = 0;
  while (detail::next_content_line(in, line, line_number)) {
    std::istringstream header(line);
    std::string entry;
    long rows = -1, cols = -1;
    std::string extra;
    if (!(header >> entry >> rows >> cols) || rows < 0 || cols < 0 || (header >> extra)) {
      throw malformed(line_number, "expected a header 'name rows cols', got '" + line + "'");
    }
    if (entries.count(entry) != 0)
      throw malformed(line_number, "entry '" + entry + "' appears twice");
    attn::Matrix<double> m(rows, cols);
    for (long r = 0; r < rows && cols > 0; ++r) {
      if (!detail::next_content_line(in, line, line_number)) {
        throw malformed(line_number, "entry '" + entry + "' ends after " + std::to_string(r) +
                                         " of its " + std::to_string(rows) + " rows");
      }
      std::istringstream values(line);
      std::vector<std::string> tokens;
      for (std::string token; values >> token;)
        tokens.push_back(token);
      if (static_cast<long>(tokens.size()) != cols) {
        throw malformed(line_number, "entry '" + entry + "' row " + std::to_string(r) + " has " +
                                         std::to_string(tokens.size()) + " values, expected " +
                                         std::to_string(cols));
      }
      for (long c = 0; c < cols; ++c) {
        const std::string& token = tokens[static_cast<std::size_t>(c)];
        if (!detail::parse_number(token, m(r, c))) {
          throw malformed(line_number, "entry '" + entry + "': '" + token + "' is not a number");
        }
      }
    }
    entries.emplace(std::move(entry), std::move(m));
  }
  return Golden(path, std::move(entries));
}

}  // namespace attn_test
