"""The ML engine: sliding-window inference, model plugins (TorchScript, MONAI bundles,
ONNX), post-processing, attribution and the input-quality measurements.

Array logic only: no database, no network, no queue. Depends on the contract and the
configuration types.
"""
