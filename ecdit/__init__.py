"""EC-DiT: an expert-choice Mixture-of-Experts text-to-image diffusion transformer, reimplemented small."""
