"""Stage 2 (optional): score channels and permute them so each group's best channels come first."""
