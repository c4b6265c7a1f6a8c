// Grouped-query attention over a float16 or int8 KV cache, as onnxruntime custom ops for the CPU provider.
//
// They replace com.microsoft.GroupQueryAttention (with do_rotary=1) in the models ghostls converts for the CPU:
// onnxruntime's CPU kernel keeps the cache in float32 beside float32 activations, so a decode step reads 4 bytes
// per cached value. HalfKvAttention reads 2 (float16), Int8KvAttention about 1 (int8 with one float32 scale per
// row of head_size values, the row's largest magnitude / 127); both read each key and value once for all the
// query heads that share it. At a 1,000-token context that cache read is most of a decode step's attention.
//
// Same inputs as GroupQueryAttention's used ones, minus the empty separate key/value:
//   0 packed q|k|v        float   [batch, sequence, (heads + 2 * kv_heads) * head_size]
//   1 past_key            cache   [batch, kv_heads, cache_length, row]   row: head_size float16, or head_size
//   2 past_value          cache   [batch, kv_heads, cache_length, row]        int8 then the 4 bytes of the scale
//   3 seqlens_k           int32   [batch]      total length - 1, per batch row
//   4 total_seq_length    int32   [1]
//   5 cos_cache, 6 sin_cache float [positions, head_size / 2]   (rotary over the whole head, not interleaved)
// Outputs: attention float [batch, sequence, heads * head_size], present_key, present_value (the cache's type).
// A decode step over the int8 cache scores with integer dot products (the query quantized per head); on a CPU with
// AVX-512 VNNI one vpdpbusd per key row and head (AttendInt8KeysVnni), else AVX2 (AttendInt8Keys): the same
// scores and weights either way (ghostls::UseVnni; paired A/B decode 1.043x at 1,000 tokens, 1.053x at 2,000).
// Which of the two a step took is counted (ghostls::CountRun) for the tests to check.
// When the cache is long enough for the total length (onnxruntime-genai's shared past/present buffer), present
// has past's shape and the new rows are written in place; otherwise present holds exactly the total length.
//
// Never: allocate per key, or read past a row's causal limit.

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "ops.h"
#include "simd.h"

namespace {

using ghostls::Exp8;
using ghostls::HorizontalMax;
using ghostls::HorizontalSum;
using ghostls::Sum8x8;
using ghostls::TailMask;

// Keys converted to float32 at a time: their keys and values take 16 KB at head size 64 (32 at 128), leaving L1
// room for the queries and scores. 64 keys filled a 32 KB L1 at head size 64: paired A/B on the embedded model at
// 1,000 tokens, 32 against 64, decode 1.075x, prefill time 0.958 (smaller tiles measured within noise).
constexpr int kKeyTile = 32;
constexpr int kQueryBlock = 8;        // queries per work item when prefilling
constexpr int kDecodeKeyChunk = 256;  // keys per work item for a single query: splits the cache across threads

inline void HalfToFloat(const uint16_t* src, float* dst, int n) {
  for (int i = 0; i < n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
}

inline void FloatToHalf(const float* src, uint16_t* dst, int n) {
  for (int i = 0; i < n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
}

// How a cache row is stored. Load turns `count` rows into float32 (head_size apart); Store writes one row.
struct HalfCache {
  static constexpr ONNXTensorElementDataType kType = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  static constexpr const char* kName = "HalfKvAttention";
  static int Head(int64_t row_elements) { return static_cast<int>(row_elements); }
  static int64_t RowElements(int head) { return head; }
  static size_t RowBytes(int head) { return 2 * static_cast<size_t>(head); }
  static void Load(const uint8_t* rows, int count, int head, float* out) {
    HalfToFloat(reinterpret_cast<const uint16_t*>(rows), out, count * head);
  }
  static void Store(const float* values, int head, uint8_t* row) {
    FloatToHalf(values, reinterpret_cast<uint16_t*>(row), head);
  }
};

struct Int8Cache {
  static constexpr ONNXTensorElementDataType kType = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  static constexpr const char* kName = "Int8KvAttention";
  static int Head(int64_t row_elements) { return static_cast<int>(row_elements) - 4; }
  static int64_t RowElements(int head) { return head + 4; }
  static size_t RowBytes(int head) { return static_cast<size_t>(head) + 4; }
  static void Load(const uint8_t* rows, int count, int head, float* out) {
    for (int r = 0; r < count; ++r, rows += head + 4, out += head) {
      float scale;
      std::memcpy(&scale, rows + head, sizeof scale);
      const __m256 s = _mm256_set1_ps(scale);
      for (int i = 0; i < head; i += 8) {
        const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(rows + i)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_cvtepi32_ps(q), s));
      }
    }
  }
  // The rows' int8 values as float32, their scales apart (folded into the attention weights instead).
  static void LoadUnscaled(const uint8_t* rows, int count, int head, float* out, float* scales) {
    for (int r = 0; r < count; ++r, rows += head + 4, out += head) {
      std::memcpy(&scales[r], rows + head, sizeof(float));
      for (int i = 0; i < head; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(rows + i)))));
    }
  }
  static void Store(const float* values, int head, uint8_t* row) {
    float largest = 0.0f;
    for (int i = 0; i < head; ++i) largest = std::max(largest, std::fabs(values[i]));
    const float scale = largest > 0.0f ? largest / 127.0f : 1.0f;
    for (int i = 0; i < head; ++i)  // |values / scale| <= 127: no clamp needed
      row[i] = static_cast<uint8_t>(static_cast<int8_t>(std::lrintf(values[i] / scale)));
    std::memcpy(row + head, &scale, sizeof scale);
  }
};

