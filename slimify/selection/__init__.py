"""Choosing what to deploy: the widest switch within a budget (``pick``), per-group widths under
a budget (``search``, its walk, moves and latency table), and the proof a configuration passes
before it is named (``add_config``). Above ``deploy/``: a search exports and measures widths.

Not named ``search/``: the public function ``slimify.search`` would be shadowed by the package
(docs/design.md, *Why these names*)."""
