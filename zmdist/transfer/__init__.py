"""``zmdist transfer``'s non-pure parts: streaming statistics over embedding shards, class text
embeddings from the teacher, the measured-task table and its fit, and the scatter-plus-fit figure.
The formulas live in ``zmdist.methods.transfer``."""
