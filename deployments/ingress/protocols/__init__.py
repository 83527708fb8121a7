"""One module per wire protocol: routes that parse with a pure codec, call the
data plane, and encode the answer."""
