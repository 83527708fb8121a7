"""`make bench`: this server against raw TensorFlow on the same machine, in one run."""

from harness.tools import use_tools

# The pipeline's canvases (scikit-learn's digits) and the plot (matplotlib),
# for this process only: not its clusters' workers.
use_tools()
