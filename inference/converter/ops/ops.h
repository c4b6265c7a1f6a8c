// The op families of libghostls_ops, each added to the one custom op domain, "ai.ghostls", by register.cc.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <exception>

// A function compiled for AVX-512 with VNNI, called only where UseVnni() says the CPU has them.
#define GHOSTLS_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512dq,avx512vnni")))

namespace ghostls {

// Runs `work`, returning its exception as an onnxruntime status: no exception may cross into onnxruntime's C
// frames (each op's CreateKernelV2 and ComputeV2 go through it).
template <class Work>
OrtStatusPtr StatusOf(Work&& work) noexcept {
  try {
    work();
    return nullptr;
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
}

// Whether the kernels may take their AVX-512 VNNI paths: the CPU has them and GHOSTLS_KERNELS=avx2 is not set in
// the environment when the session makes its kernels (the tests run both paths on a VNNI machine that way).
inline bool UseVnni() {
  const char* forced = std::getenv("GHOSTLS_KERNELS");
  if (forced != nullptr && std::strcmp(forced, "avx2") == 0) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
}

// The kernels a CPU's features choose between, each counted when a Compute call runs it, so that a test can tell
// which one a session took (a VNNI machine and GHOSTLS_KERNELS=avx2 must not quietly test AVX2 against itself).
// Read through register.cc's exported GhostlsKernelName / GhostlsKernelRuns; one relaxed atomic add a call.
enum Kernel : int {
  kInt8MatMulVnni,
  kInt8MatMulAvx2,
  kInt8AttentionVnni,  // a decode step's integer scores over the int8 cache (head sizes 64 and 128)
  kInt8AttentionAvx2,  // the same, head sizes 32, 64 and 128
  kKernelCount,
};
inline constexpr const char* kKernelNames[kKernelCount] = {"Int8MatMul.avx512vnni", "Int8MatMul.avx2",
                                                           "Int8KvAttention.avx512vnni", "Int8KvAttention.avx2"};
void CountRun(Kernel kernel);

// Runs fn(data, row) for rows 0..rows-1: inline for one row (a decode step: no hand-off to the other threads),
// across onnxruntime's intra-op threads for more.
inline void ForEachRow(const Ort::KernelContext& ctx, void (*fn)(void*, size_t), size_t rows, void* data) {
  if (rows == 1)
    fn(data, 0);
  else if (rows > 1)
    ctx.ParallelFor(fn, rows, 0, data);
}

// An op whose inputs and outputs are all float tensors: the first kRequiredInputs of kInputs inputs required, the
// rest optional; output 0 required, the other kOutputs - 1 optional. Kernel(api, info) makes its kernel.
template <class Kernel, size_t kInputs, size_t kRequiredInputs, size_t kOutputs>
struct FloatOp : Ort::CustomOpBase<FloatOp<Kernel, kInputs, kRequiredInputs, kOutputs>, Kernel, true> {
  const char* name;
  explicit FloatOp(const char* op_name) : name(op_name) {}
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    return StatusOf([&] { *kernel = new Kernel(api, info); });
  }
  const char* GetName() const { return name; }
  size_t GetInputTypeCount() const { return kInputs; }
  ONNXTensorElementDataType GetInputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index < kRequiredInputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return kOutputs; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

// HalfKvAttention and Int8KvAttention (kv_attention.cc).
void AddAttentionOps(Ort::CustomOpDomain& domain);
// GatedSilu (gated_silu.cc).
void AddGatedSiluOp(Ort::CustomOpDomain& domain);
// SkipRmsNorm (skip_rms_norm.cc).
void AddSkipRmsNormOp(Ort::CustomOpDomain& domain);
// Int8MatMul (int8_matmul.cc).
void AddInt8MatMulOp(Ort::CustomOpDomain& domain);

}  // namespace ghostls
