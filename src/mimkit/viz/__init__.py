"""Figures people would rather look at than read: loss curves and reconstructions."""
