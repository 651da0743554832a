"""Torch -> ONNX export of STLight checkpoints, validated against torch."""