// Rotary embedding over a whole head, halves rotated (GPT-NeoX / Llama layout).
inline void Rotate(const float* x, const float* cos, const float* sin, int head_size, float scale, float* out) {
  const int half = head_size / 2;
  for (int i = 0; i < half; ++i) {
    out[i] = (x[i] * cos[i] - x[i + half] * sin[i]) * scale;
    out[i + half] = (x[i + half] * cos[i] + x[i] * sin[i]) * scale;
  }
}

// One query row's running softmax state: the maximum score so far, the sum of exponentials, the weighted values.
template <int kVecs>
struct RowState {
  float max = -std::numeric_limits<float>::infinity();
  float sum = 0.0f;
  __m256 acc[kVecs];
  RowState() {
    for (auto& a : acc) a = _mm256_setzero_ps();
  }
};

// Turns a tile's scores (kKeyTile floats) into its softmax weights in place, each times value_scales[j] when given
// (0 past n), and moves the row's maximum and sum on; returns the factor the row's weighted values must be
// multiplied by before the tile's are added.
template <int kVecs>
inline float SoftmaxWeights(float* scores, const float* value_scales, int n, RowState<kVecs>& row) {
  // The tile's maximum score, eight lanes at a time (lanes past n are masked out).
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 max8 = neg_inf;
  for (int j0 = 0; j0 < n; j0 += 8) {
    __m256 s = _mm256_load_ps(scores + j0);
    if (j0 + 8 > n) s = _mm256_blendv_ps(s, neg_inf, TailMask(n - j0));
    max8 = _mm256_max_ps(max8, s);
  }
  const float tile_max = HorizontalMax(max8);
  const float new_max = std::max(row.max, tile_max);
  const float rescale = std::exp(row.max - new_max);  // 0 for the first tile (max was -inf)
  row.max = new_max;
  const __m256 m = _mm256_set1_ps(new_max);
  __m256 sum = _mm256_setzero_ps();
  for (int j0 = 0; j0 < n; j0 += 8) {
    __m256 p = Exp8(_mm256_sub_ps(_mm256_load_ps(scores + j0), m));
    if (j0 + 8 > n) p = _mm256_andnot_ps(TailMask(n - j0), p);
    sum = _mm256_add_ps(sum, p);
    if (value_scales != nullptr) p = _mm256_mul_ps(p, _mm256_load_ps(value_scales + j0));
    _mm256_store_ps(scores + j0, p);
  }
  row.sum = row.sum * rescale + HorizontalSum(sum);
  return rescale;
}

// Folds keys [0, n) into a row's state, given their scores (kKeyTile floats, overwritten) and their values as
// float32 rows of kVecs * 8, each multiplied by value_scales[j] when given.
template <int kVecs>
inline void Accumulate(float* scores, const float* values, const float* value_scales, int n, RowState<kVecs>& row) {
  const float rescale = SoftmaxWeights<kVecs>(scores, value_scales, n, row);
  // The weighted values accumulate in registers: row.acc may alias the values as far as the compiler knows.
  const __m256 r = _mm256_set1_ps(rescale);
  __m256 acc[kVecs];
  for (int v = 0; v < kVecs; ++v) acc[v] = _mm256_mul_ps(row.acc[v], r);
  for (int j = 0; j < n; ++j) {
    const __m256 p = _mm256_set1_ps(scores[j]);
    const float* val = values + j * kVecs * 8;
    for (int v = 0; v < kVecs; ++v) acc[v] = _mm256_fmadd_ps(p, _mm256_loadu_ps(val + 8 * v), acc[v]);
  }
  for (int v = 0; v < kVecs; ++v) row.acc[v] = acc[v];
}

