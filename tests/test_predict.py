"""Predicting digits from image files: MNIST-style preparation, the CLI, bad input."""

import io
import json
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from commands import predict
from commands.predict import predict_files
from mnist_dense.config import TrainParams, parse_params
from mnist_dense.errors import PipelineError
from mnist_dense.model.network import build_model, save_model
from mnist_dense.serving.digit_image import (
    DigitImageError,
    centre_of_mass,
    load_digit,
    read_grayscale,
    to_mnist,
)
from stages import preprocess, train
from tests.conftest import TINY_PARAMS, tiny_params, write_params


def draw_seven(size: int, ink: int, paper: int, canvas: tuple[int, int], at: tuple[int, int]):
    """A thick '7' of height `size` drawn at `at` on a canvas: a test digit with a shape."""
    image = Image.new("L", canvas, paper)
    x, y = at
    width = max(2, size // 8)
    draw = ImageDraw.Draw(image)
    draw.line([(x, y), (x + size * 0.6, y)], fill=ink, width=width)
    draw.line([(x + size * 0.6, y), (x + size * 0.2, y + size)], fill=ink, width=width)
    return image


def test_a_digit_becomes_mnist_shaped_whatever_its_size_place_and_polarity(tmp_path):
    big = draw_seven(300, ink=20, paper=235, canvas=(900, 700), at=(50, 300))
    small = draw_seven(40, ink=255, paper=0, canvas=(100, 60), at=(40, 8))
    fields = []
    for name, image in [("big.png", big.convert("RGB")), ("small.bmp", small)]:
        image.save(tmp_path / name)
        field = load_digit(tmp_path / name)
        assert field.shape == (28, 28) and field.dtype == np.float32
        assert field.min() >= 0 and field.max() == pytest.approx(1.0)
        rows, cols = np.flatnonzero(field.any(axis=1)), np.flatnonzero(field.any(axis=0))
        extent = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
        assert 19 <= extent <= 22  # longer side scaled to 20 (plus resampling's soft edge)
        assert centre_of_mass(field) == pytest.approx((14, 14), abs=0.5)  # as in MNIST
        fields.append(field)
    # dark on light at 300 px and light on dark at 40 px give nearly the same digit
    assert np.abs(fields[0] - fields[1]).mean() < 0.06


def test_transparent_background_ink_is_what_is_opaque(tmp_path):
    seven = draw_seven(100, ink=255, paper=0, canvas=(200, 200), at=(50, 50))
    for colour in [(0, 0, 0), (255, 255, 255)]:  # black or white ink on transparency
        rgba = Image.new("RGBA", seven.size, (*colour, 0))
        rgba.putalpha(seven)
        rgba.save(tmp_path / "seven.png")
        assert read_grayscale(tmp_path / "seven.png").max() == 1.0
        expected = to_mnist(np.asarray(seven, np.float32) / 255)
        np.testing.assert_allclose(load_digit(tmp_path / "seven.png"), expected)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("notes.png", b"these are not pixels", "not an image (PNG/JPEG/BMP/GIF expected)"),
        ("empty.png", b"", "empty file"),
        ("big.png", png_claiming(8_000, 6_000), "8000x6000 pixels is over the limit of 40,000,000"),
        ("bomb.png", png_claiming(100_000, 100_000), "over the limit of 40,000,000 pixels"),
        ("blank.png", None, "no digit found (blank image)"),
        ("cut.png", "truncated", "unreadable image"),
        ("missing.png", "absent", "no such file"),
    ],
)
def test_bad_image_files_give_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        Image.new("RGB", (64, 64), (200, 180, 40)).save(path)
    elif content == "truncated":
        draw_seven(100, 0, 255, (200, 200), (50, 50)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif content != "absent":
        path.write_bytes(content)
    with pytest.raises(DigitImageError) as error:
        load_digit(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.fixture
def untrained_model(tmp_path) -> Path:
    """A model of the right shape (its predictions are arbitrary): enough to test plumbing."""
    path = tmp_path / "model.keras"
    save_model(build_model(TrainParams(**TINY_PARAMS["train"])), path)
    return path


@pytest.fixture
def predict_cli(call_main, monkeypatch):
    """`predict_cli(*args, cwd=folder)`: `python -m commands.predict args` in `folder`, in
    this process, with no tracking store in the environment."""

    def call(*args: str, cwd: Path):
        monkeypatch.chdir(cwd)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return call_main(predict.main, *args)

    return call


def test_a_folder_with_bad_files_reports_them_and_predicts_the_rest(
    tmp_path, untrained_model, run_command
):
    folder = tmp_path / "scans"
    folder.mkdir()
    for n in range(3):
        draw_seven(60 + 20 * n, 0, 255, (200, 200), (30, 40)).save(folder / f"seven{n}.jpg")
    (folder / "readme.txt").write_text("not an image")
    Image.new("L", (50, 50), 255).save(folder / "blank.gif")
    env = {"PATH": "/usr/bin:/bin"}  # no tracking store: the --model file answers
    args = (str(folder), "--model", str(untrained_model))
    result = run_command("commands.predict", *args, cwd=tmp_path, env=env)
    assert result.returncode == 1  # the real exit code, from its own process
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors[:2] == [
        f"error: {folder / 'blank.gif'}: no digit found (blank image)",
        f"error: {folder / 'readme.txt'}: not an image (PNG/JPEG/BMP/GIF expected)",
    ]
    assert len(result.stdout.strip().splitlines()) == 3
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert list(table["file"]) == [str(p) for p in sorted(folder.iterdir())]
    assert table["digit"].notna().sum() == 3 and table["error"].notna().sum() == 2
    assert table["digit"].dropna().between(0, 9).all()
    assert (table["probability"].dropna() >= table["probability_2"].dropna()).all()


def test_the_csv_never_lands_in_the_folder_being_read(tmp_path, untrained_model, predict_cli):
    folder = tmp_path / "scans"
    folder.mkdir()
    draw_seven(60, 0, 255, (100, 100), (20, 20)).save(folder / "seven.png")
    result = predict_cli(".", "--model", str(untrained_model), cwd=folder)
    assert result.code == 1
    assert result.err.strip().splitlines()[-1] == (
        f"error: predictions.csv: lies in {folder}, a folder being read, where the next run "
        "would read it as an image; pass --csv PATH outside it"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["seven.png"]
    elsewhere = predict_cli(".", "--model", str(untrained_model), "--csv", "../out.csv", cwd=folder)
    assert elsewhere.code == 0, elsewhere.err
    assert pd.read_csv(tmp_path / "out.csv")["file"].tolist() == ["seven.png"]


def test_the_csv_never_overwrites_a_file_predict_did_not_write(
    tmp_path, untrained_model, predict_cli
):
    folder = tmp_path / "scans"
    folder.mkdir()
    draw_seven(60, 0, 255, (100, 100), (20, 20)).save(folder / "seven.png")
    (tmp_path / "predictions.csv").write_text("name,amount\nrent,900\n")
    result = predict_cli("scans", "--model", str(untrained_model), cwd=tmp_path)
    assert result.code == 1
    assert result.err.strip().splitlines()[-1] == (
        "error: predictions.csv: exists and is not a predictions table; pass another --csv"
    )
    assert (tmp_path / "predictions.csv").read_text() == "name,amount\nrent,900\n"
    (tmp_path / "predictions.csv").unlink()
    for _ in range(2):  # its own table it replaces
        again = predict_cli("scans", "--model", str(untrained_model), cwd=tmp_path)
        assert again.code == 0, again.err
    assert pd.read_csv(tmp_path / "predictions.csv")["file"].tolist() == ["scans/seven.png"]


def test_a_missing_model_is_one_clear_error(tmp_path, predict_cli):
    draw_seven(60, 0, 255, (100, 100), (20, 20)).save(tmp_path / "seven.png")
    result = predict_cli("seven.png", "--model", "nowhere.keras", cwd=tmp_path)
    assert result.code == 1
    assert result.err.strip().splitlines()[-1] == (
        "error: nowhere.keras does not exist; train it first (`make run`) or pass --model PATH"
    )


@pytest.fixture(scope="module")
def real_model(tmp_path_factory, real_mnist) -> Path:
    """A small model trained for 3 epochs on the real MNIST (about 97 % on its test set)."""
    folder = tmp_path_factory.mktemp("real")
    shutil.copytree(real_mnist, folder / "data" / "raw")
    write_params(
        folder,
        preprocess={"val_fraction": 0.1},
        train={"hidden_units": [256], "batch_size": 128, "learning_rate": 0.002, "epochs": 3},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        preprocess.main()
        train.main()
    return folder


def test_real_use_images_are_read_correctly(real_model, monkeypatch):
    """The real-use check (commands/real_use.py) in small: 50 redrawn test digits per style;
    those as written read as well as before the other styles existed."""
    from commands.real_use import build

    monkeypatch.chdir(real_model)
    files, labels, styles = build(350, real_model / "real-use", seed=1)
    assert {f.suffix for f in files} == {".png", ".jpg", ".bmp", ".gif"}
    assert {paper for _, paper in styles} == {"dark on light", "light on dark", "gray"}
    writing = [style for style, _ in styles]
    assert writing.count("as written") == writing.count("crossed 7") == 50
    assert set(labels[np.array(writing) == "crossed 7"]) == {7}
    results = predict_files(real_model / "models" / "model.keras", files)
    predicted = np.array([r.digit for r in results])
    as_written = np.array(writing) == "as written"
    assert (predicted == labels)[as_written].mean() >= 0.9


def test_real_use_validation_digits_are_the_raw_ones_whatever_preprocess_did(workdir):
    from commands.real_use import digits_from

    deskewed = parse_params(tiny_params(preprocess={"deskew": True})).preprocess
    arrays = preprocess.preprocess(deskewed)
    images, labels = digits_from("validation")
    raw, raw_labels = preprocess.load_images_and_labels(workdir / "data" / "raw", "train")
    _, val_idx = preprocess.split_indices(raw_labels, parse_params(tiny_params()).preprocess)
    assert images.dtype == np.uint8 and np.array_equal(images, raw[val_idx])
    assert np.array_equal(labels, arrays["y_val"])
    assert not np.array_equal(preprocess.scale(images), arrays["x_val"])  # those are deskewed


def test_real_use_never_deletes_a_folder_it_did_not_make(real_model, monkeypatch):
    from commands.real_use import build

    monkeypatch.chdir(real_model)
    mine = real_model / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(PipelineError, match=r"--out .*notes: exists and was not made by real_use"):
        build(5, mine)
    assert (mine / "thesis.tex").read_text() == "years of work"
    with pytest.raises(PipelineError, match="exists and was not made by real_use"):
        build(5, Path("."))
    assert (real_model / "params.yaml").is_file()
    made = real_model / "made"
    build(5, made)
    again, _, _ = build(3, made)  # a folder it made itself is replaced as a whole
    assert sorted(p.name for p in made.iterdir()) == sorted([".real-use", *(f.name for f in again)])


def test_the_cli_reads_a_digit_from_a_png(real_model, predict_cli):
    images, labels = preprocess.load_images_and_labels(real_model / "data" / "raw", "t10k")
    photo = Image.fromarray(255 - images[0]).resize((280, 280)).convert("RGB")
    photo.save(real_model / "digit.png")
    result = predict_cli("--json", "digit.png", cwd=real_model)
    assert result.code == 0, result.err
    (prediction,) = json.loads(result.out)
    assert prediction["digit"] == labels[0] and prediction["error"] is None
    assert prediction["top3"][0]["digit"] == labels[0]
    assert 0.5 < prediction["probability"] <= 1.0
    text = predict_cli("digit.png", cwd=real_model)
    assert text.out.startswith(f"digit.png: {labels[0]} (")


def _truncated(model: Path) -> bytes:
    return model.read_bytes()[: model.stat().st_size // 2]


def _zip_of(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("model.keras", lambda model: b"", "File is not a zip file"),
        ("model.keras", lambda model: b"not a model at all", "File is not a zip file"),
        ("model.keras", _truncated, ""),
        ("empty.npy", lambda model: b"", "File is not a zip file"),
        ("array.npy", lambda model: _npy_bytes(np.zeros((0, 784))), "File is not a zip file"),
        ("other.zip", lambda model: _zip_of({"notes.txt": "hi"}), "no item named 'metadata.json'"),
        ("empty.keras", lambda model: _zip_of({"metadata.json": "{}"}), ""),  # Keras refuses it
    ],
    ids=["empty", "junk", "truncated", "empty-npy", "npy", "other-zip", "zip-without-model"],
)
def test_a_corrupt_or_foreign_model_file_is_one_line_and_writes_nothing(
    tmp_path, untrained_model, predict_cli, name, content, why
):
    """Not a traceback: the file named, what it is not, exit 1, and no predictions table."""
    model = tmp_path / name
    model.write_bytes(content(untrained_model))
    folder = tmp_path / "scans"
    folder.mkdir()
    draw_seven(60, 0, 255, (100, 100), (20, 20)).save(folder / "seven.png")
    result = predict_cli("scans", "--model", str(model), cwd=tmp_path)
    assert result.code == 1
    (line,) = result.errors()
    assert line.startswith(f"error: {model}: not a readable .keras model (") and why in line
    assert line.endswith("); train it again (`make run`) or pass another --model")
    assert "Traceback" not in result.err
    assert not (tmp_path / "predictions.csv").exists()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("empty.npy", b"", "empty file"),
        ("array.npy", _npy_bytes(np.zeros((0, 784))), "not an image (PNG/JPEG/BMP/GIF expected)"),
    ],
)
def test_an_npy_given_as_an_image_is_one_line(
    tmp_path, untrained_model, predict_cli, name, content, why
):
    (tmp_path / name).write_bytes(content)
    result = predict_cli(name, "--model", str(untrained_model), cwd=tmp_path)
    assert result.code == 1
    assert result.errors() == [f"error: {name}: {why}"]
    assert "Traceback" not in result.err


def test_a_store_that_has_no_such_model_is_named_without_its_password(
    tmp_path, predict_cli, monkeypatch
):
    """The team stack's store URI carries a password: the error shows it masked."""
    from mnist_dense.serving import served_model
    from mnist_dense.tracking import store

    def unknown(source: str, folder: Path) -> Path:
        raise LookupError("Registered model alias champion not found.")

    monkeypatch.setattr(store, "connect", lambda: "http://alice:s3cret@127.0.0.1:5002")
    monkeypatch.setattr(served_model, "keras_file", unknown)
    draw_seven(60, 0, 255, (100, 100), (20, 20)).save(tmp_path / "seven.png")
    result = predict_cli("seven.png", "--model", "models:/mnist-dense@champion", cwd=tmp_path)
    assert result.code == 1
    assert "s3cret" not in result.err
    assert result.errors() == [
        "error: models:/mnist-dense@champion: not a model in http://alice:***@127.0.0.1:5002 "
        "(Registered model alias champion not found.)"
    ]
