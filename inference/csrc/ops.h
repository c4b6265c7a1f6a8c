// The op families of libghostls_ops, each added to the one custom op domain, "ai.ghostls", by register.cc.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <exception>

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

// HalfKvAttention, Int8KvAttention and their ...ToInt8 variants (kv_attention.cc).
void AddAttentionOps(Ort::CustomOpDomain& domain);
// GatedSilu (gated_silu.cc).
void AddGatedSiluOp(Ort::CustomOpDomain& domain);
// SkipRmsNorm (skip_rms_norm.cc).
void AddSkipRmsNormOp(Ort::CustomOpDomain& domain);

}  // namespace ghostls