// Folds keys [0, n) of a converted tile into a row's state. keys/values: kKeyTile rows of kVecs * 8 floats.
template <int kVecs>
inline void AttendTile(const float* q, const float* keys, const float* values, int n, RowState<kVecs>& row) {
  alignas(32) float scores[kKeyTile];
  __m256 qv[kVecs];
  for (int v = 0; v < kVecs; ++v) qv[v] = _mm256_loadu_ps(q + 8 * v);
  for (int j0 = 0; j0 < n; j0 += 8) {
    __m256 dots[8];
    for (int j = 0; j < 8; ++j) {
      const float* k = keys + (j0 + j) * kVecs * 8;
      __m256 d = _mm256_mul_ps(qv[0], _mm256_loadu_ps(k));
      for (int v = 1; v < kVecs; ++v) d = _mm256_fmadd_ps(qv[v], _mm256_loadu_ps(k + 8 * v), d);
      dots[j] = d;
    }
    _mm256_store_ps(scores + j0, Sum8x8(dots));
  }
  Accumulate<kVecs>(scores, values, nullptr, n, row);
}

// A query head quantized for integer dot products against int8 keys, as llama.cpp does against its Q8_0 cache:
// q8 = round(q / scale), scale = max |q| / 127; kept as |q8| and q8 for _mm256_maddubs_epi16 / _mm256_sign_epi8.
template <int kChunks>
struct Int8Query {
  __m256i magnitude[kChunks], value[kChunks];
  float scale;
  explicit Int8Query(const float* q) {
    float largest = 0.0f;
    for (int i = 0; i < 32 * kChunks; ++i) largest = std::max(largest, std::fabs(q[i]));
    scale = largest > 0.0f ? largest / 127.0f : 1.0f;
    alignas(32) int8_t q8[32 * kChunks];
    for (int i = 0; i < 32 * kChunks; ++i) q8[i] = static_cast<int8_t>(std::lrintf(q[i] / scale));
    for (int c = 0; c < kChunks; ++c) {
      value[c] = _mm256_load_si256(reinterpret_cast<const __m256i*>(q8 + 32 * c));
      magnitude[c] = _mm256_abs_epi8(value[c]);
    }
  }
};

// The eight sums of a[0..7]'s int32 lanes, as one vector.
inline __m256i Sum8x8(const __m256i a[8]) {
  const __m256i t0 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
  const __m256i t1 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[4], a[5]), _mm256_hadd_epi32(a[6], a[7]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(t0, t1, 0x20), _mm256_permute2x128_si256(t0, t1, 0x31));
}

// One query (a decode step) against an int8 tile: scores from integer dot products of the stored key bytes
// (no float tile of keys), each times its row's scale and the query's; the values' scales go into the weights.
// keys: the tile's first stored row; values: the tile converted to float32 without its scales.
template <int kVecs>
inline void AttendInt8Tile(const Int8Query<kVecs / 4>& q, const uint8_t* keys, size_t row_bytes, const float* values,
                           const float* value_scales, int n, RowState<kVecs>& row) {
  constexpr int kChunks = kVecs / 4;
  alignas(32) float scores[kKeyTile];
  alignas(32) float key_scales[8];
  const __m256i ones = _mm256_set1_epi16(1);
  for (int j0 = 0; j0 < n; j0 += 8) {
    __m256i dots[8];
    for (int j = 0; j < 8; ++j) {
      dots[j] = _mm256_setzero_si256();
      key_scales[j] = 0.0f;
      if (j0 + j >= n) continue;  // past the tile: possibly past the buffer too
      const uint8_t* k = keys + (j0 + j) * row_bytes;
      for (int c = 0; c < kChunks; ++c) {
        const __m256i kv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k + 32 * c));
        const __m256i pairs = _mm256_maddubs_epi16(q.magnitude[c], _mm256_sign_epi8(kv, q.value[c]));
        dots[j] = _mm256_add_epi32(dots[j], _mm256_madd_epi16(pairs, ones));
      }
      std::memcpy(&key_scales[j], k + 32 * kChunks, sizeof(float));
    }
    const __m256 dot = _mm256_cvtepi32_ps(Sum8x8(dots));
    _mm256_store_ps(scores + j0, _mm256_mul_ps(_mm256_mul_ps(dot, _mm256_load_ps(key_scales)),
                                               _mm256_set1_ps(q.scale)));
  }
  Accumulate<kVecs>(scores, values, value_scales, n, row);
}

