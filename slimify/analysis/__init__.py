"""Stage 1, read-only: trace the model, walk the graph with the rules, find channel groups and
plan each width. Never changes the model (see docs/design.md, *Layout*)."""
