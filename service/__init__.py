"""The BentoML serving side: torch-free, over ONNX exports (see ``service.service``)."""