// Everything one Compute call's work items share. A work item is (batch row, kv head, query block, key chunk).
struct Work {
  int batch, sequence, heads, kv_heads, head_size, cache_length;
  const float* queries;  // rotated and scaled: [batch, sequence, heads, head_size]
  const uint8_t* keys;   // present: [batch, kv_heads, cache_length] rows of row_bytes
  const uint8_t* values;
  size_t row_bytes;
  const int* past;       // past length per batch row
  float* out;            // [batch, sequence, heads * head_size]
  int query_blocks, key_chunks, key_chunk;
  float* partials;       // per item, per row: max, sum, head_size weighted values (only when key_chunks > 1)
  ghostls::Kernel scores;  // a decode step over the int8 cache: kInt8AttentionVnni or kInt8AttentionAvx2;
                           // kKernelCount for float scores (prefill, the float16 cache, head size 16)
  int rows_per_item() const { return (heads / kv_heads) * kQueryBlock; }
};

// Asks for the `count` rows of keys and values from row `at` on. The cache streams in from memory (a step's weights
// evict it): asking for the next tile before converting this one overlaps the load of one with the arithmetic of
// the other (hardware prefetch stops at page ends).
inline void PrefetchRows(const Work& w, size_t at, int count) {
  for (size_t line = 0; count > 0 && line < count * w.row_bytes; line += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(w.keys + at * w.row_bytes + line), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w.values + at * w.row_bytes + line), _MM_HINT_T0);
  }
}

// Folds keys [key_begin, key_end) of kv head g, batch row b, into the states of queries [s0, s1) (each causal).
template <class Cache, int kVecs>
void AttendTiles(const Work& w, int b, int g, int s0, int s1, int key_begin, int key_end, RowState<kVecs>* rows) {
  constexpr int kHead = kVecs * 8;
  const int group = w.heads / w.kv_heads;
  const int past = w.past[b];
  alignas(32) float keys[kKeyTile * kHead];
  alignas(32) float values[kKeyTile * kHead];
  const size_t cache_row = (static_cast<size_t>(b) * w.kv_heads + g) * w.cache_length;
  for (int t0 = key_begin; t0 < key_end; t0 += kKeyTile) {
    const int tile = std::min(kKeyTile, key_end - t0);
    PrefetchRows(w, cache_row + t0 + kKeyTile, std::min(kKeyTile, key_end - t0 - kKeyTile));
    Cache::Load(w.keys + (cache_row + t0) * w.row_bytes, tile, kHead, keys);
    Cache::Load(w.values + (cache_row + t0) * w.row_bytes, tile, kHead, values);
    // Rows of a partial last group of eight keys read zeros, not the previous tile's keys.
    std::memset(keys + tile * kHead, 0, sizeof(float) * ((tile + 7) / 8 * 8 - tile) * kHead);
    for (int s = s0; s < s1; ++s) {
      const int visible = std::min(tile, past + s + 1 - t0);  // causal limit within this tile
      if (visible <= 0) continue;
      for (int h = 0; h < group; ++h) {
        const float* q = w.queries + ((static_cast<size_t>(b) * w.sequence + s) * w.heads + g * group + h) * kHead;
        AttendTile<kVecs>(q, keys, values, visible, rows[(s - s0) * group + h]);
      }
    }
  }
}

// Folds keys [key_begin, key_end) of kv head g, batch row b, into the states of the one query of a decode step:
// scores by AttendInt8Tile, values converted per tile without their scales.
template <int kVecs>
void AttendInt8Keys(const Work& w, int b, int g, int key_begin, int key_end, RowState<kVecs>* rows) {
  constexpr int kHead = kVecs * 8;
  const int group = w.heads / w.kv_heads;
  std::vector<Int8Query<kVecs / 4>> queries;
  queries.reserve(group);
  for (int h = 0; h < group; ++h)
    queries.emplace_back(w.queries + (static_cast<size_t>(b) * w.heads + g * group + h) * kHead);
  alignas(32) float values[kKeyTile * kHead];
  alignas(32) float value_scales[kKeyTile];
  const size_t cache_row = (static_cast<size_t>(b) * w.kv_heads + g) * w.cache_length;
  for (int t0 = key_begin; t0 < key_end; t0 += kKeyTile) {
    const int tile = std::min(kKeyTile, key_end - t0);
    PrefetchRows(w, cache_row + t0 + kKeyTile, std::min(kKeyTile, key_end - t0 - kKeyTile));
    Int8Cache::LoadUnscaled(w.values + (cache_row + t0) * w.row_bytes, tile, kHead, values, value_scales);
    std::fill(value_scales + tile, value_scales + kKeyTile, 0.0f);
    for (int h = 0; h < group; ++h)
      AttendInt8Tile<kVecs>(queries[h], w.keys + (cache_row + t0) * w.row_bytes, w.row_bytes, values, value_scales,
                            tile, rows[h]);
  }
}

