// The library's entry point: onnxruntime calls RegisterCustomOps when a session names this library.

#include <atomic>
#include <cstdint>
#include <mutex>
#include <stdexcept>

#include "ops.h"

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return nullptr;  // an onnxruntime older than this header: the ops stay unknown, and say so
  Ort::InitApi(api);
  // One domain for the library's lifetime: sessions keep a pointer to it.
  static Ort::CustomOpDomain* domain = nullptr;
  static std::mutex mutex;
  try {
    std::lock_guard<std::mutex> lock(mutex);
    if (domain == nullptr) {
      domain = new Ort::CustomOpDomain("ai.ghostls");
      ghostls::AddAttentionOps(*domain);
      ghostls::AddGatedSiluOp(*domain);
      ghostls::AddSkipRmsNormOp(*domain);
      ghostls::AddInt8MatMulOp(*domain);
    }
    Ort::UnownedSessionOptions(options).Add(*domain);
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}

namespace {
std::atomic<uint64_t> kernel_runs[ghostls::kKernelCount];
}  // namespace

void ghostls::CountRun(Kernel kernel) { kernel_runs[kernel].fetch_add(1, std::memory_order_relaxed); }

// The name of kernel `index` ("Int8MatMul.avx512vnni", ...), nullptr past the last: with GhostlsKernelRuns, how
// the tests read which kernels ran (library.py `kernel_runs`).
extern "C" __attribute__((visibility("default"))) const char* GhostlsKernelName(int index) {
  return index >= 0 && index < ghostls::kKernelCount ? ghostls::kKernelNames[index] : nullptr;
}

// How many Compute calls in this process ran kernel `index`; 0 past the last.
extern "C" __attribute__((visibility("default"))) uint64_t GhostlsKernelRuns(int index) {
  return index >= 0 && index < ghostls::kKernelCount ? kernel_runs[index].load(std::memory_order_relaxed) : 0;
}
