"""Model checkpoints as files: loading a local Hugging Face directory the one way every role does."""
