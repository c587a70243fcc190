// The CPU decode kernels proper (sparse_attn_decode, decode_step), compiled
// once per instruction set like cpu/attention_kernels.h: included by
// cpu/isa_kernels.inc inside namespace fastrader::cpu::FR_ISA, internal
// linkage, raw pointers only (argument checks, dtype handling and
// registration stay in cpu/decode_cpu.cpp, compiled for the baseline).
//
// Why per ISA: the per-bar streaming path of a backtest is this code; in a
// baseline build its float paths run on SSE, several times slower than the
// AVX2/FMA build a -march=native compile used to give.
#pragma once

#ifndef FR_ISA
#error "cpu/decode_kernels.h is included from cpu/isa_kernels.inc only"
#endif

namespace fastrader {
namespace cpu {
inline namespace FR_ISA {
namespace {

constexpr int64_t kDecodeSerialWork = int64_t(1) << 20;

// Slots of the keys the query at `pos` sees, in no particular order.
inline int64_t gather_slots(int64_t pos, int64_t window, int64_t dilation, int64_t sinks,
                            int64_t span, int64_t* slots) {
  int64_t n = 0;
  const int64_t ns = pos + 1 < sinks ? pos + 1 : sinks;
  for (int64_t j = 0; j < ns; ++j) slots[n++] = j;
  if (pos < sinks) return n;
  const int64_t nw_max = (pos - sinks) / dilation + 1;
  const int64_t nw = nw_max < window ? nw_max : window;
  int64_t r = pos % span;  // ring index of the newest key, stepping back by dilation
  for (int64_t m = 0; m < nw; ++m) {
    slots[n++] = sinks + r;
    r -= dilation;
    if (r < 0) r += span;
  }
  return n;
}

// Generic path: any head_dim, float or double.
template <typename T>
void decode_head_scalar(const T* q, const T* K, const T* V, T* out, const int64_t* slots, int64_t n,
                        int64_t D, T scale2, T* sc) {
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    const T* k = K + slots[i] * D;
    T s = 0;
    for (int64_t d = 0; d < D; ++d) s += q[d] * k[d];
    s *= scale2;
    sc[i] = s;
    mx = s > mx ? s : mx;
  }
  T sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    sc[i] = std::exp2(sc[i] - mx);
    sum += sc[i];
  }
  for (int64_t d = 0; d < D; ++d) out[d] = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T* v = V + slots[i] * D;
    const T p = sc[i];
    for (int64_t d = 0; d < D; ++d) out[d] += p * v[d];
  }
  const T inv = T(1) / sum;
  for (int64_t d = 0; d < D; ++d) out[d] *= inv;
}

// float32, head_dim a multiple of 8: one ymm per 8 dims, vector exp2.
void decode_head_vec(const float* q, const float* K, const float* V, float* out,
                     const int64_t* slots, int64_t n, int64_t D, float scale2, float* sc) {
  using Vf = Simd<float>::V;
  const int64_t nv = D / 8;
  Vf qv[16];  // head_dim <= 128
  for (int64_t c = 0; c < nv; ++c) qv[c] = vload(q + 8 * c) * vsplat(scale2);
  float mx = -std::numeric_limits<float>::infinity();
  int64_t i0 = 0;
#if FR_ISA_AVX2
  // Eight keys at a time: eight dot-product vectors reduced together by a
  // hadd tree (one vector of eight scores) instead of eight horizontal sums.
  __m256 mxv = _mm256_set1_ps(mx);
  for (; i0 + 8 <= n; i0 += 8) {
    __m256 p[8];
    for (int j = 0; j < 8; ++j) {
      const float* k = K + slots[i0 + j] * D;
      Vf acc = qv[0] * vload(k);
      for (int64_t c = 1; c < nv; ++c) acc += qv[c] * vload(k + 8 * c);
      p[j] = (__m256)acc;
    }
    const __m256 t0 = _mm256_hadd_ps(p[0], p[1]), t1 = _mm256_hadd_ps(p[2], p[3]);
    const __m256 t2 = _mm256_hadd_ps(p[4], p[5]), t3 = _mm256_hadd_ps(p[6], p[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    const __m256 s8 = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(sc + i0, s8);
    mxv = _mm256_max_ps(mxv, s8);
  }
  mx = hmax<float>((Vf)mxv);
#endif
  for (int64_t i = i0; i < n; ++i) {
    const float* k = K + slots[i] * D;
    Vf acc = qv[0] * vload(k);
    for (int64_t c = 1; c < nv; ++c) acc += qv[c] * vload(k + 8 * c);
    const float s = hsum<float>(acc);
    sc[i] = s;
    mx = s > mx ? s : mx;
  }
  Vf sumv = vsplat(0.0f);
  const Vf mv = vsplat(mx);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const Vf e = vexp2(vload(sc + i) - mv);
    vstore(sc + i, e);
    sumv += e;
  }
  float sum = hsum<float>(sumv);
  for (; i < n; ++i) {
    sc[i] = std::exp2(sc[i] - mx);
    sum += sc[i];
  }
  Vf acc[16];
  for (int64_t c = 0; c < nv; ++c) acc[c] = vsplat(0.0f);
  for (int64_t j = 0; j < n; ++j) {
    const float* v = V + slots[j] * D;
    const Vf p = vsplat(sc[j]);
    for (int64_t c = 0; c < nv; ++c) acc[c] += p * vload(v + 8 * c);
  }
  const Vf inv = vsplat(1.0f / sum);
  for (int64_t c = 0; c < nv; ++c) vstore(out + 8 * c, acc[c] * inv);
}

inline void decode_head(const float* q, const float* K, const float* V, float* out, const int64_t* slots,
                        int64_t n, int64_t D, float scale2, float* sc) {
  if (D % 8 == 0 && D <= 128)
    decode_head_vec(q, K, V, out, slots, n, D, scale2, sc);
  else
    decode_head_scalar<float>(q, K, V, out, slots, n, D, scale2, sc);
}

inline void decode_head(const double* q, const double* K, const double* V, double* out, const int64_t* slots,
                        int64_t n, int64_t D, double scale2, double* sc) {
  decode_head_scalar<double>(q, K, V, out, slots, n, D, scale2, sc);
}

// sparse_attn_decode over every (sequence, head): q (B, H, D), caches
// (B, H, sinks + window*dilation, D), pos (B,), all contiguous.
template <typename scalar_t>
void decode_impl(const scalar_t* Q, const scalar_t* Kp, const scalar_t* Vp, scalar_t* O, const int64_t* pp,
                 int64_t B, int64_t H, int64_t D, int64_t window, int64_t dilation, int64_t sinks, double scale) {
  const int64_t span = window * dilation;
  const int64_t S = sinks + span;
  const int64_t work = B * H * (sinks + window) * D;  // an upper bound on the multiply-adds
  const int64_t grain = work < kDecodeSerialWork ? B * H : std::max<int64_t>(1, (B * H) / (4 * at::get_num_threads()));
  const scalar_t scale2 = scalar_t(scale * kLog2e);
  at::parallel_for(0, B * H, grain, [&](int64_t lo, int64_t hi) {
    const int64_t cap = std::min<int64_t>(S, sinks + window);
    std::vector<int64_t> slots(cap);
    std::vector<scalar_t> sc(cap);
    int64_t last_b = -1, n = 0;
    for (int64_t bh = lo; bh < hi; ++bh) {
      const int64_t b = bh / H;
      if (b != last_b) {  // every head of a sequence sees the same slots
        n = gather_slots(pp[b], window, dilation, sinks, span, slots.data());
        last_b = b;
      }
      const scalar_t* qh = Q + bh * D;
      const scalar_t* kh = Kp + bh * S * D;
      const scalar_t* vh = Vp + bh * S * D;
      scalar_t* oh = O + bh * D;
      decode_head(qh, kh, vh, oh, slots.data(), n, D, scale2, sc.data());
    }
  });
}

// ---- decode_step: one whole model step for one sequence (see cpu/decode_cpu.cpp)

// y[0:out] = b + x[0:in] @ Wt, Wt (in, out) row-major.
inline void affine(const float* x, int64_t in, const float* Wt, const float* b, int64_t out, float* y) {
  for (int64_t o = 0; o < out; ++o) y[o] = b[o];
  for (int64_t i = 0; i < in; ++i) {
    const float xi = x[i];
    const float* w = Wt + i * out;
    for (int64_t o = 0; o < out; ++o) y[o] += xi * w[o];
  }
}

inline void layer_norm(const float* x, int64_t C, const float* w, const float* b, float* y) {
  float mu = 0;
  for (int64_t c = 0; c < C; ++c) mu += x[c];
  mu /= float(C);
  float var = 0;
  for (int64_t c = 0; c < C; ++c) var += (x[c] - mu) * (x[c] - mu);
  const float r = 1.0f / std::sqrt(var / float(C) + 1e-5f);
  for (int64_t c = 0; c < C; ++c) y[c] = (x[c] - mu) * r * w[c] + b[c];
}

// `P` the packed weights, `K` the per-layer KV caches, `hist` the conv history
// (both updated in place), `dilations` L entries; returns the model output.
float decode_step_impl(const float* x, const float* P, float* K, float* hist, int64_t pos, int64_t F, int64_t C,
                       int64_t H, int64_t d_ff, int64_t k, int64_t sinks, int64_t window, const int64_t* dilations,
                       int64_t L) {
  const int64_t D = C / H;
  auto take = [&](int64_t n) { const float* p = P; P += n; return p; };
  std::vector<float> buf(6 * C + 3 * C + d_ff + (sinks + window) * 3);
  float* h = buf.data();
  float* a = h + C;
  float* y = a + C;
  float* att = y + C;
  float* qkv = att + C;
  float* u = qkv + 3 * C;
  float* sc = u + d_ff;
  std::vector<int64_t> slots(sinks + window);

  // input projection, then the causal depthwise conv over the last k projections
  const float *inp_w = take(F * C), *inp_b = take(C), *conv_w = take(k * C), *conv_b = take(C);
  affine(x, F, inp_w, inp_b, C, h);
  std::memmove(hist, hist + C, sizeof(float) * (k - 1) * C);
  std::memcpy(hist + (k - 1) * C, h, sizeof(float) * C);
  for (int64_t c = 0; c < C; ++c) {
    float s = conv_b[c];
    for (int64_t i = 0; i < k; ++i) s += conv_w[i * C + c] * hist[i * C + c];
    h[c] += s;
  }

  const float scale2 = float((1.0 / std::sqrt(double(D))) * kLog2e);
  for (int64_t l = 0; l < L; ++l) {
    const float *ln1_w = take(C), *ln1_b = take(C), *qkv_w = take(3 * C * C), *qkv_b = take(3 * C);
    const float *proj_w = take(C * C), *proj_b = take(C), *ln2_w = take(C), *ln2_b = take(C);
    const float *fc1_w = take(C * d_ff), *fc1_b = take(d_ff), *fc2_w = take(d_ff * C), *fc2_b = take(C);
    const int64_t dil = dilations[l], span = window * dil, S = sinks + span;
    float* Kl = K;
    float* Vl = K + H * S * D;
    K += 2 * H * S * D;

    layer_norm(h, C, ln1_w, ln1_b, a);
    affine(a, C, qkv_w, qkv_b, 3 * C, qkv);
    const int64_t slot = sinks + pos % span;
    for (int64_t hd = 0; hd < H; ++hd) {
      std::memcpy(Kl + (hd * S + slot) * D, qkv + C + hd * D, sizeof(float) * D);
      std::memcpy(Vl + (hd * S + slot) * D, qkv + 2 * C + hd * D, sizeof(float) * D);
    }
    const int64_t n = gather_slots(pos, window, dil, sinks, span, slots.data());
    for (int64_t hd = 0; hd < H; ++hd)
      decode_head(qkv + hd * D, Kl + hd * S * D, Vl + hd * S * D, att + hd * D, slots.data(), n, D, scale2, sc);
    affine(att, C, proj_w, proj_b, C, y);
    for (int64_t c = 0; c < C; ++c) h[c] += y[c];

    layer_norm(h, C, ln2_w, ln2_b, a);
    affine(a, C, fc1_w, fc1_b, d_ff, u);
    for (int64_t i = 0; i < d_ff; ++i) u[i] = 0.5f * u[i] * (1.0f + std::erf(u[i] * 0.70710678118654752f));
    affine(u, d_ff, fc2_w, fc2_b, C, y);
    for (int64_t c = 0; c < C; ++c) h[c] += y[c];
  }
  const float *lnf_w = take(C), *lnf_b = take(C), *head_w = take(C), *head_b = take(1);
  layer_norm(h, C, lnf_w, lnf_b, a);
  float out = head_b[0];
  for (int64_t c = 0; c < C; ++c) out += a[c] * head_w[c];
  return out;
}

}  // namespace
}  // namespace FR_ISA
}  // namespace cpu
}  // namespace fastrader
