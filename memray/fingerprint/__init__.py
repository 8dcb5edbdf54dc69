"""C_T-layer fingerprints: subset curves from the scoring stage, curve files, galleries, attribution, evaluation."""
