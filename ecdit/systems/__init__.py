"""The systems around the model, built on the JAX twin: `shapes` (the captioned-shapes data set),
`text` (its tokenizer), `geneval` (the scorer), `optim` (optimiser and training state), `train`
(the training step, data pipeline and resumable loop), `checkpoint` (atomic, checked files) and
`sampling` (the loop from prompts to images)."""
