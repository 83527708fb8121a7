import os

# Every process of the test session (this driver, `serve run`, the example
# client) runs with Ray's token authentication off; see README "Ray clusters".
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
