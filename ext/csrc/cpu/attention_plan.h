// Geometry of causal sliding-window + dilation + sink attention on the CPU.
//
// Query i attends key j iff j <= i and ((i-j) < window*dilation and
// (i-j) % dilation == 0, or j < sinks). Positions with the same residue
// i % dilation only ever see each other through the window, so every kernel
// works on one residue class at a time, in "strided" indices t (i = r + t*d):
// there the window is a plain band t - window < t' <= t. Sink keys are handled
// as a separate key set, minus the ones the window already covers.
#pragma once

#include <algorithm>
#include <cstdint>

namespace fastrader {
namespace cpu {

constexpr int kBQ = 64;  // query rows per block
constexpr int kBK = 128;  // keys per chunk (multiple of every vector width)

struct Geometry {
  int64_t N;     // sequence length
  int64_t D;     // head dim
  int64_t Dp;    // head dim padded to the vector width (scratch layout)
  int64_t W;     // window, in keys of the residue class
  int64_t dil;   // dilation
  int64_t S;     // sinks
  int64_t nres;  // residue classes that hold at least one position

  int64_t count(int64_t r) const { return (N - r + dil - 1) / dil; }
  // Rough multiply-adds of the forward over BH heads (keys per query <= W + S).
  int64_t work(int64_t BH) const { return BH * N * std::min(N, W + S) * Dp; }
  int64_t pos(int64_t r, int64_t t) const { return r + t * dil; }
};

// A set of keys processed together: either sink positions [start, start+len)
// or window keys of residue r with strided indices [start, start+len).
struct Chunk {
  bool sink;
  int64_t start;
  int len;
};

// Valid key columns [lo, hi) of the chunk for the query at position i
// (strided index t within residue r). Sink chunks still need sink_exclude.
inline void key_range(const Geometry& g, const Chunk& ch, int64_t i, int64_t t, int& lo, int& hi) {
  if (ch.sink) {
    lo = 0;
    hi = (int)std::max<int64_t>(0, std::min<int64_t>(ch.len, i + 1 - ch.start));
  } else {
    lo = (int)std::max<int64_t>(0, t - g.W + 1 - ch.start);
    hi = (int)std::max<int64_t>(0, std::min<int64_t>(ch.len, t - ch.start + 1));
  }
}

// Calls drop(c) for each sink column c < hi that the window already covers for
// the query at position i, so that such a key is counted once.
template <typename F>
inline void sink_exclude(const Geometry& g, const Chunk& ch, int64_t i, int hi, F&& drop) {
  if (hi <= 0) return;
  const int64_t first = (i - ch.start) % g.dil;  // i >= ch.start when hi > 0
  for (int64_t c = first; c < hi; c += g.dil) {
    if ((i - ch.start - c) / g.dil < g.W) drop((int)c);
  }
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Elements per SIMD vector: every ISA build works on 32-byte vectors, so the
// padded head dim Dp (a scratch layout fact) is the same for all of them.
template <typename T>
constexpr int64_t vec_width() {
  return 32 / sizeof(T);
}

template <typename T>
struct Head {  // one (batch, head) of every tensor the backward touches
  const T *q, *k, *v, *out, *dout, *lse, *glse;
  T *dq, *dk, *dv;
};

}  // namespace cpu
}  // namespace fastrader
