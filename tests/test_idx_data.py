"""IDX image sets (Fashion-MNIST, MNIST, any directory of the four files) through the data path and
the CLI: splits, shapes, channel replication, normalisation, and one clear error for bad files."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

import slimify
from benchmarks.fashion_data import write_idx
from slimify import SlimifyError
from slimify.cli.app import main
from slimify.store.sources import create
from slimify.train import idx_data
from slimify.train.idx_data import FASHION_MNIST, IDX_FILES, idx_images
from slimify.train.resolve import count_classes, has_validation, in_memory, resolve_data
from tests.test_bad_input import check_error_line

FASHION_INSTALLED = idx_data.is_idx_directory(idx_data.FASHION_MNIST_DIR)


def _write_set(root: Path, train: int = 60, test: int = 20, classes: int = 3, gz: bool = False,
               side: int = 28) -> Path:
    """A small IDX set: image i of a split is filled with its label's grey level, so the pixels
    tell whether images and labels stayed together."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test)):
        labels = torch.arange(n) % classes
        images = (labels * 80 + 10).to(torch.uint8)[:, None, None].expand(n, side, side).contiguous()
        for name, values in zip(IDX_FILES[split], (images, labels)):
            path = write_idx(root / name, values)
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(path.read_bytes()))
                path.unlink()
    return root


def _model(channels: int = 3, size: int = 28, classes: int = 3) -> torch.nn.Module:
    net = create("slimify:tinynet", num_classes=classes)
    if channels == 1:
        net.stem[0] = torch.nn.Conv2d(1, 32, 3, 2, 1, bias=False)
    model = slimify.convert(net, (0.5, 1.0), example_input=torch.randn(1, channels, size, size))
    slimify.state.get_state(model).record.example_shape = [1, channels, size, size]
    return model


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_splits_shapes_and_labels_stay_with_their_images(tmp_path: Path, gz: bool) -> None:
    root = _write_set(tmp_path / "idx", gz=gz)
    train, val = idx_images(str(root), "train", (3, 32, 32)), idx_images(str(root), "val", (3, 32, 32))
    test = idx_images(str(root), "test", (1, 28, 28))
    assert (len(train), len(val), len(test)) == (48, 12, 20)  # a fifth of 60 held out; the published test set
    assert torch.bincount(val.labels).tolist() == [4, 4, 4]  # stratified
    image, label = train[0]
    assert image.shape == (3, 32, 32) and torch.equal(image[0], image[2])  # grey replicated to 3 channels
    assert test[0][0].shape == (1, 28, 28) and not test.augment and train.augment
    # the grey level encodes the label: after normalisation, one value per label, ordered like the labels
    levels = [float(test.images[test.labels == c].mean()) for c in range(3)]
    assert levels == sorted(levels) and len(set(round(v, 3) for v in levels)) == 3
    assert abs(float(torch.cat([train.images, val.images]).mean())) < 1e-4  # normalised by training pixels
    torch.manual_seed(0)
    shifted = [train[0][0] for _ in range(8)]
    assert any(not torch.equal(shifted[0], s) for s in shifted[1:])  # random shift/flip for training
    torch.manual_seed(0)
    assert torch.equal(shifted[0], train[0][0])  # seeded: reproducible


def test_resolve_data_count_classes_and_eval_split(tmp_path: Path) -> None:
    root = str(_write_set(tmp_path / "idx"))
    model = _model(channels=1)
    assert count_classes(root) == 3 and in_memory(root) and has_validation(root)
    assert len(resolve_data(root, model, train=True)) == 48
    assert len(resolve_data(root, model, train=False)) == 12  # validation: held out from training
    test = resolve_data(root, model, train=False, split="test")
    assert len(test) == 20 and test[0][0].shape == (1, 28, 28)  # the model's recorded input


def test_folder_eval_prefers_test_then_val(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / cls / "x.png")
    model = _model()
    assert resolve_data(str(tmp_path), model, False, split="test").root == str(tmp_path / "val")
    (tmp_path / "test" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "test" / "a" / "x.png")
    assert resolve_data(str(tmp_path), model, False, split="test").root == str(tmp_path / "test")