// AttendInt8Keys with AVX-512 VNNI, for head sizes that are a multiple of 64: one vpdpbusd multiplies a key row's
// 64 bytes (made unsigned: + 128, whose share 128 * sum(q) is taken off again) by the int8 query, and the values
// are converted and weighted 16 floats at a time. The same integer scores and softmax weights as the AVX2 path.
template <int kVecs>
GHOSTLS_AVX512_VNNI void AttendInt8KeysVnni(const Work& w, int b, int g, int key_begin, int key_end,
                                            RowState<kVecs>* rows) {
  constexpr int kHead = kVecs * 8, kChunks = kHead / 64, kVectors = kHead / 16;
  const int group = w.heads / w.kv_heads;
  // The heads' int8 queries as bytes (a std::vector of __m512i would be filled by code built without AVX-512).
  std::vector<int8_t> query_bytes(static_cast<size_t>(group) * kHead);
  std::vector<float> query_scales(group);
  std::vector<int32_t> query_sums(group);
  for (int h = 0; h < group; ++h) {
    const Int8Query<kHead / 32> q(w.queries + (static_cast<size_t>(b) * w.heads + g * group + h) * kHead);
    for (int c = 0; c < kHead / 32; ++c)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(query_bytes.data() + h * kHead + 32 * c), q.value[c]);
    query_scales[h] = q.scale;
    int32_t sum = 0;
    for (int i = 0; i < kHead; ++i) sum += query_bytes[h * kHead + i];
    query_sums[h] = sum;
  }
  alignas(64) uint8_t keys[kKeyTile * kHead];
  alignas(64) float values[kKeyTile * kHead];
  alignas(64) float value_scales[kKeyTile];
  alignas(64) float key_scales[kKeyTile];
  alignas(64) float scores[kKeyTile];
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const size_t cache_row = (static_cast<size_t>(b) * w.kv_heads + g) * w.cache_length;
  for (int t0 = key_begin; t0 < key_end; t0 += kKeyTile) {
    const int tile = std::min(kKeyTile, key_end - t0);
    PrefetchRows(w, cache_row + t0 + kKeyTile, std::min(kKeyTile, key_end - t0 - kKeyTile));
    const uint8_t* key_rows = w.keys + (cache_row + t0) * w.row_bytes;
    const uint8_t* value_rows = w.values + (cache_row + t0) * w.row_bytes;
    for (int j = 0; j < kKeyTile; ++j) {
      if (j >= tile) {  // past the tile: no key (its score is masked; its scale and weight stay 0)
        key_scales[j] = value_scales[j] = 0.0f;
        continue;
      }
      const uint8_t* k = key_rows + j * w.row_bytes;
      const uint8_t* v = value_rows + j * w.row_bytes;
      for (int c = 0; c < kChunks; ++c)
        _mm512_store_si512(keys + j * kHead + 64 * c, _mm512_xor_si512(_mm512_loadu_si512(k + 64 * c), flip));
      for (int c = 0; c < kVectors; ++c)
        _mm512_store_ps(values + j * kHead + 16 * c, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                                         _mm_loadu_si128(reinterpret_cast<const __m128i*>(v + 16 * c)))));
      std::memcpy(&key_scales[j], k + kHead, sizeof(float));
      std::memcpy(&value_scales[j], v + kHead, sizeof(float));
    }
    for (int h = 0; h < group; ++h) {
      __m512i query[kChunks];
      for (int c = 0; c < kChunks; ++c) query[c] = _mm512_loadu_si512(query_bytes.data() + h * kHead + 64 * c);
      const __m256 query_scale = _mm256_set1_ps(query_scales[h]);
      const __m256i offset = _mm256_set1_epi32(128 * query_sums[h]);
      for (int j0 = 0; j0 < tile; j0 += 8) {
        __m256i dots[8];
        for (int j = 0; j < 8; ++j) {
          __m512i d = _mm512_setzero_si512();
          if (j0 + j < tile)
            for (int c = 0; c < kChunks; ++c)
              d = _mm512_dpbusd_epi32(d, _mm512_load_si512(keys + (j0 + j) * kHead + 64 * c), query[c]);
          dots[j] = _mm256_add_epi32(_mm512_castsi512_si256(d), _mm512_extracti64x4_epi64(d, 1));
        }
        const __m256 dot = _mm256_cvtepi32_ps(_mm256_sub_epi32(Sum8x8(dots), offset));
        _mm256_store_ps(scores + j0, _mm256_mul_ps(_mm256_mul_ps(dot, _mm256_load_ps(key_scales + j0)), query_scale));
      }
      RowState<kVecs>& row = rows[h];
      const __m512 rescale = _mm512_set1_ps(SoftmaxWeights<kVecs>(scores, value_scales, tile, row));
      float* state = reinterpret_cast<float*>(row.acc);
      __m512 acc[kVectors];
      for (int c = 0; c < kVectors; ++c) acc[c] = _mm512_mul_ps(_mm512_loadu_ps(state + 16 * c), rescale);
      for (int j = 0; j < tile; ++j) {
        const __m512 p = _mm512_set1_ps(scores[j]);
        for (int c = 0; c < kVectors; ++c) acc[c] = _mm512_fmadd_ps(p, _mm512_load_ps(values + j * kHead + 16 * c), acc[c]);
      }
      for (int c = 0; c < kVectors; ++c) _mm512_storeu_ps(state + 16 * c, acc[c]);
    }
  }
}

