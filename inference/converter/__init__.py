"""Making the models the runtime loads: a Hugging Face checkpoint or GGUF file converted into a cached ONNX Runtime
GenAI model (convert), its weights requantized (requantize), ghostls's own ops built and put into it (ops).

The keystroke path reaches in only for the cache lookup and the conversion subprocess (convert.cached_model,
convert.convert_in_subprocess) and a model folder's library check (ops.library.is_own_library): torch,
transformers and onnx are imported inside the functions that convert, never when a module is imported.
"""
