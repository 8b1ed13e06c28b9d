"""The model layer: loading checkpoints, tokenizers, pooling and the encoder engine."""
