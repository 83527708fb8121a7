"""What runs in the ingress (the Preprocessor deployment): the protocols, the
data plane between them and the models, and the clients that reach the model
replicas."""
