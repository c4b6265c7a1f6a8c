// Int8MatMul: x @ W for int8 weights (one scale per output column) against int8 activations (one scale per row),
// the activations quantized inside the op.
//
// Stands in for requantize.py's W8A8 MatMuls (onnxruntime's DynamicQuantizeMatMul, and MatMulIntegerToFloat with
// the five nodes quantizing its input per token and the Mul after it). A decode step multiplies one row by each
// weight, so it is a matrix-vector product bound by reading the weights: in onnxruntime's u8s8 GEMM that read ran
// at 12-14 GB/s on this repository's 2-core test machine, where these kernels, stand-alone, read 20 (AVX2) and
// 26 GB/s (AVX-512 VNNI), and in the model decode got 1.23x faster (docs/benchmarks.md). The weights
// come packed for those kernels (int8_matmul.py's `pack_weight`): tiles of 16 output columns, each tile
// [K / 4][16][4], so one 64-byte load holds four consecutive input rows of 16 columns, which is what one VNNI
// instruction (or two AVX2 ymm) multiplies by a broadcast of four activation bytes.
//   input 0   x        float [..., K]
//   input 1   weight   int8  [N / 16, K / 4, 16, 4]  q[k, n] = round(127 * W[k, n] / max_k |W[k, n]|), packed
//   input 2   scales   float [N]                     max_k |W[k, n]| / 127
//   input 3   sums     int32 [N]                     sum_k q[k, n]: what the VNNI kernel's unsigned bytes add
//   output 0  y        float [..., N]                sum_k xq[k] * q[k, n] * amax(x) / 127 * scales[n]
// Each row of x is quantized as xq = round(127 * x / amax(|x|)) (a zero row stays zero). The integer sums are
// exact in both kernels (AVX2 multiplies |xq| by q with xq's sign, so no 16-bit pair can saturate), so the two
// give the same output. GHOSTLS_KERNELS=avx2 in the environment when a session is made picks the AVX2 kernel on a
// CPU that has VNNI (ghostls::UseVnni; the tests run both, and check which ran with ghostls::CountRun).

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "ops.h"
#include "simd.h"

namespace {

constexpr int kTile = 16;        // output columns a tile
constexpr int kGroupTiles = 4;   // tiles one work item multiplies (64 columns)
constexpr int kItemRows = 16;    // rows one work item multiplies, in prefill

// One Compute call's operands: QuantizeOne fills xq and row_scale from x, then RunItem multiplies.
struct Problem {
  const float* x;
  int8_t* xq;        // [rows, K]: the quantized rows, each byte + 128 for the VNNI kernel
  float* row_scale;  // [rows]: amax / 127
  const int8_t* weight;
  const float* scales;
  const int32_t* sums;
  float* y;
  int k, n, rows;
  bool vnni;
};

void QuantizeRow(const float* x, int k, bool as_unsigned, int8_t* q, float* scale) {
  __m256 amax8 = _mm256_setzero_ps();
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int i = 0;
  for (; i + 8 <= k; i += 8) amax8 = _mm256_max_ps(amax8, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
  float amax = ghostls::HorizontalMax(amax8);
  for (; i < k; ++i) amax = std::max(amax, std::fabs(x[i]));
  *scale = amax / 127.0f;
  const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
  const uint8_t flip = as_unsigned ? 0x80 : 0;  // + 128 on a two's-complement byte
  const __m256 inverse8 = _mm256_set1_ps(inverse);
  const __m128i flip16 = _mm_set1_epi8(static_cast<char>(flip));
  for (i = 0; i + 8 <= k; i += 8) {
    // Rounded to nearest even (the default rounding mode), as std::nearbyint below; |x| <= amax keeps it in 127.
    const __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), inverse8));
    const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), _mm_xor_si128(_mm_packs_epi16(words, words), flip16));
  }
  for (; i < k; ++i) {
    const int v = static_cast<int>(std::nearbyint(x[i] * inverse));
    q[i] = static_cast<int8_t>(static_cast<uint8_t>(std::clamp(v, -127, 127)) ^ flip);
  }
}

