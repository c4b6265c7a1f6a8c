// SkipRmsNorm: onnxruntime's SkipSimplifiedLayerNormalization with the Add before it folded in.
//
// A decoder layer ends each half with `residual + projection` and an RMS norm of that sum. In Q4_1 models the
// down projection is still one node short of done there: it leaves its offsets to an Add (requantize.py). This
// op adds them as it sums, so that node does not run (each node a decode step runs costs it microseconds of its
// own: docs/benchmarks.md).
//   input 0   residual     float [..., h]
//   input 1   skip         float [..., h]
//   input 2   gamma        float [h]
//   input 3   extra        float [..., h]  optional: added to the sum
//   output 0  normalized   float [..., h]  sum / sqrt(mean(sum^2) + epsilon) * gamma
//   output 1  sum          float [..., h]  optional: residual + skip + extra, the next residual
//   attribute epsilon      float

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "ops.h"
#include "simd.h"

namespace {

struct Rows {
  const float *residual, *skip, *gamma, *extra;
  float *normalized, *sum;
  int h;
  float epsilon;
};

void RunRow(void* data, size_t row) {
  const Rows& r = *static_cast<const Rows*>(data);
  const size_t at = row * static_cast<size_t>(r.h);
  const float *residual = r.residual + at, *skip = r.skip + at;
  const float* extra = r.extra ? r.extra + at : nullptr;
  float *sum = r.sum + at, *out = r.normalized + at;
  __m256 squares8 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= r.h; i += 8) {
    __m256 s = _mm256_add_ps(_mm256_loadu_ps(skip + i), _mm256_loadu_ps(residual + i));
    if (extra) s = _mm256_add_ps(s, _mm256_loadu_ps(extra + i));
    _mm256_storeu_ps(sum + i, s);
    squares8 = _mm256_fmadd_ps(s, s, squares8);
  }
  float squares = ghostls::HorizontalSum(squares8);
  for (; i < r.h; ++i) {
    sum[i] = skip[i] + residual[i] + (extra ? extra[i] : 0.0f);
    squares += sum[i] * sum[i];
  }
  const float inverse = 1.0f / std::sqrt(squares / static_cast<float>(r.h) + r.epsilon);
  const __m256 inverse8 = _mm256_set1_ps(inverse);
  for (i = 0; i + 8 <= r.h; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(sum + i), inverse8),
                                            _mm256_loadu_ps(r.gamma + i)));
  for (; i < r.h; ++i) out[i] = sum[i] * inverse * r.gamma[i];
}

struct SkipRmsNormKernel {
  float epsilon;

  SkipRmsNormKernel(const OrtApi& /*api*/, const OrtKernelInfo* info) {
    epsilon = Ort::ConstKernelInfo(info).GetAttribute<float>("epsilon");
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return ghostls::StatusOf([&] { Compute(context); });
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const auto residual = ctx.GetInput(0), skip = ctx.GetInput(1), gamma = ctx.GetInput(2);
    const auto shape = residual.GetTensorTypeAndShapeInfo().GetShape();
    const size_t count = residual.GetTensorTypeAndShapeInfo().GetElementCount();
    if (shape.empty() || shape.back() <= 0 || skip.GetTensorTypeAndShapeInfo().GetShape() != shape ||
        gamma.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(shape.back()))
      throw Ort::Exception("SkipRmsNorm: residual and skip must have one shape, gamma its last dimension",
                           ORT_INVALID_ARGUMENT);
    const int h = static_cast<int>(shape.back());
    const size_t rows = count / h;
    Rows r{residual.GetTensorData<float>(), skip.GetTensorData<float>(), gamma.GetTensorData<float>(),
           nullptr, nullptr, nullptr, h, epsilon};
    const auto extra = ctx.GetInputCount() > 3 ? ctx.GetInput(3) : Ort::ConstValue(nullptr);
    if (extra) {
      if (extra.GetTensorTypeAndShapeInfo().GetShape() != shape)
        throw Ort::Exception("SkipRmsNorm: extra must have the residual's shape", ORT_INVALID_ARGUMENT);
      r.extra = extra.GetTensorData<float>();
    }
    r.normalized = ctx.GetOutput(0, shape).GetTensorMutableData<float>();
    std::vector<float> scratch;
    auto sum = ctx.GetOutputCount() > 1 ? ctx.GetOutput(1, shape) : Ort::UnownedValue(nullptr);
    if (sum) {
      r.sum = sum.GetTensorMutableData<float>();
    } else {
      scratch.resize(count);
      r.sum = scratch.data();
    }
    ghostls::ForEachRow(ctx, RunRow, rows, &r);
  }
};

const ghostls::FloatOp<SkipRmsNormKernel, 4, 3, 2> kSkipRmsNormOp("SkipRmsNorm");

}  // namespace

void ghostls::AddSkipRmsNormOp(Ort::CustomOpDomain& domain) { domain.Add(&kSkipRmsNormOp); }
