"""What runs in a model replica (the ModelDeployment): versions loaded from
storage, TensorFlow calls batched across callers, pipeline steps."""
