// GatedSilu: a gated MLP's activation in one node, and the block sums a Q4_1 down projection's offsets need.
//
// Replaces, per decoder layer, the Split of the fused gate|up MatMul's output, Sigmoid, two Muls and (with the
// offsets weight) the Reshape, ReduceSum and MatMul of requantize.py's Q4_1 offsets: six nodes onnxruntime runs
// one after another on a few thousand floats each, where each node's own cost, not its arithmetic, is what a
// decode step pays (docs/benchmarks.md).
//   input 0   gate|up   float [..., 2n]   the gate's n columns, then the up projection's
//   input 1   offsets   float [n / 32, m] optional: R of requantize.py's `x @ W = MatMulNBits(x) + blocksum(x) @ R`
//   output 0  y         float [..., n]    silu(gate) * up = gate * up / (1 + e^-gate)
//   output 1  offsets   float [..., m]    with input 1: the sums of y's blocks of 32, times R

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "ops.h"
#include "simd.h"

namespace {

constexpr int kBlock = 32;  // requantize.py's BLOCK: the Q4_1 blocks along the down projection's input

struct Rows {
  const float* gate_up;
  const float* weight;  // [n / 32, m], or null
  float* y;
  float* offsets;
  int n, m;
};

void RunRow(void* data, size_t row) {
  const Rows& r = *static_cast<const Rows*>(data);
  const float* gate = r.gate_up + row * 2 * static_cast<size_t>(r.n);
  const float* up = gate + r.n;
  float* y = r.y + row * static_cast<size_t>(r.n);
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  int i = 0;
  for (; i + 8 <= r.n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = ghostls::Exp8(_mm256_xor_ps(g, sign));
    _mm256_storeu_ps(y + i, _mm256_div_ps(_mm256_mul_ps(g, _mm256_loadu_ps(up + i)), _mm256_add_ps(one, e)));
  }
  for (; i < r.n; ++i) y[i] = gate[i] * up[i] / (1.0f + std::exp(-gate[i]));
  if (r.weight == nullptr) return;

  float* out = r.offsets + row * static_cast<size_t>(r.m);
  std::fill(out, out + r.m, 0.0f);
  for (int b = 0; b < r.n / kBlock; ++b) {
    __m256 s = _mm256_loadu_ps(y + b * kBlock);
    for (int v = 8; v < kBlock; v += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(y + b * kBlock + v));
    const float sum = ghostls::HorizontalSum(s);
    const __m256 sums = _mm256_set1_ps(sum);
    const float* w = r.weight + static_cast<size_t>(b) * r.m;
    int j = 0;
    for (; j + 8 <= r.m; j += 8)
      _mm256_storeu_ps(out + j, _mm256_fmadd_ps(sums, _mm256_loadu_ps(w + j), _mm256_loadu_ps(out + j)));
    for (; j < r.m; ++j) out[j] += sum * w[j];
  }
}

struct GatedSiluKernel {
  GatedSiluKernel(const OrtApi& /*api*/, const OrtKernelInfo* /*info*/) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return ghostls::StatusOf([&] { Compute(context); });
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const auto gate_up = ctx.GetInput(0);
    std::vector<int64_t> shape = gate_up.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty() || shape.back() % 2 != 0 || shape.back() == 0)
      throw Ort::Exception("GatedSilu: gate|up's last dimension must be even and not 0", ORT_INVALID_ARGUMENT);
    const int n = static_cast<int>(shape.back() / 2);
    size_t rows = 1;
    for (size_t d = 0; d + 1 < shape.size(); ++d) rows *= static_cast<size_t>(shape[d]);

    Rows r{gate_up.GetTensorData<float>(), nullptr, nullptr, nullptr, n, 0};
    const auto weight = ctx.GetInputCount() > 1 ? ctx.GetInput(1) : Ort::ConstValue(nullptr);
    if (weight) {
      const auto w_shape = weight.GetTensorTypeAndShapeInfo().GetShape();
      if (w_shape.size() != 2 || n % kBlock != 0 || w_shape[0] != n / kBlock || w_shape[1] <= 0)
        throw Ort::Exception("GatedSilu: the offsets weight must be [n / 32, m], n a multiple of 32",
                             ORT_INVALID_ARGUMENT);
      r.weight = weight.GetTensorData<float>();
      r.m = static_cast<int>(w_shape[1]);
    }
    shape.back() = n;
    r.y = ctx.GetOutput(0, shape).GetTensorMutableData<float>();
    if (r.weight != nullptr) {
      shape.back() = r.m;
      auto offsets = ctx.GetOutput(1, shape);
      if (!offsets) throw Ort::Exception("GatedSilu: the offsets weight needs output 1", ORT_INVALID_ARGUMENT);
      r.offsets = offsets.GetTensorMutableData<float>();
    }
    ghostls::ForEachRow(ctx, RunRow, rows, &r);
  }
};

const ghostls::FloatOp<GatedSiluKernel, 2, 1, 2> kGatedSiluOp("GatedSilu");

}  // namespace

void ghostls::AddGatedSiluOp(Ort::CustomOpDomain& domain) { domain.Add(&kGatedSiluOp); }
