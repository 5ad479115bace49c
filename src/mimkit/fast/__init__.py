"""The training step's speed-ups, all in one place and all behind one switch, `train.fast_path` (Method.fast_path,
default on; `Method.plain_path()` turns it off for a block of code). Each gives the loss and gradients of the plain
code it replaces, and each has an equality test against it:

- rows.py: the last block only at the tokens the loss reads (MAE's and SimMIM's masked tokens, a class-token-pooled
  ViT's class token), and the row gathers that pick those tokens;
- visible_embed.py: MAE's patch embedding at the visible patches only;
- pixel_losses.py: MAE's normalised-pixel MSE and SimMIM's L1 as one autograd Function each.

A method falls back to its plain code where a subclass replaces what a speed-up computes for it (Method.overrides).
Measurements are in docs/performance.md ("The fast path"), not here."""
