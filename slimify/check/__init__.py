"""The self-check: every switch of a plan runs once on a *skeleton* of the model, rewritten with
the plan, before ``convert`` hands the model out; a switch that fails fixes the group that causes
it. It runs within stage 1 (``analyze_model`` calls the check ``convert`` and ``reorder`` pass in),
but it rewrites a copy (so it imports ``rewrite/``) and reads the trace's records (so it cannot be
part of ``rewrite/``, which never traces): in the import order it sits between rewrite and ordering."""
