"""Wire formats: npy and JSON arrays, images and video, content negotiation, and the Open
Inference Protocol's message format. Imports ``service.core``; no HTTP framework, no ONNX Runtime."""
