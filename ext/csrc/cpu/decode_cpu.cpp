// CPU kernel of fastrader::sparse_attn_decode: one new query per sequence
// against a ring-buffer KV cache (bar-by-bar inference).
//
// The cache holds `sinks` fixed slots, then window*dilation ring slots; key
// position j >= sinks lives in slot sinks + (j mod window*dilation). The query
// at position p sees the sink keys j < min(sinks, p+1) and the window keys
// j = p - m*dilation (m < window) with j >= sinks -- the same set as row p of
// sparse_attn_fwd, a key that is both a sink and in the window counted once.
//
// Per (sequence, head): scores in base 2 (log2(e) folded into the scale),
// then max, exp2 and a weighted sum of the value rows. The work is
// O(window * head_dim): tiny next to the rest of a model step, so calls run
// on the calling thread unless there is a lot of it (a big batch).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "check.h"
#include "cpu/simd.h"

namespace fastrader {
namespace cpu {
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
  for (int64_t i = 0; i < n; ++i) {
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

at::Tensor sparse_attn_decode_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& pos, int64_t window, int64_t dilation, int64_t sinks,
                                  double scale) {
  FR_CHECK(q.dim() == 3, "sparse_attn_decode: q must be (batch, heads, head_dim)");
  FR_CHECK(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes(),
           "sparse_attn_decode: k_cache and v_cache must be equal (batch, heads, slots, head_dim)");
  FR_CHECK(window >= 1 && dilation >= 1 && sinks >= 0, "sparse_attn_decode: bad window/dilation/sinks");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t span = window * dilation;
  FR_CHECK(k_cache.size(0) == B && k_cache.size(1) == H && k_cache.size(3) == D,
           "sparse_attn_decode: cache batch/heads/head_dim must match q");
  FR_CHECK(k_cache.size(2) == sinks + span, "sparse_attn_decode: cache must have sinks + window*dilation slots");
  FR_CHECK(pos.dim() == 1 && pos.size(0) == B && pos.scalar_type() == at::kLong,
           "sparse_attn_decode: pos must be an int64 (batch,) tensor");
  const auto ct = (q.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
  const at::Tensor qc = q.to(ct).contiguous(), kc = k_cache.to(ct).contiguous(),
                   vc = v_cache.to(ct).contiguous(), pc = pos.contiguous();
  at::Tensor out = at::empty({B, H, D}, qc.options());
  if (out.numel() == 0) return out.to(q.scalar_type());
  const int64_t* pp = pc.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) FR_CHECK(pp[b] >= 0, "sparse_attn_decode: pos must be >= 0");
  const int64_t S = sinks + span;
  const int64_t work = B * H * (sinks + window) * D;  // an upper bound on the multiply-adds
  const int64_t grain = work < kDecodeSerialWork ? B * H : std::max<int64_t>(1, (B * H) / (4 * at::get_num_threads()));
  AT_DISPATCH_FLOATING_TYPES(ct, "sparse_attn_decode_cpu", [&] {
    const scalar_t* Q = qc.const_data_ptr<scalar_t>();
    const scalar_t* Kp = kc.const_data_ptr<scalar_t>();
    const scalar_t* Vp = vc.const_data_ptr<scalar_t>();
    scalar_t* O = out.mutable_data_ptr<scalar_t>();
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
  });
  return out.to(q.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrader, CPU, m) { m.impl("sparse_attn_decode", &sparse_attn_decode_cpu); }

}  // namespace cpu
}  // namespace fastrader
