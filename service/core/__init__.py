"""Torch-free contracts every layer shares, and the only part of ``service`` that ``model`` and
``export`` import: clip shape and model card, typed errors, limits, hashing, frames, scores, the
rollout plan, video decode/encode, ONNX Runtime options. Imports nothing of ``service`` outside
``core``, and neither FastAPI, Starlette nor an ONNX Runtime session at import."""
