"""Making the models the runtime loads: a Hugging Face checkpoint or GGUF file converted into a cached ONNX Runtime
GenAI model (convert), its weights requantized (requantize), ghostls's own ops built and put into it (ops).

The runtime imports only what checks the cache (convert.cached_model, ops.library.is_own_library) and runs a
conversion as a subprocess: torch, transformers and onnx are imported inside the functions that convert, never
at import time.
"""
