// The CPU attention kernels proper, compiled once per instruction set.
//
// Not a normal header: cpu/isa_kernels.inc includes it inside a region
// compiled for one ISA, with FR_ISA naming that ISA's namespace (base, avx2,
// avx512) and FR_ISA_AVX2 saying whether AVX2/FMA intrinsics may be used. All
// code here has internal linkage inside fastrader::cpu::FR_ISA, so no
// function compiled for a wider ISA can be picked by the linker for a
// narrower path (see isa.h).
//
// FlashAttention-style: queries in blocks of kBQ rows (one residue class of
// the dilation at a time), keys in chunks of kBK gathered into transposed /
// padded scratch tiles, scores from a register-blocked micro-GEMM restricted
// to the band each group of rows actually needs, online softmax in the
// forward, recomputation from the row log-sum-exp in the backward. Memory is
// O(seq * head_dim): nothing of size seq^2 or seq*window is ever allocated.
#pragma once

#ifndef FR_ISA
#error "cpu/attention_kernels.h is included from cpu/isa_kernels.inc only"
#endif

namespace fastrader {
namespace cpu {
inline namespace FR_ISA {
namespace {


template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// Below this many multiply-adds a call runs on the calling thread: waking a
// thread team costs more than it saves, and on a busy machine a lot more
// (small shapes are common: per-bar inference in a backtest, gradcheck).
constexpr int64_t kSerialWork = int64_t(1) << 21;

// Threads worth using for `work` multiply-adds.
inline int64_t threads_for(int64_t work) { return work < kSerialWork ? 1 : at::get_num_threads(); }

// Runs body(task, scratch) for every task over ATen's threads, handing tasks
// out one at a time from a shared counter: block costs differ (sequence
// starts, dense windows, odd residue classes), so static splits would idle.
template <typename Scratch, typename Make, typename Body>
void run_tasks(int64_t ntasks, int64_t work, Make make, Body body) {
  if (ntasks <= 0) return;
  const int64_t nth = std::max<int64_t>(1, std::min<int64_t>(threads_for(work), ntasks));
  if (nth == 1) {
    Scratch sc = make();
    for (int64_t t = 0; t < ntasks; ++t) body(t, sc);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nth, 1, [&](int64_t, int64_t) {
    Scratch sc = make();
    for (int64_t t; (t = next.fetch_add(1)) < ntasks;) body(t, sc);
  });
}

#if FR_ISA_AVX2
// dst[d*ld + j] = rows[j][d] for j, d < 8: one 8x8 block through registers
// instead of 64 scalar scattered stores.
FR_INLINE void transpose8x8(const float* const* rows, float* dst, long ld) {
  __m256 r[8], t[8];
  for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(rows[j]);
  for (int j = 0; j < 8; j += 2) {
    t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]);
    t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
  }
  for (int j = 0; j < 8; j += 4) {
    r[j] = _mm256_shuffle_ps(t[j], t[j + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[j + 1] = _mm256_shuffle_ps(t[j], t[j + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[j + 2] = _mm256_shuffle_ps(t[j + 1], t[j + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[j + 3] = _mm256_shuffle_ps(t[j + 1], t[j + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; ++j) {
    _mm256_storeu_ps(dst + j * ld, _mm256_permute2f128_ps(r[j], r[j + 4], 0x20));
    _mm256_storeu_ps(dst + (j + 4) * ld, _mm256_permute2f128_ps(r[j], r[j + 4], 0x31));
  }
}

// Fast path of gather_cols for float; returns how many leading keys it did.
inline int gather_cols_fast(const float* src, const int64_t* pos, int len, int64_t D, float* dst, long ld) {
  if (D % 8 != 0) return 0;
  int c = 0;
  for (; c + 8 <= len; c += 8) {
    const float* rows[8];
    for (int j = 0; j < 8; ++j) rows[j] = src + pos[c + j] * D;
    for (int64_t d = 0; d < D; d += 8) {
      transpose8x8(rows, dst + d * ld + c, ld);
      for (int j = 0; j < 8; ++j) rows[j] += 8;
    }
  }
  return c;
}
#endif

template <typename T>
inline int gather_cols_fast(const T*, const int64_t*, int, int64_t, T*, long) {
  return 0;
}

// dst[d*ld + c] = src[pos[c]*D + d]: keys transposed for the score GEMM.
template <typename T>
void gather_cols(const T* src, const int64_t* pos, int len, int64_t D, int64_t Dp, T* dst, long ld) {
  for (int c = gather_cols_fast(src, pos, len, D, dst, ld); c < len; ++c) {
    const T* s = src + pos[c] * D;
    for (int64_t d = 0; d < D; ++d) dst[d * ld + c] = s[d];
  }
  // Columns past len are read by the vector tail; keep them finite (0) so a
  // masked 0 * garbage can never turn into NaN.
  const long pad = round_up(len, Simd<T>::N);
  for (int64_t d = 0; d < Dp; ++d)
    for (long c = len; c < pad; ++c) dst[d * ld + c] = 0;
}

// dst[c*Dp + d] = src[pos[c]*D + d]: keys row-major, head dim zero-padded.
template <typename T>
void gather_rows(const T* src, const int64_t* pos, int len, int64_t D, int64_t Dp, T* dst) {
  for (int c = 0; c < len; ++c) {
    const T* s = src + pos[c] * D;
    T* o = dst + c * Dp;
    int64_t d = 0;
    for (; d + Simd<T>::N <= D; d += Simd<T>::N) vstore(o + d, vload(s + d));  // rows are short: no memmove call
    for (; d < D; ++d) o[d] = s[d];
  }
}

// Key rows as a row-major B operand (ragged_acc reads only rows inside each
// query's band): the tensor itself when the chunk's keys are equally spaced
// (step positions apart) and rows need no padding, else a padded copy.
template <typename T>
const T* key_rows(const T* src, const int64_t* pos, int len, int64_t step, int64_t D, int64_t Dp, T* scratch,
                  long& ldb) {
  if (D == Dp) {
    ldb = step * D;
    return src + pos[0] * D;
  }
  gather_rows(src, pos, len, D, Dp, scratch);
  ldb = Dp;
  return scratch;
}

// 2^x of 8 scalars, vectorised (the per-row rescale factors of a group).
template <typename T>
FR_INLINE void exp2_small(T* x) {
  for (int i = 0; i < 8; i += Simd<T>::N) vstore(x + i, vexp2(vload(x + i)));
}

// Online-softmax update of a group of mr query rows with their base-2 scores
// S[rr*ld + a_lo .. a_hi) (masked entries hold -inf); leaves the
// probabilities in S. Row sums are kept as vectors (Lv, VN per row) and only
// reduced at the end, the rescale factors go through one vector exp.
template <typename T>
FR_INLINE void softmax_group(T* S, long ld, int mr, long a_lo, long a_hi, T* M, T* Lv, T* O, long Dp) {
  using V = vec_t<T>;
  constexpr int VN = Simd<T>::N;
  static_assert(kMR <= 8, "exp2_small handles 8 rows");
  T m_new[8], alpha[8];
  for (int rr = 0; rr < mr; ++rr) {
    const T* s = S + rr * ld;
    V mx = vsplat(neg_inf<T>());
    for (long c = a_lo; c < a_hi; c += VN) mx = vmax<T>(mx, vload(s + c));
    const T rmax = hmax<T>(mx);
    m_new[rr] = rmax > M[rr] ? rmax : M[rr];
    alpha[rr] = m_new[rr] == M[rr] ? T(0) : M[rr] - m_new[rr];  // 2^0 = 1: unchanged
  }
  for (int rr = mr; rr < 8; ++rr) alpha[rr] = 0;
  exp2_small(alpha);
  for (int rr = 0; rr < mr; ++rr) {
    T* s = S + rr * ld;
    if (m_new[rr] == neg_inf<T>()) {  // no visible key so far: nothing to add
      std::fill(s + a_lo, s + a_hi, T(0));
      continue;
    }
    V lsum = vload(Lv + rr * VN);
    if (alpha[rr] != T(1)) {
      const V av = vsplat(alpha[rr]);
      lsum *= av;
      T* o = O + rr * Dp;
      for (long d = 0; d < Dp; d += VN) vstore(o + d, vload(o + d) * av);
    }
    const V mv = vsplat(m_new[rr]);
    for (long c = a_lo; c < a_hi; c += VN) {
      const V p = vexp2(vload(s + c) - mv);
      vstore(s + c, p);
      lsum += p;
    }
    vstore(Lv + rr * VN, lsum);
    M[rr] = m_new[rr];
  }
}

// Sets the columns of [a_lo, a_hi) that the query may not see to -inf.
template <typename T>
FR_INLINE void mask_row(const Geometry& g, const Chunk& ch, int64_t i, int lo, int hi, long a_lo,
                        long a_hi, T* s) {
  if (lo >= hi) {
    std::fill(s + a_lo, s + a_hi, neg_inf<T>());
    return;
  }
  std::fill(s + a_lo, s + lo, neg_inf<T>());
  std::fill(s + hi, s + a_hi, neg_inf<T>());
  if (ch.sink) sink_exclude(g, ch, i, hi, [&](int c) { s[c] = neg_inf<T>(); });
}

// C[r] += sum_{k in [lo[r], hi[r])} A[r*ars + k*acs] * B[k*ldb + 0..n1) for the
// mr rows of a register block, each over exactly its own range: the range
// all rows share goes through the mr-row tile, the ragged ends row by row.
// A row never reads a B row outside its range, so a NaN/inf in a key (or
// query) it does not attend -- a future one in particular -- cannot leak in
// through 0 * inf, and nothing outside the band needs zeroing.
template <typename T>
FR_INLINE void ragged_acc(int mr, const int* lo, const int* hi, const T* A, long ars, long acs,
                          const T* B, long ldb, long n1, T* C, long ldc) {
  int cl = 0, ch = std::numeric_limits<int>::max();
  bool full = true;
  for (int r = 0; r < mr; ++r) {
    full = full && lo[r] < hi[r];
    cl = std::max(cl, lo[r]);
    ch = std::min(ch, hi[r]);
  }
  if (!full || cl >= ch) {
    for (int r = 0; r < mr; ++r)
      if (lo[r] < hi[r]) tile<T, 1, true>(A + r * ars, ars, acs, B, ldb, lo[r], hi[r], 0, n1, C + r * ldc, ldc);
    return;
  }
  tile_rows<T, true>(mr, A, ars, acs, B, ldb, cl, ch, 0, n1, C, ldc);
  for (int r = 0; r < mr; ++r) {
    if (lo[r] < cl) tile<T, 1, true>(A + r * ars, ars, acs, B, ldb, lo[r], cl, 0, n1, C + r * ldc, ldc);
    if (ch < hi[r]) tile<T, 1, true>(A + r * ars, ars, acs, B, ldb, ch, hi[r], 0, n1, C + r * ldc, ldc);
  }
}

// ----------------------------------------------------------------- forward

template <typename T>
struct FwdScratch {
  std::vector<T> q, o, m, l, s, kt, v;
  explicit FwdScratch(int64_t Dp)
      : q(kBQ * Dp), o(kBQ * Dp), m(kBQ), l(kBQ * Simd<T>::N), s(kBQ * kBK), kt(Dp * kBK), v(kBK * Dp) {}
};

// One block of query rows t in [t0, t1) of residue class r; pointers are at
// the (batch, head) base.
template <typename T>
void fwd_block(const Geometry& g, const T* q, const T* k, const T* v, T* out, T* lse, int64_t r,
               int64_t t0, int64_t t1, T scale, FwdScratch<T>& sc) {
  constexpr int VN = Simd<T>::N;
  const T qscale = scale * T(kLog2e);  // scores in base 2
  const int nrows = (int)(t1 - t0);
  const long Dp = g.Dp, D = g.D, ld = kBK;
  T *Q = sc.q.data(), *O = sc.o.data(), *M = sc.m.data(), *L = sc.l.data();
  T *S = sc.s.data(), *KT = sc.kt.data(), *VR = sc.v.data();

  for (int row = 0; row < nrows; ++row) {
    const T* src = q + g.pos(r, t0 + row) * D;
    for (long d = 0; d < D; ++d) Q[row * Dp + d] = qscale * src[d];
  }
  std::fill(O, O + nrows * Dp, T(0));
  std::fill(M, M + nrows, neg_inf<T>());
  std::fill(L, L + nrows * VN, T(0));

  int64_t pos[kBK];
  auto process = [&](const Chunk& ch) {
    for (int c = 0; c < ch.len; ++c) pos[c] = ch.sink ? ch.start + c : g.pos(r, ch.start + c);
    gather_cols(k, pos, ch.len, D, Dp, KT, ld);
    long ldv;
    const T* VB = key_rows(v, pos, ch.len, ch.sink ? 1 : g.dil, D, Dp, VR, ldv);
    for (int g0 = 0; g0 < nrows; g0 += kMR) {
      const int mr = std::min(kMR, nrows - g0);
      int lo[kMR], hi[kMR], glo = (int)ld, ghi = 0;
      for (int rr = 0; rr < mr; ++rr) {
        const int64_t t = t0 + g0 + rr;
        key_range(g, ch, g.pos(r, t), t, lo[rr], hi[rr]);
        if (lo[rr] < hi[rr]) {
          glo = std::min(glo, lo[rr]);
          ghi = std::max(ghi, hi[rr]);
        }
      }
      if (glo >= ghi) continue;  // the chunk is outside these rows' band
      const long a_lo = glo / VN * VN, a_hi = round_up(ghi, VN);
      T* Sg = S + g0 * ld;
      tile_rows<T, false>(mr, Q + g0 * Dp, Dp, 1, KT, ld, 0, Dp, a_lo, a_hi, Sg, ld);
      for (int rr = 0; rr < mr; ++rr)
        mask_row(g, ch, g.pos(r, t0 + g0 + rr), lo[rr], hi[rr], a_lo, a_hi, Sg + rr * ld);
      softmax_group(Sg, ld, mr, a_lo, a_hi, M + g0, L + g0 * VN, O + g0 * Dp, Dp);
      ragged_acc(mr, lo, hi, Sg, ld, 1, VB, ldv, Dp, O + g0 * Dp, Dp);
    }
  };

  if (g.S > 0) {
    const int64_t send = std::min<int64_t>(g.S, g.pos(r, t1 - 1) + 1);
    for (int64_t j0 = 0; j0 < send; j0 += kBK)
      process(Chunk{true, j0, (int)std::min<int64_t>(kBK, send - j0)});
  }
  for (int64_t c0 = std::max<int64_t>(0, t0 - g.W + 1); c0 < t1; c0 += kBK)
    process(Chunk{false, c0, (int)std::min<int64_t>(kBK, t1 - c0)});

  for (int row = 0; row < nrows; ++row) {
    const int64_t i = g.pos(r, t0 + row);
    const T l = hsum<T>(vload(L + row * VN));
    const T inv = T(1) / l;
    for (long d = 0; d < D; ++d) out[i * D + d] = O[row * Dp + d] * inv;
    lse[i] = (M[row] + std::log2(l)) * T(kLn2);
  }
}

// Query blocks of one (batch, head): (residue, first strided index).
inline std::vector<std::pair<int64_t, int64_t>> query_blocks(const Geometry& g) {
  std::vector<std::pair<int64_t, int64_t>> blocks;
  for (int64_t r = 0; r < g.nres; ++r)
    for (int64_t t0 = 0, n = g.count(r); t0 < n; t0 += kBQ) blocks.emplace_back(r, t0);
  return blocks;
}

template <typename T>
void fwd_impl(const Geometry& g, int64_t BH, const T* q, const T* k, const T* v, T* out, T* lse,
              T scale) {
  const auto blocks = query_blocks(g);
  const int64_t nb = (int64_t)blocks.size();
  run_tasks<FwdScratch<T>>(
      BH * nb, g.work(BH), [&] { return FwdScratch<T>(g.Dp); },
      [&](int64_t task, FwdScratch<T>& sc) {
        const int64_t bh = task / nb;
        const auto [r, t0] = blocks[task % nb];
        const int64_t t1 = std::min<int64_t>(t0 + kBQ, g.count(r));
        const int64_t off = bh * g.N * g.D;
        fwd_block(g, q + off, k + off, v + off, out + off, lse + bh * g.N, r, t0, t1, scale, sc);
      });
}

// ---------------------------------------------------------------- backward

template <typename T>
Head<T> head_at(const Head<T>& h, const Geometry& g, int64_t bh) {
  const int64_t o = bh * g.N * g.D, ol = bh * g.N;
  return Head<T>{h.q + o,       h.k + o,  h.v + o,  h.out + o, h.dout + o, h.lse + ol,
                 h.glse ? h.glse + ol : nullptr, h.dq + o, h.dk + o, h.dv + o};
}

template <typename T>
struct BwdScratch {
  std::vector<T> q, dout, delta, lse, dq, p, ds, kt, vt, kr, dkc, dvc;
  const T* kb = nullptr;  // key rows of the current chunk (kr or the tensor)
  long ldkb = 0;
  explicit BwdScratch(int64_t Dp)
      : q(kBQ * Dp), dout(kBQ * Dp), delta(kBQ), lse(kBQ), dq(kBQ * Dp), p(kBQ * kBK),
        ds(kBQ * kBK), kt(Dp * kBK), vt(Dp * kBK), kr(kBK * Dp), dkc(kBK * Dp), dvc(kBK * Dp) {}
};

// Loads the rows at positions pos[0..nrows): Q scaled by scale*log2(e) (base-2
// scores), dO, lse in base 2 and Delta_i = dO_i . O_i - dlse_i (the softmax
// backward's row term). dK accumulated from this Q must be multiplied by ln 2.
template <typename T>
void load_rows(const Geometry& g, const Head<T>& h, const int64_t* pos, int nrows, T scale,
               BwdScratch<T>& sc) {
  const long D = g.D, Dp = g.Dp;
  const T qscale = scale * T(kLog2e);
  for (int row = 0; row < nrows; ++row) {
    const int64_t i = pos[row];
    T* qd = sc.q.data() + row * Dp;
    T* od = sc.dout.data() + row * Dp;
    T delta = 0;
    for (long d = 0; d < D; ++d) {
      qd[d] = qscale * h.q[i * D + d];
      od[d] = h.dout[i * D + d];
      delta += od[d] * h.out[i * D + d];
    }
    sc.delta[row] = h.glse ? delta - h.glse[i] : delta;
    sc.lse[row] = h.lse[i] * T(kLog2e);
  }
}

// Gathers a chunk's keys for the backward: K^T and V^T for the score and dP
// GEMMs, K row-major for dQ.
template <typename T>
void gather_bwd(const Geometry& g, const Head<T>& h, const Chunk& ch, const int64_t* pos, BwdScratch<T>& sc) {
  gather_cols(h.k, pos, ch.len, g.D, g.Dp, sc.kt.data(), kBK);
  gather_cols(h.v, pos, ch.len, g.D, g.Dp, sc.vt.data(), kBK);
  sc.kb = key_rows(h.k, pos, ch.len, ch.sink ? 1 : g.dil, g.D, g.Dp, sc.kr.data(), sc.ldkb);
}

// P = 2^(S - lse) (base-2 scores and lse) and dS = P * (dP - Delta) of the
// loaded rows against the gathered chunk; P is 0 where a key is not attended.
// Only entries inside each row's band are meaningful (and only those are read
// later). rows_t are the strided indices (window chunks only). With want_dq,
// adds dS K into sc.dq.
template <typename T>
void bwd_scores(const Geometry& g, const Chunk& ch, const int64_t* pos, const int64_t* rows_t,
                int nrows, bool want_dq, BwdScratch<T>& sc) {
  using V = vec_t<T>;
  constexpr int VN = Simd<T>::N;
  const long Dp = g.Dp, ld = kBK;
  T *P = sc.p.data(), *DS = sc.ds.data();
  for (int g0 = 0; g0 < nrows; g0 += kMR) {
    const int mr = std::min(kMR, nrows - g0);
    int lo[kMR], hi[kMR], glo = (int)ld, ghi = 0;
    for (int rr = 0; rr < mr; ++rr) {
      key_range(g, ch, pos[g0 + rr], rows_t ? rows_t[g0 + rr] : 0, lo[rr], hi[rr]);
      if (lo[rr] < hi[rr]) {
        glo = std::min(glo, lo[rr]);
        ghi = std::max(ghi, hi[rr]);
      }
    }
    if (glo >= ghi) continue;
    const long a_lo = glo / VN * VN, a_hi = round_up(ghi, VN);
    T* Pg = P + g0 * ld;
    T* Dg = DS + g0 * ld;
    tile_rows<T, false>(mr, sc.q.data() + g0 * Dp, Dp, 1, sc.kt.data(), ld, 0, Dp, a_lo, a_hi, Pg, ld);
    tile_rows<T, false>(mr, sc.dout.data() + g0 * Dp, Dp, 1, sc.vt.data(), ld, 0, Dp, a_lo, a_hi, Dg,
                        ld);
    for (int rr = 0; rr < mr; ++rr) {
      T* p = Pg + rr * ld;
      T* ds = Dg + rr * ld;
      mask_row(g, ch, pos[g0 + rr], lo[rr], hi[rr], a_lo, a_hi, p);
      const V lv = vsplat(sc.lse[g0 + rr]);
      const V dv = vsplat(sc.delta[g0 + rr]);
      for (long c = a_lo; c < a_hi; c += VN) {
        const V pv = vexp2(vload(p + c) - lv);
        vstore(p + c, pv);
        vstore(ds + c, pv * (vload(ds + c) - dv));
      }
    }
    if (want_dq) ragged_acc(mr, lo, hi, Dg, ld, 1, sc.kb, sc.ldkb, Dp, sc.dq.data() + g0 * Dp, Dp);
  }
}

// Adds dV_c += sum_rows P[row, c] dO_row and dK_c += sum_rows dS[row, c] q_row
// (q scaled as loaded) for the chunk's keys into sc.dvc / sc.dkc, each key over
// exactly the rows [rlo, rhi) = rows_of(c) that attend it.
template <typename T, typename Rows>
void bwd_dkv(const Geometry& g, int len, Rows rows_of, BwdScratch<T>& sc) {
  const long Dp = g.Dp, ld = kBK;
  int rlo[kMR], rhi[kMR];
  for (int c0 = 0; c0 < len; c0 += kMR) {
    const int km = std::min(kMR, len - c0);
    for (int c = 0; c < km; ++c) {
      const auto range = rows_of(c0 + c);
      rlo[c] = (int)range.first;
      rhi[c] = (int)range.second;
    }
    ragged_acc(km, rlo, rhi, sc.p.data() + c0, 1, ld, sc.dout.data(), Dp, Dp, sc.dvc.data() + c0 * Dp, Dp);
    ragged_acc(km, rlo, rhi, sc.ds.data() + c0, 1, ld, sc.q.data(), Dp, Dp, sc.dkc.data() + c0 * Dp, Dp);
  }
}

// A contiguous range of query rows [ts, te) of one residue class. dK/dV of
// keys >= ts are written only by this task; keys below ts (the first W-1 of a
// later segment's band) go to the task's private halo, added in afterwards.
struct SegTask {
  int64_t bh, r, ts, te;
  int64_t halo_first, halo_off;  // strided index of halo row 0, its row in the halo buffer
};

template <typename T>
void bwd_segment(const Geometry& g, const Head<T>& h, const SegTask& task, T* halo_k, T* halo_v,
                 T scale, BwdScratch<T>& sc) {
  const long D = g.D, Dp = g.Dp;
  const int64_t r = task.r;
  int64_t pos[kBQ], rows_t[kBQ], kpos[kBK];
  for (int64_t t0 = task.ts; t0 < task.te; t0 += kBQ) {
    const int64_t t1 = std::min<int64_t>(t0 + kBQ, task.te);
    const int nrows = (int)(t1 - t0);
    for (int row = 0; row < nrows; ++row) {
      rows_t[row] = t0 + row;
      pos[row] = g.pos(r, t0 + row);
    }
    load_rows(g, h, pos, nrows, scale, sc);
    std::fill(sc.dq.data(), sc.dq.data() + nrows * Dp, T(0));

    // Sink keys: only dQ here, their dK/dV come from the sink pass.
    if (g.S > 0) {
      const int64_t send = std::min<int64_t>(g.S, pos[nrows - 1] + 1);
      for (int64_t j0 = 0; j0 < send; j0 += kBK) {
        const Chunk ch{true, j0, (int)std::min<int64_t>(kBK, send - j0)};
        for (int c = 0; c < ch.len; ++c) kpos[c] = j0 + c;
        gather_bwd(g, h, ch, kpos, sc);
        bwd_scores(g, ch, pos, rows_t, nrows, true, sc);
      }
    }
    for (int64_t c0 = std::max<int64_t>(0, t0 - g.W + 1); c0 < t1; c0 += kBK) {
      const Chunk ch{false, c0, (int)std::min<int64_t>(kBK, t1 - c0)};
      for (int c = 0; c < ch.len; ++c) kpos[c] = g.pos(r, c0 + c);
      gather_bwd(g, h, ch, kpos, sc);
      bwd_scores(g, ch, pos, rows_t, nrows, true, sc);
      // rows t attend key t' iff t' <= t < t' + W
      auto rows_of = [&](int c) {
        return std::make_pair(std::max<int64_t>(0, c0 + c - t0), std::min<int64_t>(nrows, c0 + c + g.W - t0));
      };
      std::fill(sc.dkc.data(), sc.dkc.data() + ch.len * Dp, T(0));
      std::fill(sc.dvc.data(), sc.dvc.data() + ch.len * Dp, T(0));
      bwd_dkv(g, ch.len, rows_of, sc);
      for (int c = 0; c < ch.len; ++c) {
        const int64_t tk = c0 + c;
        T *dk, *dv;
        if (tk >= task.ts) {
          dk = h.dk + kpos[c] * D;
          dv = h.dv + kpos[c] * D;
        } else {
          dk = halo_k + (task.halo_off + tk - task.halo_first) * D;
          dv = halo_v + (task.halo_off + tk - task.halo_first) * D;
        }
        const T* sk = sc.dkc.data() + c * Dp;
        const T* sv = sc.dvc.data() + c * Dp;
        for (long d = 0; d < D; ++d) {
          dk[d] += T(kLn2) * sk[d];
          dv[d] += sv[d];
        }
      }
    }
    for (int row = 0; row < nrows; ++row)
      for (long d = 0; d < D; ++d) h.dq[pos[row] * D + d] = scale * sc.dq[row * Dp + d];
  }
}

// dK/dV of sink keys [j0, j0+len) from every query that reaches them through
// the sink rule (not the window), key-major so the task owns those rows.
template <typename T>
void bwd_sinks(const Geometry& g, const Head<T>& h, int64_t j0, int len, T scale, BwdScratch<T>& sc) {
  const long D = g.D, Dp = g.Dp;
  const Chunk ch{true, j0, len};
  int64_t pos[kBQ], kpos[kBK];
  for (int c = 0; c < len; ++c) kpos[c] = j0 + c;
  gather_bwd(g, h, ch, kpos, sc);
  std::fill(sc.dkc.data(), sc.dkc.data() + len * Dp, T(0));
  std::fill(sc.dvc.data(), sc.dvc.data() + len * Dp, T(0));
  for (int64_t i0 = j0; i0 < g.N; i0 += kBQ) {
    const int nrows = (int)std::min<int64_t>(kBQ, g.N - i0);
    for (int row = 0; row < nrows; ++row) pos[row] = i0 + row;
    load_rows(g, h, pos, nrows, scale, sc);
    bwd_scores(g, ch, pos, nullptr, nrows, false, sc);
    // every query i >= j attends sink key j (through the sink rule or the window)
    auto rows_of = [&](int c) {
      return std::make_pair(std::max<int64_t>(0, j0 + c - i0), static_cast<int64_t>(nrows));
    };
    bwd_dkv(g, len, rows_of, sc);
  }
  for (int c = 0; c < len; ++c)
    for (long d = 0; d < D; ++d) {
      h.dk[(j0 + c) * D + d] += T(kLn2) * sc.dkc[c * Dp + d];
      h.dv[(j0 + c) * D + d] += sc.dvc[c * Dp + d];
    }
}

template <typename T>
void bwd_impl(const Geometry& g, int64_t BH, const Head<T>& base, T scale) {
  // Whole residue classes per task when there are enough of them to keep
  // every thread busy; otherwise split classes into segments of >= W rows so
  // the halos add at most one extra copy of dK/dV.
  const int64_t work = 5 * g.work(BH) / 2;  // five products to the forward's two
  const int64_t nth = threads_for(work);
  const int64_t nseq = BH * g.nres;
  // Many small tasks: a thread that the OS preempts (other processes on a
  // shared machine) then holds back at most one short task at the end.
  const int64_t target = nth > 1 ? 32 * nth : 1;
  const int64_t want = nseq >= target ? 1 : (target + nseq - 1) / nseq;
  std::vector<SegTask> tasks;
  std::vector<int64_t> seq_begin;  // first task of each (bh, r)
  int64_t halo_rows = 0;
  for (int64_t bh = 0; bh < BH; ++bh)
    for (int64_t r = 0; r < g.nres; ++r) {
      seq_begin.push_back((int64_t)tasks.size());
      const int64_t n = g.count(r);
      int64_t seg = n;
      if (want > 1)
        seg = std::max(round_up((n + want - 1) / want, kBQ), round_up(std::max<int64_t>(g.W - 1, 1), kBQ));
      for (int64_t ts = 0; ts < n; ts += seg) {
        const int64_t first = std::max<int64_t>(0, ts - g.W + 1);
        tasks.push_back(SegTask{bh, r, ts, std::min(ts + seg, n), first, halo_rows});
        halo_rows += ts - first;
      }
    }
  seq_begin.push_back((int64_t)tasks.size());
  std::vector<T> halo_k(halo_rows * g.D, T(0)), halo_v(halo_rows * g.D, T(0));

  run_tasks<BwdScratch<T>>(
      (int64_t)tasks.size(), work, [&] { return BwdScratch<T>(g.Dp); },
      [&](int64_t i, BwdScratch<T>& sc) {
        const SegTask& task = tasks[i];
        bwd_segment(g, head_at(base, g, task.bh), task, halo_k.data(), halo_v.data(), scale, sc);
      });

  if (halo_rows > 0) {
    const int64_t grain = halo_rows * g.D < kSerialWork ? nseq : 1;
    at::parallel_for(0, nseq, grain, [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; ++s)
        for (int64_t i = seq_begin[s]; i < seq_begin[s + 1]; ++i) {
          const SegTask& task = tasks[i];
          const Head<T> h = head_at(base, g, task.bh);
          for (int64_t tk = task.halo_first; tk < task.ts; ++tk) {
            const int64_t row = task.halo_off + tk - task.halo_first;
            const int64_t j = g.pos(task.r, tk);
            for (int64_t d = 0; d < g.D; ++d) {
              h.dk[j * g.D + d] += halo_k[row * g.D + d];
              h.dv[j * g.D + d] += halo_v[row * g.D + d];
            }
          }
        }
    });
  }

  if (g.S > 0) {
    const int64_t nchunks = (g.S + kBK - 1) / kBK;
    run_tasks<BwdScratch<T>>(
        BH * nchunks, 3 * BH * g.N * g.S * g.Dp, [&] { return BwdScratch<T>(g.Dp); },
        [&](int64_t i, BwdScratch<T>& sc) {
          const int64_t bh = i / nchunks, j0 = (i % nchunks) * kBK;
          bwd_sinks(g, head_at(base, g, bh), j0, (int)std::min<int64_t>(kBK, g.S - j0), scale, sc);
        });
  }
}

}  // namespace
}  // namespace FR_ISA
}  // namespace cpu
}  // namespace fastrader