template <class Cache, int kVecs>
void RunItem(void* data, size_t index) {
  const Work& w = *static_cast<const Work*>(data);
  constexpr int kHead = kVecs * 8;
  const int group = w.heads / w.kv_heads;
  size_t i = index;
  const int chunk = static_cast<int>(i % w.key_chunks);
  i /= w.key_chunks;
  const int block = static_cast<int>(i % w.query_blocks);
  i /= w.query_blocks;
  const int g = static_cast<int>(i % w.kv_heads);
  const int b = static_cast<int>(i / w.kv_heads);

  const int s0 = block * kQueryBlock, s1 = std::min(w.sequence, s0 + kQueryBlock);
  const int past = w.past[b];
  const int key_begin = chunk * w.key_chunk;
  const int key_end = std::min(past + s1, key_begin + w.key_chunk);  // the block's last query sees past + s1 keys

  std::vector<RowState<kVecs>> rows(static_cast<size_t>(group) * (s1 - s0));
  // The scoring Compute chose (and counted); its kernels exist only for the head sizes it chooses them for.
  bool done = false;
  if constexpr (std::is_same_v<Cache, Int8Cache> && kVecs % 8 == 0) {
    if (w.scores == ghostls::kInt8AttentionVnni) {
      AttendInt8KeysVnni<kVecs>(w, b, g, key_begin, key_end, rows.data());
      done = true;
    }
  }
  if constexpr (std::is_same_v<Cache, Int8Cache> && kVecs % 4 == 0) {
    if (w.scores == ghostls::kInt8AttentionAvx2) {
      AttendInt8Keys<kVecs>(w, b, g, key_begin, key_end, rows.data());
      done = true;
    }
  }
  if (!done) AttendTiles<Cache, kVecs>(w, b, g, s0, s1, key_begin, key_end, rows.data());
  for (int s = s0; s < s1; ++s) {
    for (int h = 0; h < group; ++h) {
      const RowState<kVecs>& row = rows[(s - s0) * group + h];
      if (w.key_chunks == 1) {
        float* out = w.out + ((static_cast<size_t>(b) * w.sequence + s) * w.heads + g * group + h) * kHead;
        const __m256 inv = _mm256_set1_ps(1.0f / row.sum);
        for (int v = 0; v < kVecs; ++v) _mm256_storeu_ps(out + 8 * v, _mm256_mul_ps(row.acc[v], inv));
      } else {
        float* p = w.partials + (index * w.rows_per_item() + (s - s0) * group + h) * (kHead + 2);
        p[0] = row.max;  // -inf when the chunk lies wholly past this row's causal limit
        p[1] = row.sum;
        for (int v = 0; v < kVecs; ++v) _mm256_storeu_ps(p + 2 + 8 * v, row.acc[v]);
      }
    }
  }
}

// Combines the key chunks' partial softmax states of every row (flash-decoding's reduction).
void MergeChunks(const Work& w) {
  const int group = w.heads / w.kv_heads, head = w.head_size;
  for (int b = 0; b < w.batch; ++b)
    for (int g = 0; g < w.kv_heads; ++g)
      for (int s = 0; s < w.sequence; ++s)
        for (int h = 0; h < group; ++h) {
          const size_t first_item = ((static_cast<size_t>(b) * w.kv_heads + g) * w.query_blocks + s / kQueryBlock) *
                                    w.key_chunks;
          const size_t row = (s % kQueryBlock) * group + h;
          auto partial = [&](int c) { return w.partials + ((first_item + c) * w.rows_per_item() + row) * (head + 2); };
          float max = -std::numeric_limits<float>::infinity();
          for (int c = 0; c < w.key_chunks; ++c) max = std::max(max, partial(c)[0]);
          float* out = w.out + ((static_cast<size_t>(b) * w.sequence + s) * w.heads + g * group + h) * head;
          std::fill(out, out + head, 0.0f);
          float sum = 0.0f;
          for (int c = 0; c < w.key_chunks; ++c) {
            const float* p = partial(c);
            if (p[0] == -std::numeric_limits<float>::infinity()) continue;
            const float weight = std::exp(p[0] - max);
            sum += p[1] * weight;
            for (int d = 0; d < head; ++d) out[d] += p[2 + d] * weight;
          }
          for (int d = 0; d < head; ++d) out[d] /= sum;
        }
}

