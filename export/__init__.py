"""Checkpoint -> ONNX export directory (``onnx_export``), its torch-free reader (``reader``) and the BentoML store
(``store``)."""
