"""The belief scorer: every turn's gold-answer log-probs and the old log-probs in one pass."""
