"""citer-export: train the token router, export it to ONNX, check parity, calibrate it, write its card.

Sits on top of the edge client (it reads the SLM's features the same way the
decode loop does) and needs the ``train`` extra (PyTorch, onnx).
"""
