"""After conversion: a width as a plain model (in memory or a file by suffix), its cost, and the
widest width within a budget."""
