"""Who produces each token: the SLM's features, the routing policies, the trained ONNX router, calibration."""