// y[r, t*16 .. t*16+15] for kRows rows from `row` and kTiles tiles from `tile`, AVX-512 VNNI: one vpdpbusd
// multiplies four unsigned activation bytes by four weight bytes for 16 columns and adds them in 32 bits.
template <int kRows, int kTiles>
GHOSTLS_AVX512_VNNI void TilesVnni(const Problem& p, int row, int tile) {
  const size_t tile_bytes = static_cast<size_t>(p.k) * kTile;
  const int8_t* w = p.weight + static_cast<size_t>(tile) * tile_bytes;
  __m512i acc[kRows][kTiles];
  for (int r = 0; r < kRows; ++r)
    for (int t = 0; t < kTiles; ++t) acc[r][t] = _mm512_setzero_si512();
  const int32_t* x[kRows];
  for (int r = 0; r < kRows; ++r) x[r] = reinterpret_cast<const int32_t*>(p.xq + static_cast<size_t>(row + r) * p.k);
  for (int quad = 0; quad < p.k / 4; ++quad) {
    __m512i wt[kTiles];
    for (int t = 0; t < kTiles; ++t) wt[t] = _mm512_loadu_si512(w + t * tile_bytes + quad * 64);
    for (int r = 0; r < kRows; ++r) {
      int32_t bytes;
      std::memcpy(&bytes, x[r] + quad, 4);
      const __m512i xb = _mm512_set1_epi32(bytes);
      for (int t = 0; t < kTiles; ++t) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], xb, wt[t]);
    }
  }
  for (int t = 0; t < kTiles; ++t) {
    const int n = (tile + t) * kTile;
    const __m512i offset = _mm512_slli_epi32(_mm512_loadu_si512(p.sums + n), 7);  // 128 * sum_k q[k, n]
    const __m512 scales = _mm512_loadu_ps(p.scales + n);
    for (int r = 0; r < kRows; ++r) {
      const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][t], offset));
      _mm512_storeu_ps(p.y + static_cast<size_t>(row + r) * p.n + n,
                       _mm512_mul_ps(v, _mm512_mul_ps(scales, _mm512_set1_ps(p.row_scale[row + r]))));
    }
  }
}

// The same for AVX2: |xq| (unsigned) times q with xq's sign by vpmaddubsw (no pair exceeds 2 * 127 * 127), the
// pairs summed to 32 bits by vpmaddwd. A tile is two ymm of eight columns.
template <int kTiles>
void TilesAvx2(const Problem& p, int row, int tile) {
  const size_t tile_bytes = static_cast<size_t>(p.k) * kTile;
  const int8_t* w = p.weight + static_cast<size_t>(tile) * tile_bytes;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[kTiles][2];
  for (int t = 0; t < kTiles; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_si256();
  const int8_t* x = p.xq + static_cast<size_t>(row) * p.k;
  for (int quad = 0; quad < p.k / 4; ++quad) {
    int32_t bytes;
    std::memcpy(&bytes, x + quad * 4, 4);
    const __m256i xb = _mm256_set1_epi32(bytes);
    const __m256i magnitude = _mm256_abs_epi8(xb);
    for (int t = 0; t < kTiles; ++t)
      for (int h = 0; h < 2; ++h) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + t * tile_bytes + quad * 64 + h * 32));
        const __m256i pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(wv, xb));
        acc[t][h] = _mm256_add_epi32(acc[t][h], _mm256_madd_epi16(pairs, ones));
      }
  }
  const __m256 row_scale = _mm256_set1_ps(p.row_scale[row]);
  for (int t = 0; t < kTiles; ++t)
    for (int h = 0; h < 2; ++h) {
      const int n = (tile + t) * kTile + h * 8;
      _mm256_storeu_ps(p.y + static_cast<size_t>(row) * p.n + n,
                       _mm256_mul_ps(_mm256_cvtepi32_ps(acc[t][h]),
                                     _mm256_mul_ps(_mm256_loadu_ps(p.scales + n), row_scale)));
    }
}

template <int kTiles>
void Tiles(const Problem& p, int row0, int row1, int tile) {
  if (p.vnni) {
    int r = row0;
    for (; r + 2 <= row1; r += 2) TilesVnni<2, kTiles>(p, r, tile);
    if (r < row1) TilesVnni<1, kTiles>(p, r, tile);
  } else {
    for (int r = row0; r < row1; ++r) {
      if constexpr (kTiles > 2) {
        TilesAvx2<2>(p, r, tile);
        TilesAvx2<kTiles - 2>(p, r, tile + 2);
      } else {
        TilesAvx2<kTiles>(p, r, tile);
      }
    }
  }
}