template <class Cache>
struct KvAttentionKernel {
  int heads, kv_heads;
  float scale;
  bool vnni = ghostls::UseVnni();

  KvAttentionKernel(const OrtApi& /*api*/, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo k(info);
    heads = static_cast<int>(k.GetAttribute<int64_t>("num_heads"));
    kv_heads = static_cast<int>(k.GetAttribute<int64_t>("kv_num_heads"));
    scale = k.GetAttribute<float>("scale");
    if (heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0)
      throw Ort::Exception("num_heads must be a positive multiple of kv_num_heads", ORT_INVALID_ARGUMENT);
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return ghostls::StatusOf([&] { Compute(context); });
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const auto qkv = ctx.GetInput(0);
    const auto past_key = ctx.GetInput(1), past_value = ctx.GetInput(2);
    const auto seqlens = ctx.GetInput(3), total_input = ctx.GetInput(4);
    const auto cos_cache = ctx.GetInput(5), sin_cache = ctx.GetInput(6);

    const auto qkv_shape = qkv.GetTensorTypeAndShapeInfo().GetShape();
    const auto past_shape = past_key.GetTensorTypeAndShapeInfo().GetShape();
    const auto rotary_shape = cos_cache.GetTensorTypeAndShapeInfo().GetShape();
    if (qkv_shape.size() != 3 || past_shape.size() != 4 || rotary_shape.size() != 2)
      throw Ort::Exception("KvAttention: packed q|k|v must be 3-D, the caches 4-D, cos/sin 2-D",
                           ORT_INVALID_ARGUMENT);
    const int batch = static_cast<int>(qkv_shape[0]), sequence = static_cast<int>(qkv_shape[1]);
    const int head = Cache::Head(past_shape[3]);
    const int cache_length = static_cast<int>(past_shape[2]);
    if (qkv_shape[2] != static_cast<int64_t>(heads + 2 * kv_heads) * head || past_shape[0] != batch ||
        past_shape[1] != kv_heads || head <= 0 || rotary_shape[1] * 2 != head)
      throw Ort::Exception("KvAttention: shapes do not match num_heads, kv_num_heads and the cache's head size",
                           ORT_INVALID_ARGUMENT);
    void (*run)(void*, size_t) = nullptr;
    switch (head) {
      case 16: run = RunItem<Cache, 2>; break;
      case 32: run = RunItem<Cache, 4>; break;
      case 64: run = RunItem<Cache, 8>; break;
      case 128: run = RunItem<Cache, 16>; break;
      default: throw Ort::Exception("KvAttention: head size must be 16, 32, 64 or 128", ORT_INVALID_ARGUMENT);
    }
    if (total_input.GetTensorTypeAndShapeInfo().GetElementCount() != 1 ||
        seqlens.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(batch))
      throw Ort::Exception("KvAttention: total_sequence_length must hold one value and seqlens_k one per batch row",
                           ORT_INVALID_ARGUMENT);
    const int positions = static_cast<int>(rotary_shape[0]);
    const int total = total_input.GetTensorData<int32_t>()[0];
    const int32_t* seqlens_k = seqlens.GetTensorData<int32_t>();

    std::vector<int> past(batch);
    for (int b = 0; b < batch; ++b) {
      past[b] = seqlens_k[b] + 1 - sequence;
      if (past[b] < 0 || past[b] + sequence > total || past[b] + sequence > positions)
        throw Ort::Exception("KvAttention: seqlens_k out of range for this sequence, total length or rotary cache",
                             ORT_INVALID_ARGUMENT);
    }

    // Shared buffer (the cache already spans the total length): present is past, written in place.
    // Otherwise present holds exactly the total length, past copied in.
    const bool shared = cache_length >= total;
    const int present_length = shared ? cache_length : total;
    const std::vector<int64_t> present_shape{batch, kv_heads, present_length, past_shape[3]};
    const size_t row_bytes = Cache::RowBytes(head);
    auto present_key = ctx.GetOutput(1, present_shape);
    auto present_value = ctx.GetOutput(2, present_shape);
    auto* keys = static_cast<uint8_t*>(present_key.GetTensorMutableRawData());
    auto* values = static_cast<uint8_t*>(present_value.GetTensorMutableRawData());
    const auto* old_keys = static_cast<const uint8_t*>(past_key.GetTensorRawData());
    const auto* old_values = static_cast<const uint8_t*>(past_value.GetTensorRawData());
    for (int b = 0; b < batch; ++b)
      for (int g = 0; g < kv_heads; ++g) {
        const size_t to = (static_cast<size_t>(b) * kv_heads + g) * present_length * row_bytes;
        const size_t from = (static_cast<size_t>(b) * kv_heads + g) * cache_length * row_bytes;
        if (keys + to != old_keys + from) std::memcpy(keys + to, old_keys + from, past[b] * row_bytes);
        if (values + to != old_values + from) std::memcpy(values + to, old_values + from, past[b] * row_bytes);
      }

    // The new tokens: keys rotated into the cache, values copied, queries rotated and pre-scaled.
    const float* packed = qkv.GetTensorData<float>();
    const float* cos = cos_cache.GetTensorData<float>();
    const float* sin = sin_cache.GetTensorData<float>();
    const int half = head / 2, width = (heads + 2 * kv_heads) * head;
    std::vector<float> queries(static_cast<size_t>(batch) * sequence * heads * head);
    std::vector<float> rotated(head);
    for (int b = 0; b < batch; ++b)
      for (int s = 0; s < sequence; ++s) {
        const int position = past[b] + s;
        const float* row = packed + (static_cast<size_t>(b) * sequence + s) * width;
        const float *c = cos + static_cast<size_t>(position) * half, *sn = sin + static_cast<size_t>(position) * half;
        for (int h = 0; h < heads; ++h)
          Rotate(row + h * head, c, sn, head, scale,
                 queries.data() + ((static_cast<size_t>(b) * sequence + s) * heads + h) * head);
        for (int g = 0; g < kv_heads; ++g) {
          const size_t at = ((static_cast<size_t>(b) * kv_heads + g) * present_length + position) * row_bytes;
          Rotate(row + (heads + g) * head, c, sn, head, 1.0f, rotated.data());
          Cache::Store(rotated.data(), head, keys + at);
          Cache::Store(row + (heads + kv_heads + g) * head, head, values + at);
        }
      }

    // A decode step over the int8 cache scores with integer dot products: AVX-512 VNNI for head sizes 64 and 128
    // where the CPU has it, else AVX2 (head sizes 32 and up). Everything else scores in float32.
    ghostls::Kernel scores = ghostls::kKernelCount;
    if (std::is_same_v<Cache, Int8Cache> && sequence == 1 && head % 32 == 0) {
      scores = vnni && head % 64 == 0 ? ghostls::kInt8AttentionVnni : ghostls::kInt8AttentionAvx2;
      ghostls::CountRun(scores);
    }

    const std::vector<int64_t> output_shape{batch, sequence, static_cast<int64_t>(heads) * head};
    float* attention = ctx.GetOutput(0, output_shape).GetTensorMutableData<float>();
    Work w{batch, sequence, heads, kv_heads, head, present_length, queries.data(), keys, values, row_bytes, past.data(),
           attention, (sequence + kQueryBlock - 1) / kQueryBlock, 1, 0, nullptr, scores};
    // One query (decoding): split each head's keys into chunks so that both threads work on a short batch.
    // Batch rows may differ in length: a chunk past a row's length finds no keys for it.
    int max_total = 0;
    for (int b = 0; b < batch; ++b) max_total = std::max(max_total, past[b] + sequence);
    w.key_chunk = max_total;
    if (sequence == 1 && max_total > kDecodeKeyChunk) {
      w.key_chunk = kDecodeKeyChunk;
      w.key_chunks = (max_total + kDecodeKeyChunk - 1) / kDecodeKeyChunk;
    }
    w.key_chunk = std::max(w.key_chunk, 1);
    const size_t items = static_cast<size_t>(batch) * kv_heads * w.query_blocks * w.key_chunks;
    std::vector<float> partials;
    if (w.key_chunks > 1) {
      partials.resize(items * w.rows_per_item() * (head + 2));
      w.partials = partials.data();
    }
    if (items > 0) ctx.ParallelFor(run, items, 0, &w);
    if (w.key_chunks > 1) MergeChunks(w);
  }
};

template <class Cache>
struct KvAttentionOp : Ort::CustomOpBase<KvAttentionOp<Cache>, KvAttentionKernel<Cache>, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    return ghostls::StatusOf([&] { *kernel = new KvAttentionKernel<Cache>(api, info); });
  }
  const char* GetName() const { return Cache::kName; }
  size_t GetInputTypeCount() const { return 7; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    switch (index) {
      case 1:
      case 2: return Cache::kType;
      case 3:
      case 4: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
      default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    }
  }
  size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(size_t index) const {
    return index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : Cache::kType;
  }
};

const KvAttentionOp<HalfCache> kHalfOp;
const KvAttentionOp<Int8Cache> kInt8Op;

}  // namespace

void ghostls::AddAttentionOps(Ort::CustomOpDomain& domain) {
  domain.Add(&kHalfOp);
  domain.Add(&kInt8Op);
}
