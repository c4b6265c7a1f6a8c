// The op families of libghostls_ops, each added to the one custom op domain, "ai.ghostls", by register.cc.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

namespace ghostls {

// HalfKvAttention, Int8KvAttention and their ...ToInt8 variants (kv_attention.cc).
void AddAttentionOps(Ort::CustomOpDomain& domain);
// GatedSilu (gated_silu.cc).
void AddGatedSiluOp(Ort::CustomOpDomain& domain);
// SkipRmsNorm (skip_rms_norm.cc).
void AddSkipRmsNormOp(Ort::CustomOpDomain& domain);

}  // namespace ghostls
