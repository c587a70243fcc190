// CPU op entries of fastrader::sparse_attn_fwd / sparse_attn_bwd: argument
// checks, dtype handling, allocation and registration, compiled for the
// x86-64 baseline. The kernels themselves (cpu/attention_kernels.h) are
// compiled once per ISA in kernels_<isa>.cpp and called through the table
// chosen at runtime for this CPU (see isa.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "check.h"
#include "cpu/attention_plan.h"
#include "cpu/isa.h"

namespace fastrader {
namespace cpu {

namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  // libgcc's checks include the OS's xgetbv state, not only CPUID.
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(__i386__)
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

const KernelTable& choose() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
#endif
  int cap = 2;  // FASTRADER_CPU_ISA caps the choice; unknown values are ignored
  if (const char* want = std::getenv("FASTRADER_CPU_ISA")) {
    if (!std::strcmp(want, "base")) cap = 0;
    else if (!std::strcmp(want, "avx2")) cap = 1;
  }
  if (cap >= 2 && cpu_has_avx512()) return kernels_avx512;
  if (cap >= 1 && cpu_has_avx2()) return kernels_avx2;
  return kernels_base;
}

}  // namespace

const KernelTable& kernels() {
  static const KernelTable& table = choose();
  return table;
}

namespace {

// -------------------------------------------------------------- op entries

template <typename T>
Geometry make_geometry(const at::Tensor& q, int64_t window, int64_t dilation, int64_t sinks) {
  Geometry g;
  g.N = q.size(2);
  g.D = q.size(3);
  g.Dp = round_up(g.D, vec_width<T>());
  g.W = std::min<int64_t>(window, std::max<int64_t>(g.N, 1));  // a wider window changes nothing
  g.dil = dilation;
  g.S = std::min<int64_t>(sinks, g.N);
  g.nres = std::min<int64_t>(dilation, g.N);
  return g;
}

void check_common(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  int64_t window, int64_t dilation, int64_t sinks, double scale) {
  FR_CHECK(q.dim() == 4, op, ": q must be (batch, heads, seq, head_dim), got ", q.sizes());
  FR_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), op,
              ": q, k, v must have the same shape, got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  FR_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": q, k, v must have the same dtype");
  FR_CHECK(at::isFloatingType(q.scalar_type()), op, ": floating point inputs required, got ",
              q.scalar_type());
  FR_CHECK(q.size(3) >= 1 && q.size(3) <= 256, op, ": head_dim must be in [1, 256], got ", q.size(3));
  FR_CHECK(window >= 1 && dilation >= 1 && sinks >= 0, op,
              ": need window >= 1, dilation >= 1, sinks >= 0, got ", window, ", ", dilation, ", ", sinks);
  FR_CHECK(std::isfinite(scale), op, ": scale must be finite");
}

at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

std::tuple<at::Tensor, at::Tensor> sparse_attn_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                       const at::Tensor& v, int64_t window,
                                                       int64_t dilation, int64_t sinks, double scale) {
  check_common("sparse_attn_fwd", q, k, v, window, dilation, sinks, scale);
  const auto ct = compute_type(q.scalar_type());
  const at::Tensor qc = q.to(ct).contiguous(), kc = k.to(ct).contiguous(), vc = v.to(ct).contiguous();
  at::Tensor out = at::empty(qc.sizes(), qc.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, qc.options());
  if (qc.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "sparse_attn_fwd_cpu", [&] {
      const Geometry g = make_geometry<scalar_t>(qc, window, dilation, sinks);
      run_fwd(kernels(), g, q.size(0) * q.size(1), qc.const_data_ptr<scalar_t>(),
              kc.const_data_ptr<scalar_t>(), vc.const_data_ptr<scalar_t>(),
              out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<scalar_t>(), (scalar_t)scale);
    });
  }
  return {out.to(q.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_attn_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, int64_t window, int64_t dilation, int64_t sinks,
    double scale, const std::optional<at::Tensor>& grad_lse) {
  check_common("sparse_attn_bwd", q, k, v, window, dilation, sinks, scale);
  FR_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
              "sparse_attn_bwd: grad_out and out must have q's shape");
  const std::vector<int64_t> row_shape{q.size(0), q.size(1), q.size(2)};
  FR_CHECK(lse.sizes() == row_shape, "sparse_attn_bwd: lse must be (batch, heads, seq)");
  const bool has_glse = grad_lse.has_value() && grad_lse->defined();
  if (has_glse)
    FR_CHECK(grad_lse->sizes() == row_shape, "sparse_attn_bwd: grad_lse must be (batch, heads, seq)");
  const auto ct = compute_type(q.scalar_type());
  auto prep = [&](const at::Tensor& t) { return t.to(ct).contiguous(); };
  const at::Tensor qc = prep(q), kc = prep(k), vc = prep(v), oc = prep(out), gc = prep(grad_out),
                   lc = prep(lse);
  const at::Tensor glc = has_glse ? prep(*grad_lse) : at::Tensor();
  at::Tensor dq = at::empty(qc.sizes(), qc.options());
  at::Tensor dk = at::zeros(qc.sizes(), qc.options());
  at::Tensor dv = at::zeros(qc.sizes(), qc.options());
  if (qc.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ct, "sparse_attn_bwd_cpu", [&] {
      const Geometry g = make_geometry<scalar_t>(qc, window, dilation, sinks);
      const Head<scalar_t> h{qc.const_data_ptr<scalar_t>(),
                             kc.const_data_ptr<scalar_t>(),
                             vc.const_data_ptr<scalar_t>(),
                             oc.const_data_ptr<scalar_t>(),
                             gc.const_data_ptr<scalar_t>(),
                             lc.const_data_ptr<scalar_t>(),
                             has_glse ? glc.const_data_ptr<scalar_t>() : nullptr,
                             dq.mutable_data_ptr<scalar_t>(),
                             dk.mutable_data_ptr<scalar_t>(),
                             dv.mutable_data_ptr<scalar_t>()};
      run_bwd(kernels(), g, q.size(0) * q.size(1), h, (scalar_t)scale);
    });
  }
  const auto dt = q.scalar_type();
  return {dq.to(dt), dk.to(dt), dv.to(dt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrader, CPU, m) {
  m.impl("sparse_attn_fwd", &sparse_attn_fwd_cpu);
  m.impl("sparse_attn_bwd", &sparse_attn_bwd_cpu);
}

}  // namespace cpu
}  // namespace fastrader

extern "C" const char* fastrader_cpu_isa_compiled() { return "base,avx2,avx512"; }
extern "C" const char* fastrader_cpu_isa_selected() { return fastrader::cpu::kernels().isa; }
