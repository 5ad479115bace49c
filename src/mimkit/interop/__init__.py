"""Weights in and out: timm-layout encoder export, HuggingFace ViTMAE and official MAE `.pth` import."""
