"""The language server: the only layer of ghostls that knows LSP (pygls, lsprotocol).

Where each handler runs:
- Document sync (didOpen, didChange, didClose) and configuration changes mutate state, so they run
  on the event loop, synchronously and quickly: an incremental tree-sitter reparse, nothing more.
- Completion requests (inlineCompletion, completion) read an immutable DocumentSnapshot (and their
  DocumentSession's snapshot) taken on the event loop, then run the completion core (ghostls.completion) on
  one worker thread. They are cancellable: `$/cancelRequest`, an edit or a newer request for the same
  document cancels the request's CancelToken, which the decode loop checks between tokens. Generation
  therefore never blocks typing.
- The model is converted (subprocess) and loaded (thread) in the background after `initialized`.
"""
