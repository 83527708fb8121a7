"""Pure codecs: bytes and JSON in, numpy out, and back. No Ray, no Starlette."""
