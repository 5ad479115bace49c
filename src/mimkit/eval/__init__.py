"""Evaluation: weight sources, fine-tuning accuracy, frozen features, linear probe and kNN."""
