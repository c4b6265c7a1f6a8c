// The library's entry point: onnxruntime calls RegisterCustomOps when a session names this library.

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