def test_damaged_files_name_the_file(tmp_path: Path) -> None:
    root = _write_set(tmp_path / "cut")
    images = root / IDX_FILES["train"][0]
    images.write_bytes(images.read_bytes()[:1000])  # truncated
    with pytest.raises(SlimifyError, match=r"train-images-idx3-ubyte: not a valid IDX image file"):
        idx_images(str(root), "train", (1, 28, 28))
    root = _write_set(tmp_path / "mismatch")
    write_idx(root / IDX_FILES["test"][1], torch.zeros(7, dtype=torch.uint8))
    with pytest.raises(SlimifyError, match="holds 20 images but t10k-labels-idx1-ubyte 7 labels"):
        idx_images(str(root), "test", (1, 28, 28))
    root = _write_set(tmp_path / "gzcut", gz=True)
    gz = root / f"{IDX_FILES['test'][0]}.gz"
    gz.write_bytes(gz.read_bytes()[:30])
    with pytest.raises(SlimifyError, match="t10k-images-idx3-ubyte.gz: cannot be read"):
        idx_images(str(root), "test", (1, 28, 28))
    with pytest.raises(SlimifyError, match="1 or 3"):
        idx_images(str(_write_set(tmp_path / "ok")), "train", (4, 28, 28))


def test_missing_fashion_mnist_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idx_data, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(SlimifyError, match="apt-get install -y dataset-fashion-mnist"):
        idx_images(FASHION_MNIST, "train", (1, 28, 28))


@pytest.mark.skipif(not FASHION_INSTALLED, reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)")
def test_real_fashion_mnist() -> None:
    test = idx_images(FASHION_MNIST, "test", (1, 28, 28))
    assert len(test) == 10000 and test.classes[0] == "T-shirt/top" and count_classes(FASHION_MNIST) == 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10  # the published test split
    val = idx_images(FASHION_MNIST, "val", (1, 28, 28))
    assert len(val) == idx_data.VAL_SIZE and len(idx_images(FASHION_MNIST, "train", (1, 28, 28))) == 60000 - len(val)


def test_cli_eval_and_finetune_on_an_idx_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(_write_set(tmp_path / "idx"))
    slimify.save(_model(), tmp_path / "m.slim")
    (tmp_path / "r.yaml").write_text("epochs: 1\nbatch_size: 16\nworkers: 0\ncalibrate_batches: 1\neval_every: 1\n")
    with pytest.raises(SystemExit) as done:
        main(["finetune", str(tmp_path / "m.slim"), "--data", root, "--recipe", str(tmp_path / "r.yaml"),
              "-o", str(tmp_path / "run"), "--no-progress"])
    assert done.value.code in (0, None), capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["eval", str(tmp_path / "run" / "model.slim"), "--data", root])
    out = capsys.readouterr().out
    assert done.value.code in (0, None)
    assert [line.split()[-1] for line in out.strip().splitlines()[-2:]] == ["20", "20"]  # the 20 test images


@pytest.mark.parametrize("data, message", [
    ("not-a-set", "does not exist"),
    ("{empty}", "not an image folder"),
    ("{cut}", "not a valid IDX image file"),
])
def test_cli_bad_data_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: str,
                                  message: str) -> None:
    (tmp_path / "empty").mkdir()
    cut = _write_set(tmp_path / "cut")
    (cut / IDX_FILES["test"][0]).write_bytes(b"\x00\x00\x08\x03")
    slimify.save(_model(), tmp_path / "m.slim")
    before = sorted(p.name for p in tmp_path.iterdir())
    arg = data.format(empty=tmp_path / "empty", cut=cut)
    with pytest.raises(SystemExit) as done:
        main(["eval", str(tmp_path / "m.slim"), "--data", arg])
    out, err = capsys.readouterr()
    assert done.value.code == 2
    check_error_line(err, out, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
