"""The embedding stage: preprocessing, the timm encoder and its weights, per-layer embeddings (no Ray)."""
