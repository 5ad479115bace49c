"""Encoders (timm ViTs and small presets), position embeddings and MIM heads."""