// Work item i: the rows of block i % row_blocks for the tile group i / row_blocks. Consecutive items share their
// weights, which stay in cache while the rows (a prompt's: K bytes each) go by.
void RunItem(void* data, size_t item) {
  const Problem& p = *static_cast<const Problem*>(data);
  const int row_blocks = (p.rows + kItemRows - 1) / kItemRows;
  const int group = static_cast<int>(item / row_blocks);
  const int row0 = static_cast<int>(item % row_blocks) * kItemRows;
  const int row1 = std::min(p.rows, row0 + kItemRows);
  const int tile = group * kGroupTiles;
  switch (std::min(kGroupTiles, p.n / kTile - tile)) {
    case 1: Tiles<1>(p, row0, row1, tile); break;
    case 2: Tiles<2>(p, row0, row1, tile); break;
    case 3: Tiles<3>(p, row0, row1, tile); break;
    default: Tiles<4>(p, row0, row1, tile); break;
  }
}

void QuantizeOne(void* data, size_t row) {
  const Problem& p = *static_cast<const Problem*>(data);
  QuantizeRow(p.x + row * static_cast<size_t>(p.k), p.k, p.vnni, p.xq + row * static_cast<size_t>(p.k),
              p.row_scale + row);
}

struct Int8MatMulKernel {
  bool vnni;
  Int8MatMulKernel(const OrtApi& /*api*/, const OrtKernelInfo* /*info*/) : vnni(ghostls::UseVnni()) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return ghostls::StatusOf([&] { Compute(context); });
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const auto x = ctx.GetInput(0);
    const auto weight = ctx.GetInput(1);
    const auto scales = ctx.GetInput(2);
    const auto sums = ctx.GetInput(3);
    std::vector<int64_t> shape = x.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> w_shape = weight.GetTensorTypeAndShapeInfo().GetShape();
    if (w_shape.size() != 4 || w_shape[2] != kTile || w_shape[3] != 4 || w_shape[0] <= 0 || w_shape[1] <= 0)
      throw Ort::Exception("Int8MatMul: the weight must be packed as [N / 16, K / 4, 16, 4]", ORT_INVALID_ARGUMENT);
    const int64_t k = w_shape[1] * 4, n = w_shape[0] * kTile;
    if (shape.empty() || shape.back() != k)
      throw Ort::Exception("Int8MatMul: x's last dimension must be the weight's K (" + std::to_string(k) + ")",
                           ORT_INVALID_ARGUMENT);
    if (scales.GetTensorTypeAndShapeInfo().GetShape() != std::vector<int64_t>{n} ||
        sums.GetTensorTypeAndShapeInfo().GetShape() != std::vector<int64_t>{n})
      throw Ort::Exception("Int8MatMul: scales and sums must be [N] (" + std::to_string(n) + ")",
                           ORT_INVALID_ARGUMENT);
    int64_t rows = 1;
    for (size_t d = 0; d + 1 < shape.size(); ++d) rows *= shape[d];
    shape.back() = n;
    float* y = ctx.GetOutput(0, shape).GetTensorMutableData<float>();
    if (rows == 0) return;

    std::vector<int8_t> xq(static_cast<size_t>(rows * k));
    std::vector<float> row_scale(static_cast<size_t>(rows));
    Problem p{x.GetTensorData<float>(), xq.data(), row_scale.data(), weight.GetTensorData<int8_t>(),
              scales.GetTensorData<float>(), sums.GetTensorData<int32_t>(), y, static_cast<int>(k),
              static_cast<int>(n), static_cast<int>(rows), vnni};
    ghostls::CountRun(p.vnni ? ghostls::kInt8MatMulVnni : ghostls::kInt8MatMulAvx2);
    ghostls::ForEachRow(ctx, QuantizeOne, static_cast<size_t>(rows), &p);

    const int64_t groups = (n / kTile + kGroupTiles - 1) / kGroupTiles;
    const size_t items = static_cast<size_t>((rows + kItemRows - 1) / kItemRows * groups);
    ctx.ParallelFor(RunItem, items, 0, &p);
  }
};

struct Int8MatMulOp : Ort::CustomOpBase<Int8MatMulOp, Int8MatMulKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    return ghostls::StatusOf([&] { *kernel = new Int8MatMulKernel(api, info); });
  }
  const char* GetName() const { return "Int8MatMul"; }
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    switch (index) {
      case 1: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
      case 3: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
      default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    }
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

const Int8MatMulOp kInt8MatMulOp;

}  // namespace

void ghostls::AddInt8MatMulOp(Ort::CustomOpDomain& domain) { domain.Add(&kInt8MatMulOp); }
