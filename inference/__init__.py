"""Everything between a prompt and its completion. The keystroke path lives here: the decode loop with KV-cache
reuse (engine), the backend interface and its local and remote implementations (backend, remote), FIM templates
(fim), the choice of execution provider (provider), the model cache (cache) and the embedded default model
(embedded). Making a model the engine can load is the converter sub-package's work; the keystroke path never
imports torch, transformers or onnx.
"""
