"""ray-tf-serve: TensorFlow SavedModels on Ray Serve.

``serve run configs/config.yaml`` imports :func:`deployments.app.build_app`.
"""
