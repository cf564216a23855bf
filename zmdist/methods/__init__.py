"""Methods: small pure functions on tensors/arrays. They know nothing of ranks, files or backends."""
