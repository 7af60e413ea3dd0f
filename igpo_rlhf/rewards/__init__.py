"""QA rewards: answer extraction, format checks, EM / F1 / cover-EM over gold aliases."""
