"""torch.compile with width switching: no graph breaks, at most one graph per switch and mode, and
checkpoints that resume exactly across compiled and uncompiled runs (``aot_eager``: CPU, no compiler)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils.data import Subset

from slimify.train import digits, finetune
from slimify.train.common import at_width
from slimify.train.compile import compile_model
from slimify.train.progress import read_log
from slimify.train.testing import slim_digitsnet

pytestmark = pytest.mark.usefixtures("one_thread")

SWITCHES = (0.25, 0.5, 0.75, 1.0)


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    """Each test counts its own graphs and breaks (dynamo's caches and counters are global)."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    counters.clear()


def _breaks() -> dict[str, int]:
    return dict(counters["graph_break"])


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_every_switch_compiles_once_per_mode_without_graph_breaks() -> None:
    torch.manual_seed(0)
    model = slim_digitsnet(SWITCHES)
    compiled = compile_model(model, "aot_eager", len(SWITCHES))
    x = torch.randn(8, 3, 32, 32)
    for mode in ("train", "no_grad"):
        model.train(mode == "train")
        counted = []
        for _ in range(2):  # the second round must reuse the first round's graphs
            for w in sorted(SWITCHES, reverse=True):
                with at_width(model, w), torch.set_grad_enabled(mode == "train"):
                    out = compiled(x)
                    if mode == "train":
                        out.sum().backward()
                    else:  # the same numbers as the uncompiled model at this switch
                        assert torch.allclose(out, model(x), atol=1e-6), w
            counted.append(_graphs())
        assert _breaks() == {}, mode  # the cached narrow weights of no_grad used to break every layer
        assert counted[0] == counted[1] <= len(SWITCHES), (mode, counted)  # no recompile storm
        counters.clear()


def test_compiled_finetune_has_no_graph_breaks() -> None:
    finetune(slim_digitsnet((0.5, 1.0)), Subset(digits("train"), range(96)), "demo", epochs=1, batch_size=32,
             compile="aot_eager", calibrate_batches=0, progress=False, baseline=False)
    assert _breaks() == {}
    assert 0 < _graphs() <= 2  # one training graph per switch (evaluation runs the uncompiled model)


def _run(out, compile_: bool | str = False, **kwargs):
    torch.manual_seed(123)
    model = slim_digitsnet(SWITCHES)
    finetune(model, Subset(digits("train"), range(160)), "demo", out_dir=out, epochs=2, batch_size=32,
             log_every=1, calibrate_batches=0, progress=False, baseline=False, compile=compile_, **kwargs)
    losses = {r["step"]: r["loss"] for r in read_log(out / "log.jsonl") if r["event"] == "train"}
    return model, losses


@pytest.mark.parametrize("first, then", [("aot_eager", False), (False, "aot_eager")])
def test_resume_across_compiled_and_uncompiled_runs_is_exact(tmp_path, first, then) -> None:
    reference, ref_losses = _run(tmp_path / "a")
    _run(tmp_path / "b", first, stop_after=7)  # mid-epoch 2 (5 steps per epoch)
    resumed, losses = _run(tmp_path / "b", then, resume=True)
    assert sorted(losses) == sorted(ref_losses) == list(range(1, 11))
    assert {s: losses[s] for s in range(8, 11)} == {s: ref_losses[s] for s in range(8, 11)}  # bit for bit
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_gpu_benchmark_compiled_paths_stay_compiled(monkeypatch) -> None:
    """``python -m benchmarks.gpu`` compiles a slimmable model and its exported widths one after the other:
    none of them may hit dynamo's recompile limit (it would silently measure eager code as compiled)."""
    from benchmarks import gpu

    monkeypatch.setattr(gpu, "BACKEND", "aot_eager")  # CPU: no compiler needed; the same dynamo front end
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    rows = gpu.bench_model("slimify:tinynet", 2, 1, 1, [True], "cpu", 32, (1, 2))
    assert sum("compiled" in r for r in rows) == 1 + 2 * len(gpu.SWITCHES) and _breaks() == {}  # 2 batch sizes
