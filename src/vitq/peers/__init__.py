"""Other tools' post-training quantization, run on the same models and images as vitq for comparison."""
