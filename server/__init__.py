"""The language server: the only layer of ghostls that knows LSP (pygls, lsprotocol).

Where each handler runs:
- Document sync (didOpen, didChange, didClose) and configuration changes mutate state, so they run
  on the event loop, synchronously and quickly: an incremental tree-sitter reparse, nothing more.
- Completion requests (inlineCompletion, completion) read an immutable DocumentSnapshot taken on the
  event loop, then run the engine on one worker thread. They are cancellable: `$/cancelRequest` or a
  newer request for the same document sets the request's cancel flag, which the decode loop checks
  between tokens. Generation therefore never blocks typing.
- The model is converted (subprocess) and loaded (thread) in the background after `initialized`.
"""
