"""One module per wire protocol: routes that parse with a pure codec, call the
model registry, and encode the answer."""
