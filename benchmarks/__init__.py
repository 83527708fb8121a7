"""`make bench`: this server against raw TensorFlow on the same machine, in one run."""
