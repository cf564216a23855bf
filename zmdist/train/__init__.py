"""Student training: data (labelled subset + pseudolabelled stream), algorithms, the engine, checkpoints."""
