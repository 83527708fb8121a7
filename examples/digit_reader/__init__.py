"""A pipeline example: find the digit on a canvas, crop it, classify it."""
