"""Stage 3: apply a plan to the model in place (narrow parameters served through the
attributes forward code reads, private BatchNorms, output padding). Never traces."""
