"""The streaming tracker outside PyTorch: its steps exported to ONNX, and a runner that drives them.

`onnx_export` (PyTorch) writes the four steps of a model and a manifest into a folder; `onnx_tracker`
(numpy and onnxruntime only, no PyTorch) tracks a stream with them. Nothing is imported here, so that
importing the runner does not import PyTorch.
"""
